"""Long recordings: speech found by silero-vad, cut into segments the model can decode, joined.

A recording longer than `max_segment_s` is split where silero-vad finds speech (its model ships in
the `silero-vad` wheel; nothing is downloaded). A stretch of speech still longer than
`max_segment_s` is cut at its quietest 20 ms, no earlier than half the limit, until every piece
fits. Each segment keeps its start and end in the recording, so the joined transcript comes with
times (TSV, JSON, SRT, WebVTT).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from mooer.data.audio import AudioError, read_audio, resample, to_mono, wav_bytes
from mooer.data.text import one_line

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
QUIET_WINDOW = 320  # 20 ms at 16 kHz: where a too-long stretch is cut
FORMATS = ("tsv", "text", "json", "srt", "vtt")
MIN_SILENCE_MS = 150  # a pause this long ends a segment


@dataclass
class Segment:
    """A piece of a recording, in seconds from its start, and what was decoded of it (one text
    per task: asr, ast)."""

    start: float
    end: float
    texts: list[str] = field(default_factory=list)


@functools.cache
def _vad_model():
    from silero_vad import load_silero_vad

    return load_silero_vad()  # the TorchScript model inside the wheel


def speech_spans(wave: np.ndarray, min_silence_ms: int = MIN_SILENCE_MS, speech_pad_ms: int = 30
                 ) -> list[tuple[int, int]]:
    """[start, end) sample spans of speech in a 16 kHz mono recording (silero-vad)."""
    import torch
    from silero_vad import get_speech_timestamps

    with torch.inference_mode():
        stamps = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(wave, np.float32)),
                                       _vad_model(), sampling_rate=SAMPLE_RATE,
                                       min_silence_duration_ms=min_silence_ms,
                                       speech_pad_ms=speech_pad_ms)
    return [(int(s["start"]), int(s["end"])) for s in stamps]


def split_at_quiet(wave: np.ndarray, start: int, end: int, max_samples: int
                   ) -> list[tuple[int, int]]:
    """[start, end) as pieces of at most `max_samples`, each cut at the quietest 20 ms window
    between half the limit and the limit after the piece's start."""
    pieces = []
    while end - start > max_samples:
        low, high = start + max_samples // 2, start + max_samples
        windows = (high - low) // QUIET_WINDOW
        energy = np.square(wave[low:low + windows * QUIET_WINDOW].astype(np.float64)).reshape(
            windows, QUIET_WINDOW).sum(1)
        cut = low + int(np.argmin(energy)) * QUIET_WINDOW + QUIET_WINDOW // 2
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def segment(wave: np.ndarray, max_segment_s: float = 30.0, min_silence_ms: int = MIN_SILENCE_MS
            ) -> list[tuple[int, int]]:
    """Sample spans to decode: the whole recording when it fits in `max_segment_s`, else its
    speech (silero-vad), each span cut at quiet points to fit. A recording with no speech found
    gives no span."""
    if max_segment_s < 1:
        raise ValueError(f"max_segment_s must be at least 1 second, got {max_segment_s}")
    max_samples = int(max_segment_s * SAMPLE_RATE)
    if len(wave) <= max_samples:
        return [(0, len(wave))]
    spans = []
    for start, end in speech_spans(wave, min_silence_ms):
        spans += split_at_quiet(wave, start, end, max_samples)
    return spans


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


def decode_prepared(prepared: Prepared, model, frontend, prompt, tasks: Sequence[str],
                    batch_size: int, decoding: dict, device, dtype, progress: bool = True
                    ) -> tuple[dict[str, list[Segment]], list]:
    """Decode every segment of `prepared` for each task (batched, a progress bar each unless not
    `progress`) and gather them per recording; also returns each task's `Decoded` (timing)."""
    from mooer.evaluation.decode import decode, decoding_loader

    runs = []
    for task in tasks:
        loader = decoding_loader(prepared.directory, model, frontend, prompt, task, batch_size)
        runs.append(decode(model, loader, decoding, device, dtype, total=len(prepared.spans),
                           desc=task, progress=progress))
    return collect(prepared, [run.hypotheses for run in runs]), runs


def has_long_recordings(wav_scp: Path, max_segment_s: float) -> bool:
    """Whether a Kaldi wav.scp lists audio over `max_segment_s` (reads headers only)."""
    from mooer.data.text import read_table

    for _, path in read_table(wav_scp):
        try:
            if sf.info(path).duration > max_segment_s:
                return True
        except RuntimeError:  # unreadable: the decoding pipeline skips and counts it
            continue
    return False


def join_texts(texts: Sequence[str]) -> str:
    """Segment texts as one: a space between two Latin words, none between CJK characters."""
    joined = ""
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if joined and (joined[-1].isascii() and joined[-1].isalnum() or joined[-1] in ".,?!;:")\
                and text[0].isascii():
            joined += " "
        joined += text
    return joined


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def render(recordings: dict[str, list[Segment]], fmt: str, tasks: Sequence[str]) -> str:
    """Every recording's transcript in `fmt`: `tsv` (a segment a row: recording, start, end, one
    text per task), `text` (Kaldi text: a recording a line, its segments joined) or `json`."""
    if fmt == "text":
        return "".join("\t".join([name, *joined(segments, len(tasks))]) + "\n"
                       for name, segments in recordings.items())
    if fmt == "tsv":
        rows = ["\t".join(["recording", "start", "end", *tasks])]
        rows += ["\t".join([name, f"{s.start:.2f}", f"{s.end:.2f}", *s.texts])
                 for name, segments in recordings.items() for s in segments]
        return "\n".join(rows) + "\n"
    if fmt == "json":
        return json.dumps({name: {**dict(zip(tasks, joined(segments, len(tasks)), strict=True)),
                                  "segments": [asdict(s) for s in segments]}
                           for name, segments in recordings.items()},
                          ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


def joined(segments: Sequence[Segment], num_tasks: int) -> list[str]:
    """A recording's text per task, its segments joined in time order."""
    return [join_texts([s.texts[i] for s in segments]) for i in range(num_tasks)]


def subtitles(segments: Sequence[Segment], fmt: str) -> str:
    """One recording as SubRip (`srt`) or WebVTT (`vtt`) cues, a segment a cue (its texts, one
    line per task)."""
    separator = "," if fmt == "srt" else "."
    lines = ["WEBVTT", ""] if fmt == "vtt" else []
    for index, s in enumerate(segments, 1):
        if fmt == "srt":
            lines.append(str(index))
        lines.append(f"{_clock(s.start, separator)} --> {_clock(s.end, separator)}")
        lines += [t for t in s.texts if t] or [""]
        lines.append("")
    return "\n".join(lines)
