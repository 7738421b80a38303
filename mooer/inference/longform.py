"""Long recordings as segments: each recording that fits is decoded from its own file, a longer
one is cut where silero-vad finds speech (`mooer.inference.segment`) into 16 kHz pieces, and
every segment keeps its start and end, so the joined transcript comes with times."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from mooer.data.audio import AudioError, audio_problem, read_audio, resample, to_mono, wav_bytes
from mooer.data.text import one_line, read_table
from mooer.inference.align import Word
from mooer.inference.formats import Segment
from mooer.inference.segment import MIN_SILENCE_MS, SAMPLE_RATE, check_max_segment_s, segment

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Recordings as a Kaldi dir of segments under internal uttids (`utt000001_00000`...: names
    may hold spaces), where each segment lies, and what could not be prepared."""

    directory: Path
    spans: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # uttid -> where
    sources: dict[str, str] = field(default_factory=dict)  # uttid -> its audio file
    names: list[str] = field(default_factory=list)  # recordings with segments, in input order
    too_short: list[str] = field(default_factory=list)
    no_speech: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "name (why)"

    def by_recording(self, found: dict[str, str]) -> dict[str, str]:
        """`found` (by segment uttid) keyed by what a reader knows instead: the recording's
        name and the segment's time span (`meeting 12.25-14.00s`)."""
        spans = self.spans
        return {f"{spans[k][0]} {spans[k][1]:.2f}-{spans[k][2]:.2f}s" if k in spans else k: value
                for k, value in found.items()}

    @property
    def skipped(self) -> list[str]:
        """Every recording that will not be decoded, with why."""
        return ([f"{n}: unreadable" for n in self.unreadable]
                + [f"{n}: too short" for n in self.too_short]
                + [f"{n}: no speech found" for n in self.no_speech])

    def write_list(self) -> None:
        """`directory/wav.scp` of the segments, what the decoding loader reads."""
        (self.directory / "wav.scp").write_text(
            "".join(f"{uttid} {path}\n" for uttid, path in self.sources.items()),
            encoding="utf-8")

    def chunks(self, max_segments: int) -> Iterator[Prepared]:
        """The recordings in consecutive groups of at most `max_segments` segments (a longer
        recording alone), each with a wav.scp of its own: decoded one after another, so the
        transcripts of the first recordings can be written while the rest wait."""
        by_name: dict[str, list[str]] = {name: [] for name in self.names}
        for uttid, (name, _, _) in self.spans.items():
            by_name[name].append(uttid)
        groups: list[list[str]] = [[]]
        for name in self.names:
            if groups[-1] and (sum(len(by_name[n]) for n in groups[-1]) + len(by_name[name])
                               > max_segments):
                groups.append([])
            groups[-1].append(name)
        for number, group in enumerate(g for g in groups if g):
            yield self._subset(group, self.directory / f"chunk_{number:05d}")

    def _subset(self, names: list[str], directory: Path) -> Prepared:
        directory.mkdir()
        keep = set(names)
        part = Prepared(directory, names=list(names))
        for uttid, where in self.spans.items():
            if where[0] in keep:
                part.spans[uttid], part.sources[uttid] = where, self.sources[uttid]
        part.write_list()
        return part


def prepare(recordings: Sequence[tuple[str, str]], work: Path, max_segment_s: float = 30.0,
            min_seconds: float = 0.1, min_silence_ms: int = MIN_SILENCE_MS) -> Prepared:
    """`work/wav.scp` of the segments of (name, path) `recordings`: a recording that fits in
    `max_segment_s` is decoded from its own file, a longer one is cut (`segment`) into 16 kHz
    WAVs written to `work`. A recording that cannot be read (missing, a directory, not audio,
    damaged, NaN samples), is too short or holds no speech is skipped and named, with why."""
    prepared = Prepared(work)
    max_segment_s = check_max_segment_s(max_segment_s)
    for index, (name, path) in enumerate(recordings):
        try:
            seconds = _readable_seconds(path)
        except AudioError as err:
            prepared.unreadable.append(f"{name} ({err})")
            continue
        if seconds < min_seconds:
            prepared.too_short.append(f"{name} ({seconds:.3f} s)")
            continue
        if seconds <= max_segment_s:
            uttid = f"utt{index:06d}_00000"
            prepared.sources[uttid] = path
            prepared.spans[uttid] = (name, 0.0, seconds)
            prepared.names.append(name)
            continue
        try:
            samples, rate = read_audio(path)
        except AudioError as err:
            prepared.unreadable.append(f"{name} ({err})")
            continue
        wave = resample(to_mono(samples), rate, SAMPLE_RATE)
        spans = segment(wave, max_segment_s, min_silence_ms)
        if not spans:
            prepared.no_speech.append(f"{name} ({seconds:.1f} s)")
            continue
        log.info("%s: %.0f s of audio in %d segments", name, seconds, len(spans))
        for number, (start, end) in enumerate(spans):
            uttid = f"utt{index:06d}_{number:05d}"
            piece = work / f"{uttid}.wav"
            piece.write_bytes(wav_bytes(wave[start:end], SAMPLE_RATE))
            prepared.sources[uttid] = str(piece)
            prepared.spans[uttid] = (name, start / SAMPLE_RATE, end / SAMPLE_RATE)
        prepared.names.append(name)
    prepared.write_list()
    return prepared


def _readable_seconds(path: str) -> float:
    """The duration of an audio file that can be decoded, or AudioError saying why not."""
    if Path(path).is_dir():
        raise AudioError(f"{path} is a directory, not an audio file")
    if not Path(path).is_file():
        raise AudioError(f"{path} not found")
    try:
        info = sf.info(path)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise AudioError(f"{path} is not audio that soundfile reads: "
                         f"{str(err).splitlines()[-1]}") from err
    problem = audio_problem(path, info)
    if problem:
        raise AudioError(f"{path}: {problem}")
    return float(info.duration)


def collect(prepared: Prepared, columns: Sequence[dict[str, str]],
            flags: Sequence[dict[str, str]] = (), words: dict[str, list[Word]] | None = None
            ) -> dict[str, list[Segment]]:
    """Each recording's decoded segments in time order (one text per task column, what the
    hallucination guard still flags in each, and the transcript's word times, made absolute);
    recordings none of whose segments was decoded are left out."""
    recordings: dict[str, list[Segment]] = {name: [] for name in prepared.names}
    for uttid, (name, start, end) in prepared.spans.items():
        if uttid in columns[0]:
            texts = [one_line(column.get(uttid, "")) for column in columns]
            marks = [flagged.get(uttid, "") for flagged in flags]
            timed = [w.shifted(start) for w in (words or {}).get(uttid, [])]
            recordings[name].append(Segment(round(start, 3), round(end, 3), texts,
                                            marks if any(marks) else [], timed))
    return {name: segments for name, segments in recordings.items() if segments}


def has_long_recordings(wav_scp: Path, max_segment_s: float) -> bool:
    """Whether a Kaldi wav.scp lists audio over `max_segment_s` (reads headers only)."""
    for _, path in read_table(wav_scp):
        try:
            if sf.info(path).duration > max_segment_s:
                return True
        except RuntimeError:  # unreadable: the decoding pipeline skips and counts it
            continue
    return False
