"""Callbacks: checkpoints with MooER-layout merged exports, and atomic checkpoint writes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mooer.checkpoints import export_mooer, partial_path, swap_in
from mooer.training.module import SpeechLLMModule


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes `<path>.partial` then renames it, so a kill mid-save never leaves a truncated
    checkpoint under the final name (the previous one stays usable)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        partial = partial_path(path)
        super().save_checkpoint(checkpoint, partial, storage_options)
        swap_in(partial, path)


def _gathered(pl_module: pl.LightningModule):
    """Full parameters on every rank under ZeRO-3 (a no-op otherwise)."""
    engine = getattr(pl_module.trainer.strategy, "deepspeed_engine", None)
    if engine is not None and engine.zero_optimization_stage() == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(pl_module.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


class MooerCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that, with `save_merge`, also writes MooER's layout after each save:
    `<task>_epoch_<E>_step_<S>_merged/adapter_project.pt` and `.../new_llm/` (as MooER names
    them, E counted from 1 as its log line does; ZeRO shards gathered)."""

    def __init__(self, save_merge: bool = True, task: str = "asr", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_merge, self.task = save_merge, task

    def merged_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or ".") / (f"{self.task}_epoch_{trainer.current_epoch + 1}_step_"
                                     f"{trainer.global_step}_merged")

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if not self.save_merge or Path(filepath).stem == "last":
            return
        module = cast(SpeechLLMModule, trainer.lightning_module)
        with _gathered(module):
            if trainer.is_global_zero:
                export_mooer(module.model, self.merged_dir(trainer), lora_subdir="new_llm")
        trainer.strategy.barrier()
