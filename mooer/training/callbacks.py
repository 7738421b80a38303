"""Callbacks: checkpoints with MooER-layout merged exports, atomic checkpoint writes that say so
when the disk is full, and a resumable checkpoint when the job is told to stop (preemption)."""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mooer.checkpoints import export_mooer, write_failed
from mooer.files import partial_path, swap_in
from mooer.training.module import SpeechLLMModule

log = logging.getLogger(__name__)

# the exit status of a run stopped by SIGTERM or SIGUSR1 after saving a resumable checkpoint:
# EX_TEMPFAIL ("try again"): run the same command with ckpt_path=last
PREEMPTED_EXIT = 75


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes `<path>.partial` then renames it, so a kill mid-save never leaves a truncated
    checkpoint under the final name (the previous one stays usable)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        partial = partial_path(path)
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
        except (OSError, RuntimeError) as err:  # torch's writer reports a full disk as either
            raise write_failed(path, checkpoint, err) from err
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


class Preemption(pl.Callback):
    """Told to stop (SIGTERM from a scheduler, systemd or docker; SIGUSR1, SLURM's warning before
    a time limit), the run writes a resumable checkpoint (`last.ckpt`) at the next step boundary,
    says so, and exits with PREEMPTED_EXIT: `ckpt_path=last` continues exactly where it stopped.

    Lightning notices SIGTERM itself and stops at the next step boundary on every rank; this
    callback saves there. Under SLURM with requeueing, Lightning's SLURM environment handles
    SIGUSR1 (saves and requeues the job) and this leaves it be."""

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.saved: Path | None = None
        self._previous: Any = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        environment = trainer._accelerator_connector.cluster_environment
        slurm_requeue = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
        if not slurm_requeue and hasattr(signal, "SIGUSR1"):
            connector = trainer._signal_connector

            def stop_soon(signum: int, frame: Any) -> None:  # as Lightning's SIGTERM does
                log.info("received signal %d: stopping at the next step boundary", signum)
                connector.received_sigterm = True

            self._previous = signal.signal(signal.SIGUSR1, stop_soon)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._restore()
        if not isinstance(exception, SIGTERMException):
            return
        path = self.checkpoint_dir / "last.ckpt"
        trainer.save_checkpoint(path)
        self.saved = path
        if trainer.is_global_zero:
            log.warning("stopped by a signal at step %d (epoch %d): saved %s; run the same "
                        "command with ckpt_path=last to continue", trainer.global_step,
                        trainer.current_epoch, path)

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None
