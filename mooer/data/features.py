"""Audio frontends, vectorized in torch: Paraformer (Kaldi fbank + LFR + CMVN), Whisper log-mel, raw.

Every frontend keeps the `Frontend` contract: a 1-D float32 waveform in [-1, 1] and its sample
rate to a [frames, dim] tensor, and `batch` for several (vectorized where the frontend can be).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

FLOAT_EPS = float(np.finfo(np.float32).eps)  # Kaldi's log floor


@runtime_checkable
class Frontend(Protocol):
    """What the data pipeline and decoding rely on of a frontend (`encoder.frontend`)."""

    sample_rate: int  # the rate its waveforms must come at (the pipeline resamples to it)
    dim: int          # feature dimension

    def __call__(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """[samples] -> [frames, dim]."""
        ...

    def batch(self, waveforms: Sequence[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
        """Several waveforms' features, in one pass where the frontend can."""
        ...


class OneByOne:
    """`batch` for frontends that compute one utterance at a time."""

    def __call__(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        raise NotImplementedError

    def batch(self, waveforms: Sequence[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
        return [self(w, sample_rate) for w in waveforms]


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def kaldi_mel_banks(num_bins: int, padded_window: int, sample_rate: int, low_freq: float = 20.0,
                    high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters as a [padded_window // 2 + 1, num_bins] matrix.

    high_freq <= 0 counts down from the Nyquist frequency, as in Kaldi. The Nyquist FFT bin gets
    no weight, as in Kaldi's MelBanks.
    """
    nyquist = sample_rate / 2
    high = high_freq if high_freq > 0 else nyquist + high_freq

    def mel(freq):
        return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)

    mel_low, mel_high = mel(low_freq), mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    fft_mels = mel(np.arange(padded_window // 2) * sample_rate / padded_window)[:, None]
    left = mel_low + np.arange(num_bins) * delta
    center, right = left + delta, left + 2 * delta
    up = (fft_mels - left) / (center - left)
    down = (right - fft_mels) / (right - center)
    weights = np.clip(np.minimum(up, down), 0.0, None)
    weights = np.vstack([weights, np.zeros((1, num_bins))])  # the Nyquist bin
    return torch.from_numpy(weights.astype(np.float32))


class KaldiFbank:
    """Kaldi-compatible log mel filterbank (povey/hamming window, snip_edges, no dither)."""

    def __init__(self, num_mel_bins: int = 80, sample_rate: int = 16000,
                 frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
                 window_type: str = "hamming", preemphasis: float = 0.97,
                 low_freq: float = 20.0, high_freq: float = 0.0, dither: float = 0.0) -> None:
        self.sample_rate = sample_rate
        self.frame_length = int(sample_rate * frame_length_ms / 1000)
        self.frame_shift = int(sample_rate * frame_shift_ms / 1000)
        self.padded = _next_power_of_two(self.frame_length)
        self.preemphasis = preemphasis
        self.dither = dither
        n = torch.arange(self.frame_length, dtype=torch.float64)
        cosine = torch.cos(2 * math.pi * n / (self.frame_length - 1))
        if window_type == "hamming":
            window = 0.54 - 0.46 * cosine
        elif window_type == "hanning":
            window = 0.5 - 0.5 * cosine
        elif window_type == "povey":
            window = (0.5 - 0.5 * cosine) ** 0.85
        else:
            raise ValueError(f"unknown window_type {window_type!r}: hamming, hanning or povey")
        self.window = window.float()
        self.mel = kaldi_mel_banks(num_mel_bins, self.padded, sample_rate, low_freq, high_freq)

    def num_frames(self, num_samples: int) -> int:
        """Frames of `num_samples` samples (snip_edges: only whole frames)."""
        if num_samples < self.frame_length:
            return 0
        return 1 + (num_samples - self.frame_length) // self.frame_shift

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        """[samples] (already in the int16 range, as Kaldi expects) -> [frames, num_mel_bins]."""
        return self.batch([waveform])[0]

    def batch(self, waveforms: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Several utterances at once: their frames go through one FFT and one mel product."""
        counts = [self.num_frames(len(w)) for w in waveforms]
        framed = [w.float().unfold(0, self.frame_length, self.frame_shift)
                  for w, count in zip(waveforms, counts, strict=True) if count]
        if not framed:
            return [self.mel.new_zeros((0, self.mel.shape[1])) for _ in waveforms]
        frames = torch.cat(framed) if len(framed) > 1 else framed[0].clone()
        if self.dither > 0:
            frames += self.dither * torch.randn_like(frames)
        # DC removal, pre-emphasis and window fused: pre-emphasis of (x - mean) equals
        # pre-emphasis of x minus (1 - c) * mean, so both reuse one buffer.
        mean = frames.mean(dim=1, keepdim=True)
        c = self.preemphasis
        emphasized = torch.empty_like(frames)
        torch.add(frames[:, 1:], frames[:, :-1], alpha=-c, out=emphasized[:, 1:])
        emphasized[:, 0] = frames[:, 0] * (1 - c)
        frames = emphasized.sub_(mean * (1 - c)).mul_(self.window)
        spectrum = torch.fft.rfft(frames, n=self.padded)
        power = spectrum.real.square() + spectrum.imag.square()  # 3x faster than abs().square()
        return list(torch.matmul(power, self.mel).clamp_min_(FLOAT_EPS).log_().split(counts))


def lfr_frames(frames: int, lfr_n: int = 6) -> int:
    """LFR output frames for `frames` input frames: ceil(frames / lfr_n)."""
    return -(-frames // lfr_n)


def _lfr_index(frames: int, lfr_m: int, lfr_n: int) -> torch.Tensor:
    """[ceil(T / n), m] input-frame indices of each LFR output frame, edges clamped."""
    starts = torch.arange(lfr_frames(frames, lfr_n)) * lfr_n - (lfr_m - 1) // 2
    return (starts[:, None] + torch.arange(lfr_m)).clamp_(0, frames - 1)


def apply_lfr(features: torch.Tensor, lfr_m: int = 7, lfr_n: int = 6) -> torch.Tensor:
    """Low frame rate stacking: [T, D] -> [ceil(T / lfr_n), lfr_m * D].

    The front is padded with (lfr_m - 1) // 2 copies of the first frame and the tail with copies
    of the last frame, as FunASR does.
    """
    return features[_lfr_index(len(features), lfr_m, lfr_n)].flatten(1)


def read_kaldi_cmvn(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) vectors from a Kaldi nnet CMVN file (`am.mvn`: <AddShift>, then <Rescale>)."""
    text = Path(path).read_text()
    vectors = {}
    for component in ("AddShift", "Rescale"):
        match = re.search(rf"<{component}>[^\[]*\[([^\]]*)\]", text)
        if match is None:
            raise ValueError(f"{path} is not a Kaldi nnet CMVN file: no <{component}> component")
        vectors[component] = torch.tensor([float(v) for v in match.group(1).split()])
    if vectors["AddShift"].shape != vectors["Rescale"].shape:
        raise ValueError(f"{path}: <AddShift> and <Rescale> have different sizes")
    return vectors["AddShift"], vectors["Rescale"]


def write_kaldi_cmvn(path: str | Path, shift: torch.Tensor, scale: torch.Tensor) -> None:
    """Write (shift, scale) as a Kaldi nnet CMVN file readable by FunASR and `read_kaldi_cmvn`."""
    dim = len(shift)

    def vector(values: torch.Tensor) -> str:
        return " ".join(f"{float(v):.8g}" for v in values)

    Path(path).write_text(
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {vector(shift)} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {vector(scale)} ]\n</Nnet>\n")


def estimate_cmvn(waveforms, frontend: ParaformerFrontend | None = None, sample_rate: int = 16000
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) that make the LFR features zero-mean, unit-variance over `waveforms`:
    what an `am.mvn` holds, for models trained from scratch."""
    frontend = frontend or ParaformerFrontend(None)
    total = total_sq = torch.zeros((), dtype=torch.float64)
    count = 0
    for wave in waveforms:
        features = frontend(torch.as_tensor(wave), sample_rate).double()
        total = total + features.sum(0)
        total_sq = total_sq + features.square().sum(0)
        count += len(features)
    if count == 0:
        raise ValueError("no audio to estimate CMVN from")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-10).sqrt()
    return (-mean).float(), (1.0 / std).float()


class ParaformerFrontend:
    """MooER's Paraformer input: Kaldi fbank 80 -> LFR 7/6 -> CMVN, giving [frames, 560]."""

    def __init__(self, cmvn_path: str | Path | None, num_mel_bins: int = 80,
                 frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0, dither: float = 0.0,
                 lfr_m: int = 7, lfr_n: int = 6, sample_rate: int = 16000) -> None:
        self.fbank = KaldiFbank(num_mel_bins, sample_rate, frame_length_ms, frame_shift_ms,
                                window_type="hamming", dither=dither)
        self.sample_rate = sample_rate
        self.lfr_m, self.lfr_n = lfr_m, lfr_n
        self.dim = num_mel_bins * lfr_m
        self.shift: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        if cmvn_path is not None:
            if not Path(cmvn_path).is_file():
                raise FileNotFoundError(
                    f"CMVN file {cmvn_path} not found: point encoder.frontend.cmvn_path at the "
                    "am.mvn released with the Paraformer encoder (or null to skip CMVN)")
            self.shift, self.scale = read_kaldi_cmvn(cmvn_path)
            if len(self.shift) != self.dim:
                raise ValueError(f"{cmvn_path} has {len(self.shift)} dims, the LFR output has "
                                 f"{self.dim} ({num_mel_bins} x {lfr_m})")

    def num_frames(self, num_samples: int) -> int:
        """Output frames for `num_samples` samples, without computing them."""
        return lfr_frames(self.fbank.num_frames(num_samples), self.lfr_n)

    def __call__(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return self.batch([waveform], sample_rate)[0]

    def batch(self, waveforms: Sequence[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
        """Several utterances through one fbank, one LFR gather and one CMVN."""
        if sample_rate != self.sample_rate:
            raise ValueError(f"ParaformerFrontend expects {self.sample_rate} Hz, got {sample_rate}; "
                             "resample first (the data pipeline does)")
        fbanks = self.fbank.batch([torch.as_tensor(w) * 32768 for w in waveforms])
        index, offset = [], 0
        for fbank in fbanks:
            if len(fbank):
                index.append(_lfr_index(len(fbank), self.lfr_m, self.lfr_n) + offset)
            offset += len(fbank)
        if not index:
            return [torch.zeros((0, self.dim)) for _ in waveforms]
        stacked = torch.cat(fbanks)[torch.cat(index)].flatten(1)
        if self.shift is not None and self.scale is not None:
            stacked = (stacked + self.shift) * self.scale
        return list(stacked.split([lfr_frames(len(f), self.lfr_n) for f in fbanks]))


class WhisperFrontend(OneByOne):
    """Whisper's log-mel spectrogram (as transformers' WhisperFeatureExtractor), without padding
    to 30 s: [frames, num_mel_bins] with frames = samples // hop_length."""

    def __init__(self, num_mel_bins: int = 80, sample_rate: int = 16000, n_fft: int = 400,
                 hop_length: int = 160) -> None:
        from transformers.audio_utils import mel_filter_bank

        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.dim = num_mel_bins
        self.window = torch.hann_window(n_fft)
        self.mel = torch.from_numpy(mel_filter_bank(
            num_frequency_bins=1 + n_fft // 2, num_mel_filters=num_mel_bins, min_frequency=0.0,
            max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm="slaney",
            mel_scale="slaney")).float()

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length

    def __call__(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        if sample_rate != self.sample_rate:
            raise ValueError(f"WhisperFrontend expects {self.sample_rate} Hz, got {sample_rate}")
        # transformers pads the audio with zeros (to 30 s) before its centered STFT, so the last
        # frames see zeros, not a reflection of the audio's end
        wave = torch.nn.functional.pad(torch.as_tensor(waveform).float(), (0, self.n_fft // 2))
        stft = torch.stft(wave, self.n_fft, self.hop_length, window=self.window,
                          return_complex=True)[:, : self.num_frames(len(waveform)) + 1]
        power = stft[:, :-1].abs().square()
        log_spec = torch.matmul(self.mel.T, power).clamp_min(1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return ((log_spec + 4.0) / 4.0).T


class WaveformFrontend(OneByOne):
    """Raw waveform for HuBERT-style encoders: [samples, 1], optionally zero-mean unit-variance."""

    def __init__(self, normalize: bool = True, sample_rate: int = 16000) -> None:
        self.normalize, self.sample_rate, self.dim = normalize, sample_rate, 1

    def num_frames(self, num_samples: int) -> int:
        return num_samples

    def __call__(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        if sample_rate != self.sample_rate:
            raise ValueError(f"WaveformFrontend expects {self.sample_rate} Hz, got {sample_rate}")
        wave = torch.as_tensor(waveform).float()
        if self.normalize:
            wave = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)
        return wave[:, None]


class HFFeatureExtractorFrontend(OneByOne):
    """A transformers feature extractor from a local dir (w2v-BERT 2.0's SeamlessM4T fbank...)."""

    def __init__(self, path: str | Path | None = None, extractor=None, sample_rate: int = 16000
                 ) -> None:
        if extractor is None:
            from transformers import AutoFeatureExtractor

            if path is None or not Path(path).is_dir():
                raise FileNotFoundError(f"feature extractor dir {path} not found: point "
                                        "encoder.frontend.path at the local model directory")
            extractor = AutoFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        self.extractor, self.sample_rate = extractor, sample_rate
        self.dim = getattr(extractor, "feature_size", 1) * getattr(extractor, "stride", 1)

    def __call__(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        out = self.extractor(np.asarray(waveform, dtype=np.float32), sampling_rate=sample_rate,
                             return_tensors="pt")
        key = "input_features" if "input_features" in out else "input_values"
        features = out[key][0]
        return features if features.dim() == 2 else features[:, None]
