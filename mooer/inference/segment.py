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
# audio kept around each stretch of speech: on the 60-minute benchmark (benchmarks/longform.py,
# recording seed 0) the joined CER was 1.55 / 1.47 / 1.73 / 1.70 / 2.36 % with 5 / 10 / 15 / 20 /
# 30 ms (1.26 % one by one): the models hear single utterances, and more silence around a
# segment costs words
SPEECH_PAD_MS = 10
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
    for start, end in speech_spans(wave, min_silence_ms):
        spans += split_at_quiet(wave, start, end, max_samples)
    return spans
