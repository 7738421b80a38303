"""Cutting a long recording into pieces the model can decode: speech found by silero-vad (its
model ships in the `silero-vad` wheel; nothing is downloaded), and a stretch of speech still
longer than the limit cut at its quietest 20 ms, no earlier than half the limit."""

from __future__ import annotations

import functools
import logging
import math
import threading

import numpy as np
import torch

SAMPLE_RATE = 16000
QUIET_WINDOW = 320  # 20 ms at 16 kHz: where a too-long stretch is cut
MIN_SILENCE_MS = 150  # a pause this long ends a segment
# silero-vad's edges are coarse (32 ms windows): a segment began up to 80 ms after its first word
# did, and the cut onset cost that word ("three" heard as "two"). Padding every edge with silence
# cost more (the demo's models hear utterances that begin at once: on 20 minutes of the
# benchmark, recording seed 1, joined CER 1.34 % with 10 ms of pad, 1.98 % with 30, 9.49 % with
# 60 before). So no pad: each edge is moved out to where the sound itself begins and ends (5 ms
# frames above the recording's noise floor, at most EDGE_LOOK_MS beyond silero-vad's edge, never
# into the next segment): 1.07 % there (benchmarks/longform.py; docs/benchmarks.md)
SPEECH_PAD_MS = 0
EDGE_LOOK_MS = 200
EDGE_FRAME = 80  # 5 ms at 16 kHz
EDGE_ABOVE_FLOOR_DB = 6.0  # sound: a frame this far above the noise floor (its 10th percentile)
EDGE_MIN_DB = -50.0  # and at least this loud (dBFS RMS), where the floor is digital silence
MIN_SEGMENT_S = 1.0
# longer segments would not fit in memory: an encoder's attention grows with the square of the
# frames (an hour of Paraformer frames: 60,000 x 60,000 scores a head)
MAX_SEGMENT_S = 300.0

log = logging.getLogger(__name__)
_VAD_LOCK = threading.Lock()


def check_max_segment_s(value: float | str) -> float:
    """`max_segment_s` as a number of seconds a segment may last (at least 1; not NaN), or a
    ValueError saying so; over MAX_SEGMENT_S, that (with a warning: longer recordings are still
    cut, at that length). Also an argparse `type`."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds) or seconds < MIN_SEGMENT_S:
        raise ValueError(f"max_segment_s must be a number of seconds, at least "
                         f"{MIN_SEGMENT_S:g}, got {value}")
    if seconds > MAX_SEGMENT_S:
        log.warning("max_segment_s %g s would not fit in memory: segments are cut at %g s",
                    seconds, MAX_SEGMENT_S)
        return MAX_SEGMENT_S
    return seconds


@functools.cache
def _vad_model():
    from silero_vad import load_silero_vad

    return load_silero_vad()  # the TorchScript model inside the wheel


def speech_spans(wave: np.ndarray, min_silence_ms: int = MIN_SILENCE_MS,
                 speech_pad_ms: int = SPEECH_PAD_MS) -> list[tuple[int, int]]:
    """[start, end) sample spans of speech in a 16 kHz mono recording (silero-vad)."""
    from silero_vad import get_speech_timestamps

    with _VAD_LOCK, torch.inference_mode():  # its model keeps state: one caller at a time
        stamps = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(wave, np.float32)),
                                       _vad_model(), sampling_rate=SAMPLE_RATE,
                                       min_silence_duration_ms=min_silence_ms,
                                       speech_pad_ms=speech_pad_ms)
    return [(int(s["start"]), int(s["end"])) for s in stamps]


def sound_edges(wave: np.ndarray, spans: list[tuple[int, int]], look_ms: int = EDGE_LOOK_MS
                ) -> list[tuple[int, int]]:
    """`spans` with each start moved back, and each end forward, over the 5 ms frames next to
    it that still hold sound (louder than EDGE_ABOVE_FLOOR_DB over the recording's noise floor
    and than EDGE_MIN_DB), at most `look_ms`, never past a neighbouring span."""
    frames = len(wave) // EDGE_FRAME
    if not frames or not spans:
        return spans
    rms = np.empty(frames)
    block = 12000  # frames (a minute) at a time: an hour's squares at once would be 0.5 GB
    for at in range(0, frames, block):
        piece = wave[at * EDGE_FRAME:min(at + block, frames) * EDGE_FRAME].astype(np.float64)
        rms[at:at + block] = np.sqrt(np.square(piece).reshape(-1, EDGE_FRAME).mean(1))
    floor = float(np.percentile(rms, 10))
    sound = rms > max(floor * 10 ** (EDGE_ABOVE_FLOOR_DB / 20), 10 ** (EDGE_MIN_DB / 20))
    look = look_ms * SAMPLE_RATE // 1000
    moved: list[tuple[int, int]] = []
    for i, (start, end) in enumerate(spans):
        low = max(moved[-1][1] if moved else 0, start - look)
        first = frame = start // EDGE_FRAME
        while frame > 0 and (frame - 1) * EDGE_FRAME >= low and sound[frame - 1]:
            frame -= 1
        high = min(spans[i + 1][0] if i + 1 < len(spans) else len(wave), end + look)
        last = after = -(-end // EDGE_FRAME)
        while after < frames and (after + 1) * EDGE_FRAME <= high and sound[after]:
            after += 1
        moved.append((frame * EDGE_FRAME if frame < first else start,
                      after * EDGE_FRAME if after > last else end))
    return moved


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
    max_samples = int(check_max_segment_s(max_segment_s) * SAMPLE_RATE)
    if len(wave) <= max_samples:
        return [(0, len(wave))]
    spans = []
    for start, end in sound_edges(wave, speech_spans(wave, min_silence_ms)):
        spans += split_at_quiet(wave, start, end, max_samples)
    return spans
