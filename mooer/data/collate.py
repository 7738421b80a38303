"""Collate utterances into a model batch: prompts left-padded, answers right-padded.

Row layout:  [pad ... pad][audio slots][prompt][answer + eos][pad ... pad]
             `----- left-padded to P -----------'`--- right-padded to A ---'
so every row's answer starts at column P: `input_ids[:, :P]` is the batch's generation prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mooer.data.prompts import IGNORE_INDEX


def conv_output_frames(frames: int, convs: Sequence[Sequence[int]]) -> int:
    """Frames after 1-D convolutions given as (kernel, stride, padding): how an encoder shortens
    its input (Whisper: [[3,1,1],[3,2,1]]; HuBERT on samples: (10,5,0), (3,2,0) x4, (2,2,0) x2)."""
    for kernel, stride, padding in convs:
        frames = max(0, (frames + 2 * padding - kernel) // stride + 1)
    return frames


def audio_slots(feature_frames: int, convs: Sequence[Sequence[int]], downsample: int) -> int:
    """Audio slots of an utterance: encoder frames // projector downsample."""
    return conv_output_frames(feature_frames, convs) // downsample


def collate(samples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Stack tokenized utterances (see `mooer.data.pipeline.tokenize`) into a padded batch."""
    batch_size = len(samples)
    prompt_lengths = [s["num_audio_slots"] + len(s["prompt_ids"]) for s in samples]
    answer_lengths = [len(s["answer_ids"]) for s in samples]
    prompt_width, answer_width = max(prompt_lengths), max(answer_lengths)
    width = prompt_width + answer_width
    input_ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
    labels = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
    audio_slot_mask = torch.zeros((batch_size, width), dtype=torch.bool)
    frames = [len(s["features"]) for s in samples]
    features = samples[0]["features"].new_zeros((batch_size, max(frames),
                                                 samples[0]["features"].shape[1]))
    for row, sample in enumerate(samples):
        start = prompt_width - prompt_lengths[row]
        prompt_start = start + sample["num_audio_slots"]
        answer_end = prompt_width + answer_lengths[row]
        audio_slot_mask[row, start:prompt_start] = True
        input_ids[row, prompt_start:prompt_width] = sample["prompt_ids"]
        input_ids[row, prompt_width:answer_end] = sample["answer_ids"]
        labels[row, prompt_width:answer_end] = sample["answer_ids"]
        attention_mask[row, start:answer_end] = 1
        features[row, :frames[row]] = sample["features"]
    batch = {
        "keys": [s["key"] for s in samples],
        "targets": [s["target"] for s in samples],
        "tasks": [s["task"] for s in samples],
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "audio_slot_mask": audio_slot_mask,
        "num_audio_slots": torch.tensor([s["num_audio_slots"] for s in samples]),
        "prompt_width": prompt_width,
        "features": features,
        "feature_lengths": torch.tensor(frames),
        "audio_seconds": float(sum(len(s["wav"]) / s["sample_rate"] for s in samples)),
    }
    if "transcript_ids" in samples[0]:
        transcripts = [s["transcript_ids"] for s in samples]
        batch["transcript_lengths"] = torch.tensor([len(t) for t in transcripts])
        batch["transcript_ids"] = torch.nn.utils.rnn.pad_sequence(transcripts, batch_first=True)
    return batch


def move_batch(batch: dict[str, Any], device: torch.device,
               features_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """A batch's tensors on `device` (its features in `features_dtype` when given); its key and
    text lists as they are."""
    moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
             for k, v in batch.items()}
    if features_dtype is not None:
        moved["features"] = moved["features"].to(features_dtype)
    return moved
