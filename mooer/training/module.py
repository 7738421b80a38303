"""The LightningModule: the only place that knows optimizers, schedules and logging."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy

from mooer.checkpoints import check_trainable, trainable_state
from mooer.data.collate import move_batch
from mooer.evaluation.metric import ErrorRate
from mooer.models.speech_llm import SpeechLLM

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN or infinite loss."""


class EmptyEpochError(RuntimeError):
    """A training epoch gave no batch: no data, or all of it skipped or filtered."""


Optimizer = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
Scheduler = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def compile_regions(model: SpeechLLM, **options: Any) -> int:
    """Regional compilation: each decoder layer and encoder block compiled in place
    (`nn.Module.compile`, so state-dict keys do not change and checkpoints load either way);
    the layers share one compiled graph a shape. Returns how many regions were compiled."""
    regions = [*model.llm.get_decoder().layers, *model.encoder.blocks]
    # a graph a length bucket (data.pad_to_multiple): past dynamo's default of 8 shapes it
    # would quietly run the rest eagerly
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for region in regions:
        region.compile(**options)
    return len(regions)


def lora_input_casting(model: torch.nn.Module, enabled: bool) -> None:
    """peft casts each adapter's input to the adapter's dtype (fp32 master weights): under
    autocast the matmul casts it back to bf16, so that cast is a copy per projection, forward
    and backward, for nothing. Off under autocast; on again after."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):  # peft's LoRA layers
            module.cast_input_dtype_enabled = enabled  # type: ignore[assignment]


def supports_device_skip(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` can skip a step on the device: torch's fused optimizers read a
    `found_inf` tensor (what GradScaler hands them) and leave weights, moments and step count
    untouched where it is 1."""
    return bool(getattr(optimizer, "defaults", {}).get("fused")) and getattr(
        optimizer, "_step_supports_amp_scaling", False)


class SpeechLLMModule(pl.LightningModule):
    """Trains a SpeechLLM: loss and token accuracy, validation loss/accuracy and greedy-decoded
    error rate on a few batches, MooER's log line, throughput, NaN/inf step skipping.

    Built from `conf/module` (see there for each setting): `optimizer` and `scheduler` are
    partials that `configure_optimizers` completes with the trainable parameters and the
    optimizer; `compile` compiles each decoder layer and encoder block with `compile_options`
    (torch.compile's arguments)."""

    def __init__(self, model: SpeechLLM, optimizer: Optimizer, scheduler: Scheduler | None = None,
                 log_interval: int = 100, val_decode_batches: int = 2,
                 val_max_new_tokens: int = 64, max_consecutive_nonfinite: int = 20,
                 compile: bool = False, compile_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.log_interval = log_interval
        self.val_decode_batches = val_decode_batches
        self.val_max_new_tokens = val_max_new_tokens
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.compile_model, self.compile_options = compile, dict(compile_options or {})
        self.compiled_regions = 0
        self.nonfinite_steps = 0
        self.consecutive_nonfinite = 0
        # where the optimizer skips non-finite steps on the device: [skipped, in a row] there,
        # read on the steps that log, and the optimizer's found_inf flag of the current step
        self._device_skip = False
        self._nonfinite_counts = torch.zeros(2)
        self._found_inf = torch.zeros(())
        self._lora_cast_off = False
        self.val_error_rate = ErrorRate()
        self._window: dict[str, Any] = {"samples": 0, "audio_seconds": 0.0, "tokens": 0,
                                        "started": None}
        self.strict_loading = False  # checkpoints hold the trainable weights only

    # -- set-up ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.compile_model and not self.compiled_regions:
            self.compiled_regions = compile_regions(self.model, **self.compile_options)
            log.info("compiled %d regions (decoder layers and encoder blocks)",
                     self.compiled_regions)

    def on_fit_start(self) -> None:
        """One set of numerics: under autocast (bf16-mixed) every matmul, the adapters' too,
        runs in bf16 over fp32 master weights, without peft's casts to fp32 between."""
        if self.trainer.precision in ("bf16-mixed", "16-mixed"):
            lora_input_casting(self.model, False)
            self._lora_cast_off = True

    def on_fit_end(self) -> None:
        if self._lora_cast_off:
            lora_input_casting(self.model, True)
            self._lora_cast_off = False

    def on_train_start(self) -> None:
        """Non-finite steps are skipped on the device where the optimizer can (a fused torch
        optimizer, no DeepSpeed, no fp16 loss scaler, which skips them itself); else the step
        reads the loss back (a host sync) and skips on the host."""
        optimizer = self.trainer.optimizers[0]
        self._device_skip = (supports_device_skip(optimizer)
                             and not isinstance(self.trainer.strategy, DeepSpeedStrategy)
                             and getattr(self.trainer.precision_plugin, "scaler", None) is None)
        if self._device_skip:
            self._nonfinite_counts = torch.tensor([float(self.nonfinite_steps), 0.0],
                                                  device=self.device)
            self._found_inf = torch.zeros((), device=self.device)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._device_skip and batch_idx % self.trainer.accumulate_grad_batches == 0:
            self._found_inf.zero_()  # a new optimizer step: its micro-batches set the flag
            # the attribute through which GradScaler hands fused optimizers the flag
            self.trainer.optimizers[0].found_inf = self._found_inf  # type: ignore[attr-defined]

    # -- training -------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        out = self.model(batch)
        loss = out["loss"]
        if self._device_skip:
            self._note_nonfinite(loss)
        elif not torch.isfinite(loss):
            return self._skip_nonfinite(loss)
        else:
            self.consecutive_nonfinite = 0
        if self._step_is_read():
            size = len(batch["keys"])
            self.log("train/loss", loss, prog_bar=True, batch_size=size)
            self.log("train/acc", out["accuracy"], prog_bar=True, batch_size=size)
            if "ctc_loss" in out:
                self.log("train/ctc_loss", out["ctc_loss"], batch_size=size)
            self.read_nonfinite()
        self._count(batch, out["num_tokens"])
        return loss

    def _note_nonfinite(self, loss: torch.Tensor) -> None:
        """On the device, nothing read back: a non-finite loss sets the optimizer's found_inf
        (the whole optimizer step is skipped, as with AMP's loss scaler) and the counters."""
        bad = (~torch.isfinite(loss.detach())).float()
        torch.maximum(self._found_inf, bad, out=self._found_inf)
        counts = self._nonfinite_counts
        self._nonfinite_counts = torch.stack((counts[0] + bad, (counts[1] + 1) * bad))

    def read_nonfinite(self) -> None:
        """Read the device's counts of skipped steps (on the steps that log, at saves and at the
        end), warn about new ones, and stop after too many in a row."""
        if not self._device_skip:
            return
        total, in_a_row = (int(v) for v in self._nonfinite_counts.tolist())
        if total > self.nonfinite_steps:
            log.warning("step %d: %d more batch(es) had a non-finite loss and their optimizer "
                        "steps were skipped (%d so far)", self.global_step,
                        total - self.nonfinite_steps, total)
        self.nonfinite_steps, self.consecutive_nonfinite = total, in_a_row
        self._stop_if_too_many()

    def _stop_if_too_many(self) -> None:
        if self.consecutive_nonfinite >= self.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} consecutive batches had a non-finite loss: lower "
                "optim.lr, use bf16 instead of fp16, or check the data (mooer-data show)")

    def on_train_end(self) -> None:
        self.read_nonfinite()

    def _step_is_read(self) -> bool:
        """Whether this step's loss and accuracy reach anyone: the loggers (every
        `trainer.log_every_n_steps` optimizer steps) or MooER's log line (every `log_interval`).
        Only then are they logged: each `self.log` costs ~0.7 ms in Lightning, 6 % of a tiny
        model's step, and on the other steps nobody reads the value (the progress bar shows the
        last one logged)."""
        step = self.global_step + 1  # the step this batch is part of, as the loggers count it
        # (Trainer attributes its connectors set, which its type does not declare)
        every = self.trainer.log_every_n_steps  # type: ignore[attr-defined]
        return bool((every and step % every == 0) or self._log_line_due(step)
                    or self.trainer.fast_dev_run)  # type: ignore[attr-defined]

    def _log_line_due(self, step: int) -> bool:
        """Whether MooER's log line follows optimizer step `step` (counted from 1)."""
        return bool(self.log_interval) and step > 0 and step % self.log_interval == 0

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Our batches are flat dicts: move their tensors, without Lightning's walk through the
        key and text lists."""
        if isinstance(batch, dict):
            return move_batch(batch, device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _skip_nonfinite(self, loss: torch.Tensor) -> torch.Tensor | None:
        self.nonfinite_steps += 1
        self.consecutive_nonfinite += 1
        log.warning("step %d: loss is %s, skipping this batch (%d such batches so far)",
                    self.global_step, loss.item(), self.nonfinite_steps)
        self._stop_if_too_many()
        if isinstance(self.trainer.strategy, DeepSpeedStrategy):
            # DeepSpeed must see a backward every step: a zero loss leaves weights unchanged
            return sum((p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad),
                       torch.zeros((), device=self.device))
        return None

    def _count(self, batch: dict[str, Any], tokens: int) -> None:
        """Adds to the throughput window (host numbers the collate counted)."""
        window = self._window
        if window["started"] is None:
            window["started"] = time.perf_counter()
        window["samples"] += len(batch["keys"])
        window["audio_seconds"] += batch["audio_seconds"]
        window["tokens"] += tokens

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.global_step  # already advanced past this batch's optimizer step
        if not self._log_line_due(step) or outputs is None:
            return
        if batch_idx % self.trainer.accumulate_grad_batches:  # log once per optimizer step
            return
        window = self._window
        elapsed = time.perf_counter() - (window["started"] or time.perf_counter())
        if elapsed > 0:
            self.log_dict({"throughput/samples_per_s": window["samples"] / elapsed,
                           "throughput/audio_s_per_s": window["audio_seconds"] / elapsed,
                           "throughput/tokens_per_s": float(window["tokens"]) / elapsed})
        self._window = {"samples": 0, "audio_seconds": 0.0, "tokens": 0, "started": None}
        metrics = self.trainer.callback_metrics
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        if self.trainer.is_global_zero:
            log.info("Training Epoch: %d/%d, step %d lr %.2e completed (loss: %.2f, acc: %.2f)",
                     self.current_epoch + 1, self.trainer.max_epochs, step, lr,
                     float(metrics.get("train/loss", math.nan)),
                     float(metrics.get("train/acc", math.nan)))

    def on_train_epoch_end(self) -> None:
        """An epoch without a single batch stops the run (before its checkpoint is written)."""
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        if progress.processed:  # type: ignore[attr-defined]  # a _ProcessedTracker
            return
        errors = getattr(self.trainer.train_dataloader, "errors", None) or {}
        why = ", ".join(f"{reason}: {count}" for reason, count in sorted(errors.items()))
        raise EmptyEpochError(
            f"train epoch {self.current_epoch} gave no batch to train on "
            f"({why or 'the data list gave no utterances'}). Check data.train_data_path, and "
            "data.min_length/max_length (10 ms frames) against your durations")

    # -- validation -----------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.model(batch)
        size = len(batch["keys"])
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=size, sync_dist=True)
        self.log("val/acc", out["accuracy"], batch_size=size, sync_dist=True)
        if not self.val_decode_batches:
            return
        if batch_idx < self.val_decode_batches:
            references = batch["targets"]
            if self.model.ctc_only:  # a CTC head trained alone: its best path, on transcripts
                decode = self.model.tokenizer.decode
                texts = [decode(ids, skip_special_tokens=True) for ids in out["best_path"]]
                references = [decode(row[:length], skip_special_tokens=True)
                              for row, length in zip(batch["transcript_ids"].tolist(),
                                                     batch["transcript_lengths"].tolist(),
                                                     strict=True)]
            else:
                with torch.compiler.set_stance("force_eager"):
                    texts = self.model.generate(batch, num_beams=1,
                                                max_new_tokens=self.val_max_new_tokens,
                                                eos_bias=0).texts  # eager: one-token shapes recompile
            self.val_error_rate.update(dict(zip(batch["keys"], references, strict=True)),
                                       dict(zip(batch["keys"], texts, strict=True)))
        # Lightning computes it over every rank's counts at the epoch's end, then resets it
        self.log("val/error_rate", self.val_error_rate, prog_bar=True, batch_size=size)

    # -- optimizer ------------------------------------------------------------------------
    def configure_optimizers(self):
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError("nothing to train: every parameter is frozen (check encoder.freeze, "
                             "projector.freeze, llm.freeze and llm.lora.enabled)")
        optimizer = self.optimizer(parameters)
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler(optimizer), "interval": "step"}}

    # -- checkpoints: only what trains ----------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.read_nonfinite()
        state = checkpoint.get("state_dict")
        if state is not None:
            checkpoint["state_dict"] = trainable_state(state, self._trainable_keys())
        checkpoint["nonfinite_steps"] = self.nonfinite_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_steps = checkpoint.get("nonfinite_steps", 0)
        state = checkpoint.get("state_dict")
        if state is not None:
            check_trainable(state, self._trainable_keys())

    def _trainable_keys(self) -> list[str]:
        return [f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad]
