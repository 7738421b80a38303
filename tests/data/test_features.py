"""Frontends: Kaldi fbank parity with kaldi-native-fbank, LFR, CMVN, Whisper log-mel parity."""

from __future__ import annotations

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile as sf
import torch

from mooer.data.features import (
    KaldiFbank,
    ParaformerFrontend,
    WaveformFrontend,
    WhisperFrontend,
    apply_lfr,
    read_kaldi_cmvn,
    write_kaldi_cmvn,
)
from mooer.data.text import read_table


def knf_fbank(wave: np.ndarray, window: str = "hamming") -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = window
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = 80
    opts.energy_floor = 0.0
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, (wave * 32768).tolist())
    fbank.input_finished()
    return np.array([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


@pytest.fixture(scope="module")
def waves(corpus):
    return [sf.read(path, dtype="float32")[0] for _, path in read_table(corpus / "wav.scp")[:6]]


@pytest.mark.parametrize("window", ["hamming", "povey"])
def test_fbank_matches_kaldi_native_fbank(waves, window):
    fbank = KaldiFbank(window_type=window)
    for wave in waves:
        reference = knf_fbank(wave, window)
        ours = fbank(torch.from_numpy(wave) * 32768).numpy()
        assert ours.shape == reference.shape
        # float32 FFT rounding shows in the log of near-silent high bins only
        np.testing.assert_allclose(ours, reference, atol=5e-3, rtol=0)
        assert np.abs(ours - reference).mean() < 1e-4


def test_fbank_of_a_tone_peaks_at_its_mel_bin():
    t = np.arange(16000) / 16000
    tone = torch.from_numpy((0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    features = KaldiFbank()(tone * 32768)
    assert features.shape == (98, 80)  # 1 + (16000 - 400) // 160
    reference = knf_fbank(tone.numpy())
    assert features.mean(0).argmax() == reference.mean(0).argmax()


def lfr_reference(features: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """FunASR's LFR, frame by frame."""
    total = features.shape[0]
    out = []
    padded = torch.vstack([features[0].repeat((m - 1) // 2, 1), features])
    total += (m - 1) // 2
    for i in range(-(-features.shape[0] // n)):
        if m <= total - i * n:
            out.append(padded[i * n:i * n + m].reshape(-1))
        else:
            frame = padded[i * n:].reshape(-1)
            for _ in range(m - (total - i * n)):
                frame = torch.hstack([frame, padded[-1]])
            out.append(frame)
    return torch.vstack(out)


@pytest.mark.parametrize("frames", [1, 2, 5, 6, 7, 12, 13, 100, 101])
@pytest.mark.parametrize(("m", "n"), [(7, 6), (5, 3), (1, 1)])
def test_lfr_matches_per_frame_reference(frames, m, n):
    features = torch.randn(frames, 4)
    ours = apply_lfr(features, m, n)
    assert ours.shape == (-(-frames // n), m * 4)
    torch.testing.assert_close(ours, lfr_reference(features, m, n), rtol=0, atol=0)


def test_cmvn_round_trip_and_application(tmp_path, waves):
    shift, scale = torch.randn(560), torch.rand(560) + 0.5
    path = tmp_path / "am.mvn"
    write_kaldi_cmvn(path, shift, scale)
    read_shift, read_scale = read_kaldi_cmvn(path)
    torch.testing.assert_close(read_shift, shift, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(read_scale, scale, rtol=1e-6, atol=1e-6)
    plain, normalized = ParaformerFrontend(None), ParaformerFrontend(path)
    wave = torch.from_numpy(waves[0])
    expected = (plain(wave, 16000) + read_shift) * read_scale
    torch.testing.assert_close(normalized(wave, 16000), expected)


def test_cmvn_errors(tmp_path):
    bad = tmp_path / "bad.mvn"
    bad.write_text("<Nnet>\n</Nnet>\n")
    with pytest.raises(ValueError, match="no <AddShift>"):
        read_kaldi_cmvn(bad)
    with pytest.raises(FileNotFoundError, match="am.mvn"):
        ParaformerFrontend(tmp_path / "missing.mvn")
    small = tmp_path / "small.mvn"
    write_kaldi_cmvn(small, torch.zeros(80), torch.ones(80))
    with pytest.raises(ValueError, match="80 dims"):
        ParaformerFrontend(small)


def test_paraformer_frontend_shape_count_and_batch(waves):
    frontend = ParaformerFrontend(None)
    singles = [frontend(torch.from_numpy(w), 16000) for w in waves]
    batched = frontend.batch([torch.from_numpy(w) for w in waves], 16000)
    for wave, single, together in zip(waves, singles, batched, strict=True):
        fbank_frames = 1 + (len(wave) - 400) // 160
        assert single.shape == (-(-fbank_frames // 6), 560)
        assert frontend.num_frames(len(wave)) == len(single)
        torch.testing.assert_close(together, single)
        reference = lfr_reference(torch.from_numpy(knf_fbank(wave)).float(), 7, 6)
        torch.testing.assert_close(single, reference, atol=5e-3, rtol=0)
    assert frontend(torch.zeros(100), 16000).shape == (0, 560)  # shorter than one frame
    with pytest.raises(ValueError, match="expects 16000 Hz"):
        frontend(torch.zeros(16000), 8000)


@pytest.mark.parametrize("num_mel_bins", [80, 128])
def test_whisper_frontend_matches_transformers(waves, num_mel_bins):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    frontend = WhisperFrontend(num_mel_bins)
    for wave in waves[:3]:
        reference = extractor(wave, sampling_rate=16000, return_tensors="np")["input_features"][0]
        ours = frontend(torch.from_numpy(wave), 16000).numpy()
        assert ours.shape == (len(wave) // 160, num_mel_bins) == (frontend.num_frames(len(wave)),
                                                                    num_mel_bins)
        np.testing.assert_allclose(ours, reference[:, : len(ours)].T, atol=1e-4)


def test_waveform_frontend_normalizes():
    wave = torch.randn(16000) * 0.1 + 0.3
    out = WaveformFrontend()(wave, 16000)
    assert out.shape == (16000, 1)
    assert abs(out.mean().item()) < 1e-5 and abs(out.std().item() - 1) < 1e-3


def test_estimated_cmvn_normalizes_the_features(waves, tmp_path):
    from mooer.data.features import estimate_cmvn

    shift, scale = estimate_cmvn(waves)
    write_kaldi_cmvn(tmp_path / "am.mvn", shift, scale)
    frontend = ParaformerFrontend(tmp_path / "am.mvn")
    features = torch.cat([frontend(torch.from_numpy(w), 16000) for w in waves])
    assert features.mean(0).abs().max() < 1e-3
    assert (features.std(0) - 1).abs().max() < 1e-2
