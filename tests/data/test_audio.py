"""Audio helpers: WAV header validation, decoding, mixdown, resampling, encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from mooer.data.audio import AudioError, parse_pcm_wav, read_audio, resample, to_mono, wav_bytes


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_wav_bytes_round_trip():
    tone = _tone(0.5, 16000)
    data = wav_bytes(tone, 16000)
    info = parse_pcm_wav(data)
    assert (info.sample_rate, info.channels, info.bits_per_sample, info.num_frames) == (
        16000, 1, 16, 8000)
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 16000
    np.testing.assert_allclose(decoded, tone, atol=1 / 32768)


def test_parse_pcm_wav_rejects_truncation_and_passes_other_formats():
    data = wav_bytes(_tone(0.1, 16000), 16000)
    with pytest.raises(AudioError, match="truncated"):
        parse_pcm_wav(data[:-100])
    assert parse_pcm_wav(b"fLaC" + b"\0" * 40) is None
    float_wav = io.BytesIO()
    sf.write(float_wav, _tone(0.1, 16000), 16000, format="WAV", subtype="FLOAT")
    assert parse_pcm_wav(float_wav.getvalue()) is None  # not PCM: left to soundfile


def test_read_audio_segment_and_errors():
    data = wav_bytes(_tone(2.0, 16000), 16000)
    samples, rate = read_audio(data, start=0.5, end=1.25)
    assert rate == 16000 and samples.shape == (12000, 1)
    with pytest.raises(AudioError, match="unreadable"):
        read_audio(b"not audio at all" * 10)


def test_mixdown_and_resample():
    stereo = np.stack([_tone(1.0, 44100), np.zeros(44100, np.float32)], axis=1)
    mono = to_mono(stereo)
    assert mono.shape == (44100,) and np.abs(mono).max() == pytest.approx(0.25, abs=1e-3)
    down = resample(mono, 44100, 16000)
    assert down.shape == (16000,) and down.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(down))
    assert np.argmax(spectrum) == pytest.approx(440, abs=1)  # 1 Hz bins at 1 s
