"""Long recordings as segments: each recording that fits is decoded from its own file, a longer
one is cut where silero-vad finds speech (`mooer.inference.segment`) into 16 kHz pieces, and
every segment keeps its start and end, so the joined transcript comes with times."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from mooer.data.audio import AudioError, read_audio, resample, to_mono, wav_bytes
from mooer.data.text import one_line, read_table
from mooer.inference.formats import Segment
from mooer.inference.segment import MIN_SILENCE_MS, SAMPLE_RATE, segment

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Recordings as a Kaldi dir of segments under internal uttids (`utt000001_00000`...: names
    may hold spaces), where each segment lies, and what could not be prepared."""

    directory: Path
    spans: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # uttid -> where
    names: list[str] = field(default_factory=list)  # recordings with segments, in input order
    too_short: list[str] = field(default_factory=list)
    no_speech: list[str] = field(default_factory=list)


def prepare(recordings: Sequence[tuple[str, str]], work: Path, max_segment_s: float = 30.0,
            min_seconds: float = 0.1, min_silence_ms: int = MIN_SILENCE_MS) -> Prepared:
    """`work/wav.scp` of the segments of (name, path) `recordings`: a recording that fits in
    `max_segment_s` is decoded from its own file, a longer one is cut (`segment`) into 16 kHz
    WAVs written to `work`. Unreadable or missing files raise ValueError/FileNotFoundError."""
    prepared, lines = Prepared(work), []
    for index, (name, path) in enumerate(recordings):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{name}: audio file {path} not found")
        try:
            seconds = sf.info(path).duration
        except RuntimeError as err:
            raise ValueError(f"{name}: cannot read {path} ({err})") from err
        if seconds < min_seconds:
            prepared.too_short.append(f"{name} ({seconds:.3f} s)")
            continue
        if seconds <= max_segment_s:
            uttid = f"utt{index:06d}_00000"
            lines.append(f"{uttid} {path}\n")
            prepared.spans[uttid] = (name, 0.0, seconds)
            prepared.names.append(name)
            continue
        try:
            samples, rate = read_audio(path)
        except AudioError as err:
            raise ValueError(f"{name}: cannot read {path} ({err})") from err
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
            lines.append(f"{uttid} {piece}\n")
            prepared.spans[uttid] = (name, start / SAMPLE_RATE, end / SAMPLE_RATE)
        prepared.names.append(name)
    (work / "wav.scp").write_text("".join(lines), encoding="utf-8")
    return prepared


def collect(prepared: Prepared, columns: Sequence[dict[str, str]]) -> dict[str, list[Segment]]:
    """Each recording's decoded segments in time order (one text per task column); recordings
    none of whose segments was decoded are left out."""
    recordings: dict[str, list[Segment]] = {name: [] for name in prepared.names}
    for uttid, (name, start, end) in prepared.spans.items():
        if uttid in columns[0]:
            texts = [one_line(column.get(uttid, "")) for column in columns]
            recordings[name].append(Segment(round(start, 3), round(end, 3), texts))
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
