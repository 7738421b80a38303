"""Collate utterances into a model batch: padded rows (one utterance a row) or packed rows
(several utterances a row, no padding between them).

Padded:  [pad ... pad][prefix][audio slots][prompt][answer + eos][pad ... pad]
         `----- left-padded to P -------------------'`--- right-padded to A ---'
so every row's answer starts at column P (`prompt_width`): `input_ids[:, :P]` is the batch's
generation prompt. The prefix (`prefix_ids`: a hotword list, `mooer.data.context`) is most
often empty.

Packed:  [prefix][slots][prompt][answer + eos][prefix][slots][prompt][answer + eos] ... [pad]
         `------- utterance 1 -----------------'`------- utterance 2 ---------------'
positions restart at each utterance and attention never crosses one (`segment_ids`).

Both layouts carry the same host-built indices, so the model's step reads no number back from
the device: where each audio frame goes (`audio_slot_index` <- `audio_frame_index`), which
positions are scored and against which token (`scored_index`, `scored_targets`), and to which
utterance each scored token belongs (`scored_utterance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from mooer.data.prompts import IGNORE_INDEX

Sample = dict[str, Any]
FrameCount = TypeVar("FrameCount", int, torch.Tensor)


def conv_output_frames(frames: FrameCount, convs: Sequence[Sequence[int]]) -> FrameCount:
    """Frames after 1-D convolutions given as (kernel, stride, padding): how an encoder shortens
    its input (Whisper: [[3,1,1],[3,2,1]]; HuBERT on samples: (10,5,0), (3,2,0) x4, (2,2,0) x2).
    An int on the host, or a tensor of lengths on the device (nothing read back)."""
    for kernel, stride, padding in convs:
        frames = (frames + 2 * padding - kernel) // stride + 1
        frames = frames.clamp_min(0) if isinstance(frames, torch.Tensor) else max(0, frames)
    return frames


def audio_slots(feature_frames: int, convs: Sequence[Sequence[int]], downsample: int) -> int:
    """Audio slots of an utterance: encoder frames // projector downsample."""
    return conv_output_frames(feature_frames, convs) // downsample


def round_up(value: int, multiple: int) -> int:
    """`value` rounded up to a multiple of `multiple` (the length buckets that bound how many
    shapes a compiled step sees)."""
    return -(-value // multiple) * multiple


def prompt_length(sample: Sample) -> int:
    """Tokens before an utterance's answer: prefix + audio slots + prompt."""
    return len(sample.get("prefix_ids", ())) + sample["num_audio_slots"] + len(sample["prompt_ids"])


def sequence_length(sample: Sample) -> int:
    """Tokens an utterance occupies in the LLM: prefix + audio slots + prompt + answer."""
    return prompt_length(sample) + len(sample["answer_ids"])


def collate(samples: Sequence[Sample], pad_id: int, pad_to_multiple: int = 1) -> dict[str, Any]:
    """Stack tokenized utterances (see `mooer.data.pipeline.tokenize`) into a padded batch, one
    utterance a row; token and frame widths rounded up to `pad_to_multiple`."""
    prompt_lengths = [prompt_length(s) for s in samples]
    prompt_width = max(prompt_lengths)
    width = round_up(prompt_width + max(len(s["answer_ids"]) for s in samples), pad_to_multiple)
    placements = [(row, prompt_width - length) for row, length in enumerate(prompt_lengths)]
    batch = _layout(samples, placements, len(samples), width, pad_id, pad_to_multiple)
    batch["prompt_width"] = prompt_width
    return batch


def collate_packed(rows: Sequence[Sequence[Sample]], pad_id: int, row_tokens: int | None = None,
                   pad_to_multiple: int = 1) -> dict[str, Any]:
    """Pack rows of utterances (see `mooer.data.pipeline.pack_rows`) into one batch: each row
    holds its utterances back to back, padded at the end to `row_tokens` (or to the longest
    row, rounded up to `pad_to_multiple`). For training: generation needs padded rows."""
    samples, placements, longest = [], [], 0
    for row, utterances in enumerate(rows):
        start = 0
        for sample in utterances:
            samples.append(sample)
            placements.append((row, start))
            start += sequence_length(sample)
        longest = max(longest, start)
    width = row_tokens or round_up(longest, pad_to_multiple)
    if longest > width:
        raise ValueError(f"a packed row holds {longest} tokens, over row_tokens={width}")
    batch = _layout(samples, placements, len(rows), width, pad_id, pad_to_multiple)
    batch["prompt_width"] = None
    return batch


def _layout(samples: Sequence[Sample], placements: Sequence[tuple[int, int]], num_rows: int,
            width: int, pad_id: int, pad_to_multiple: int) -> dict[str, Any]:
    """Token rows, masks, positions and indices of `samples`, utterance i starting (its prefix,
    then its audio slots) at column placements[i][1] of row placements[i][0]."""
    input_ids = torch.full((num_rows, width), pad_id, dtype=torch.long)
    labels = torch.full((num_rows, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((num_rows, width), dtype=torch.long)
    segment_ids = torch.zeros((num_rows, width), dtype=torch.long)
    position_ids = torch.zeros((num_rows, width), dtype=torch.long)
    audio_slot_mask = torch.zeros((num_rows, width), dtype=torch.bool)
    frames = [len(s["features"]) for s in samples]
    features = samples[0]["features"].new_zeros(
        (len(samples), round_up(max(frames), pad_to_multiple), samples[0]["features"].shape[1]))
    slot_rows: list[int] = []
    slot_cols: list[int] = []
    frame_utts: list[int] = []
    frame_pos: list[int] = []
    scored_rows: list[int] = []
    scored_cols: list[int] = []
    scored_targets: list[int] = []
    scored_utts: list[int] = []
    segments_in_row = [0] * num_rows
    for utterance, (sample, (row, start)) in enumerate(zip(samples, placements, strict=True)):
        slots, answer = sample["num_audio_slots"], torch.as_tensor(sample["answer_ids"])
        prefix = torch.as_tensor(sample.get("prefix_ids", ()), dtype=torch.long)
        slots_start = start + len(prefix)
        prompt_start = slots_start + slots
        answer_start = prompt_start + len(sample["prompt_ids"])
        end = answer_start + len(answer)
        segments_in_row[row] += 1
        input_ids[row, start:slots_start] = prefix
        audio_slot_mask[row, slots_start:prompt_start] = True
        input_ids[row, prompt_start:answer_start] = torch.as_tensor(sample["prompt_ids"])
        input_ids[row, answer_start:end] = answer
        labels[row, answer_start:end] = answer
        attention_mask[row, start:end] = 1
        segment_ids[row, start:end] = segments_in_row[row]
        position_ids[row, start:end] = torch.arange(end - start)
        features[utterance, :frames[utterance]] = sample["features"]
        slot_rows += [row] * slots
        slot_cols += range(slots_start, prompt_start)
        frame_utts += [utterance] * slots
        frame_pos += range(slots)
        # the position before each answer token predicts it
        scored_rows += [row] * len(answer)
        scored_cols += range(answer_start - 1, end - 1)
        scored_targets += answer.tolist()
        scored_utts += [utterance] * len(answer)
    batch = {
        "keys": [s["key"] for s in samples],
        "targets": [s["target"] for s in samples],
        "tasks": [s["task"] for s in samples],
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "segment_ids": segment_ids,
        "position_ids": position_ids,
        # whether attention needs a mask: padding, or more than one utterance in a row
        "needs_mask": bool((segment_ids != 1).any()),
        "audio_slot_mask": audio_slot_mask,
        "num_audio_slots": [s["num_audio_slots"] for s in samples],
        "audio_slot_index": torch.tensor([slot_rows, slot_cols], dtype=torch.long),
        "audio_frame_index": torch.tensor([frame_utts, frame_pos], dtype=torch.long),
        "scored_index": torch.tensor([scored_rows, scored_cols], dtype=torch.long),
        "scored_targets": torch.tensor(scored_targets, dtype=torch.long),
        "scored_utterance": torch.tensor(scored_utts, dtype=torch.long),
        "num_scored": len(scored_targets),
        "utterance_tokens": [sequence_length(s) for s in samples],
        "features": features,
        "feature_lengths": torch.tensor(frames),
        "feature_frames": frames,
        "audio_seconds": float(sum(len(s["wav"]) / s["sample_rate"] for s in samples)),
        "audio_durations": [len(s["wav"]) / s["sample_rate"] for s in samples],
    }
    if "transcript_ids" in samples[0]:
        transcripts = [s["transcript_ids"] for s in samples]
        batch["transcript_lengths"] = torch.tensor([len(t) for t in transcripts])
        batch["transcript_ids"] = torch.nn.utils.rnn.pad_sequence(transcripts, batch_first=True)
    return batch


def move_batch(batch: dict[str, Any], device: torch.device,
               features_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """A batch's tensors on `device` (its features in `features_dtype` when given); its key and
    text lists, and the host-side numbers, as they are."""
    moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
             for k, v in batch.items()}
    if features_dtype is not None:
        moved["features"] = moved["features"].to(features_dtype)
    return moved
