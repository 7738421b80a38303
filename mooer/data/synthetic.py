"""Synthetic tokenized utterances of given shapes (random features and token ids), as the
pipeline hands them to the collate: for benchmarks and FLOP counts at real model sizes, where no
audio or tokenizer is at hand."""

from __future__ import annotations

import torch

# Paraformer's frontend: 10 ms frames stacked 7 at a stride of 6 (LFR), 80 mel bins each
LFR_STRIDE, LFR_DIM = 6, 560


def lfr_frames(seconds: float) -> int:
    """Paraformer feature frames of `seconds` of audio."""
    return int(seconds * 100) // LFR_STRIDE + 1


def synthetic_samples(durations: list[float], answer_tokens: list[int], prompt_tokens: int,
                      downsample: int, vocab: int, feature_dim: int = LFR_DIM,
                      seed: int = 0) -> list[dict]:
    """One utterance a duration: LFR-sized random features, `downsample` frames an audio slot,
    `prompt_tokens` prompt ids and its answer's ids (ending in token vocab - 1, the eos)."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index, (seconds, answer) in enumerate(zip(durations, answer_tokens, strict=True)):
        frames = lfr_frames(seconds)
        ids = torch.randint(0, vocab - 2, (prompt_tokens + answer,), generator=generator)
        ids[-1] = vocab - 1
        samples.append({
            "key": f"synthetic{index:06d}", "target": "", "task": "asr",
            "features": torch.randn(frames, feature_dim, generator=generator),
            "num_audio_slots": frames // downsample,
            "prompt_ids": ids[:prompt_tokens], "answer_ids": ids[prompt_tokens:],
            "wav": torch.empty(int(seconds * 16000)), "sample_rate": 16000})
    return samples


class SyntheticTokenizer:
    """What SpeechLLM reads of a tokenizer, for synthetic ids: its size, eos (the last id) and
    padding (the one before), and a decode that spells the ids (in decimal, an id a word) and
    an encode that reads them back."""

    def __init__(self, vocab: int) -> None:
        self.eos_token_id, self.pad_token_id, self.vocab = vocab - 1, vocab - 2, vocab

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The ids a text of decimal ids spells (what `decode` writes): a synthetic hotword
        list's words."""
        return [int(word) for word in text.split()]

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.encode(text) for text in texts]}

    def __len__(self) -> int:
        return self.vocab
