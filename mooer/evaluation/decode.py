"""Batched decoding of a data.list or a Kaldi dir into `uttid -> text`, with timing."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mooer.data.collate import audio_slots
from mooer.data.datamodule import EpochDataLoader, PipelineOptions, ShardDataset
from mooer.data.prompts import PROMPTS, QWEN_TEMPLATE, PromptBuilder
from mooer.models.speech_llm import SpeechLLM

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    """Hypotheses of one set and what they cost."""

    hypotheses: dict[str, str]
    references: dict[str, str]  # the transcripts the data carried
    audio_seconds: float
    elapsed: float
    duplicates: list[str] = field(default_factory=list)  # uttids the data held more than once

    @property
    def rtf(self) -> float:
        return self.elapsed / self.audio_seconds if self.audio_seconds else 0.0

    @property
    def utterances_per_second(self) -> float:
        return len(self.hypotheses) / self.elapsed if self.elapsed else 0.0


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA, then MUSA, then the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch, "musa") and torch.musa.is_available():
        return torch.device("musa")
    return torch.device("cpu")


def decoding_loader(source: str | Path, frontend, tokenizer, task: str, prompts: dict | None,
                    convs, downsample: int, batch_size: int, num_workers: int = 0,
                    template: str = QWEN_TEMPLATE) -> EpochDataLoader:
    """Prompt-only batches of a data.list or Kaldi dir, sorted by length to pad little."""
    builder = PromptBuilder(tokenizer, {**PROMPTS, **(prompts or {})}, task=task,
                            template=template)
    options = PipelineOptions(training=False, inference=True, batch_size=batch_size,
                              sort_buffer=batch_size * 16, min_length=0, max_length=10**9)
    dataset = ShardDataset(source, frontend, builder,
                           lambda frames: audio_slots(frames, convs, downsample), options)
    return EpochDataLoader(dataset, num_workers=num_workers, name=str(source))


def config_loader(cfg, source: str | Path, tokenizer, task: str, batch_size: int,
                  frontend=None) -> EpochDataLoader:
    """`decoding_loader` with the frontend, prompts, template and slot arithmetic of `cfg`
    (an evaluate config, after apply_run_dir when decoding a training run)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return decoding_loader(source, frontend or instantiate(cfg.encoder.frontend), tokenizer,
                           task, OmegaConf.to_container(cfg.task.prompts, resolve=True),
                           list(cfg.encoder.length_convs), cfg.projector.downsample, batch_size,
                           template=cfg.task.prompt_template)


def to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    moved["features"] = moved["features"].to(dtype)
    return moved


def decode(model: SpeechLLM, loader: EpochDataLoader, decoding: dict[str, Any],
           device: torch.device, dtype: torch.dtype, total: int | None = None,
           desc: str = "decoding") -> Decoded:
    """Generate every utterance of `loader`; a progress bar counts utterances."""
    hypotheses, references, seconds, duplicates, seen = {}, {}, 0.0, [], set()
    started = time.perf_counter()
    with tqdm(total=total, desc=desc, unit="utt") as bar:
        for batch in loader:
            for key in batch["keys"]:
                if key in seen:
                    duplicates.append(key)
                seen.add(key)
            generated = model.generate(to_device(batch, device, dtype), **decoding)
            hypotheses.update(zip(batch["keys"], generated.texts, strict=True))
            references.update(zip(batch["keys"], batch["targets"], strict=True))
            seconds += batch["audio_seconds"]
            bar.update(len(batch["keys"]))
    if duplicates:
        log.warning("%s: %d uttids came more than once (the last hypothesis is kept): %s", desc,
                    len(duplicates), " ".join(sorted(set(duplicates))[:10]))
    return Decoded(hypotheses, references, seconds, time.perf_counter() - started, duplicates)
