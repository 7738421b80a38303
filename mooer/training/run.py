"""The training recipe behind train.py: data, model, module, callbacks, loggers, trainer, fit."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class, instantiate
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from mooer.checkpoints import (
    CTC_HEAD_PREFIX,
    init_weights,
    is_run_dir,
    load_weights,
    verify_checkpoint,
)
from mooer.devices import resolve_device
from mooer.files import writable_dir
from mooer.inference.loading import run_model_config
from mooer.models.build import build_speech_llm
from mooer.models.llm import load_tokenizer
from mooer.models.weights import CheckpointError
from mooer.training.accelerators import register_musa
from mooer.training.callbacks import (
    PREEMPTED_EXIT,
    AtomicCheckpointIO,
    MooerCheckpoint,
    Preemption,
)
from mooer.training.launch import isolate_job, run_job_in_subprocess, write_result
from mooer.training.module import EmptyEpochError
from mooer.training.strategies import set_deepspeed_accelerator

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: Path) -> str | None:
    """`last` means `<run dir>/checkpoints/last.ckpt` (resume with hydra.run.dir=<that run>)."""
    if ckpt_path in (None, "", "none"):
        return None
    if ckpt_path == "last":
        last = checkpoint_dir / "last.ckpt"
        if not last.exists():
            raise FileNotFoundError(f"ckpt_path=last: {last} does not exist. Resume inside the "
                                    "run's directory: hydra.run.dir=<that run dir> ckpt_path=last")
        return str(last)
    if not Path(ckpt_path).exists():
        raise FileNotFoundError(f"ckpt_path {ckpt_path} does not exist")
    return ckpt_path


TRAINER_NUMBERS = ("max_steps", "max_epochs", "min_steps", "min_epochs", "accumulate_grad_batches",
                   "log_every_n_steps", "check_val_every_n_epoch", "val_check_interval",
                   "limit_train_batches", "limit_val_batches", "num_sanity_val_steps",
                   "gradient_clip_val", "num_nodes")


def check_trainer_numbers(trainer_cfg: DictConfig) -> None:
    """Numbers the Trainer compares only mid-run (`max_steps=abc` failed after the model was
    built): checked before anything is built, each error naming its key."""
    for key in TRAINER_NUMBERS:
        value = trainer_cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise SystemExit(f"error: trainer.{key} must be a number, got {value!r}")


def build_strategy(cfg: DictConfig, kind: str) -> Any:
    """`conf/strategy`'s choice; DeepSpeed is first told the accelerator (`kind`)."""
    if cfg.strategy.name == "auto":
        return "auto"
    if issubclass(get_class(cfg.strategy._target_), DeepSpeedStrategy):
        set_deepspeed_accelerator(kind)
    options = {k: v for k, v in cfg.strategy.items() if k != "name"}
    return instantiate(options, _convert_="all")


def require_shared_run_dir() -> None:
    """Ranks started by torchrun, SLURM or DeepSpeed's launcher each resolve the default run
    dir's timestamp themselves, seconds apart: they must be given one directory."""
    world_size = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)
    if world_size > 1 and HydraConfig.initialized() and not any(
            o.startswith("hydra.run.dir=") for o in HydraConfig.get().overrides.hydra):
        raise SystemExit(f"{world_size} ranks were launched without hydra.run.dir: each would write "
                         "its own timestamped run dir. Add hydra.run.dir=<a directory every node "
                         "sees> to the command (the same on every node)")


def train(cfg: DictConfig) -> float | None:
    """Fit the configured model; returns the validation loss (what a sweeper minimizes)."""
    if cfg.dry_run:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return None
    require_shared_run_dir()
    if isolate_job():  # each sweep job in a process of its own (see mooer.training.launch)
        return run_job_in_subprocess()
    return _fit(cfg)


@rank_zero_only
def record_config(cfg: DictConfig, output_dir: Path) -> None:
    """Rewrite the run's `.hydra/config.yaml` (what evaluate.py and mooer-transcribe read back
    from a run dir) with `cfg` (rank 0 only; the others read the same)."""
    saved = output_dir / ".hydra" / "config.yaml"
    if saved.parent.is_dir():
        OmegaConf.save(cfg, saved)


def command_line_overrides() -> list[str]:
    """The overrides this run was started with (none outside a Hydra run)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def apply_init_from(cfg: DictConfig, overrides: list[str] | None = None
                    ) -> tuple[DictConfig, str | None]:
    """`init_from`: the config with a training run's model (encoder, projector, llm, task, but
    this config's `task.context` where it lists hotwords: trained biasing taught to a trained
    model) with the command line's `overrides` of their keys applied again (`encoder.freeze=true`
    freezes the run's encoder; a group choice such as `encoder=whisper` gives way to the run's
    model), and, where this config leaves them null, its data lists; and the weights to start
    from (the run's last.ckpt, or the MooER-layout dir or checkpoint file given)."""
    init = cfg.get("init_from")
    if not init:
        return cfg, None
    try:
        weights = init_weights(init)
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
    if not is_run_dir(init):
        return cfg, str(weights)  # a MooER-layout dir or a checkpoint file
    cfg = cfg.copy()
    trained = run_model_config(init, ("encoder", "projector", "llm", "task", "data"))
    data = trained.pop("data")
    context = cfg.task.get("context")  # a hotword list this run teaches the model to read
    for key, node in trained.items():
        cfg[key] = node
    if context is not None and context.get("text") is not None:
        with open_dict(cfg.task):  # a run trained before task.context existed has none
            cfg.task.context = context
    parsed = OverridesParser.create().parse_overrides(
        command_line_overrides() if overrides is None else overrides)
    for override in parsed:
        key = override.key_or_group
        if key.split(".")[0] in trained and "." in key and not override.is_delete():
            with open_dict(cfg):
                OmegaConf.update(cfg, key, override.value(), merge=True)
    for key in ("train_data_path", "val_data_path"):
        if not cfg.data.get(key):
            cfg.data[key] = data.get(key)
    return cfg, str(weights)


def _fit(cfg: DictConfig) -> float | None:
    check_trainer_numbers(cfg.trainer)
    taken, (cfg, init_checkpoint) = cfg, apply_init_from(cfg)
    if cfg is not taken:  # the run dir records the model it trains: init_from's, not the groups'
        record_config(cfg, Path(cfg.paths.output_dir))
    head_only = bool(cfg.get("ctc_head_only"))
    if head_only and not cfg.data.get("train_data_path"):
        raise SystemExit("error: experiment=ctc_head needs data: give data.train_data_path (and "
                         "data.val_data_path), or init_from=<a training run dir> to use its own")
    output_dir = Path(cfg.paths.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    try:  # found now, not at the first save (save_interval steps in)
        writable_dir(checkpoint_dir, "the run's checkpoint directory")
    except ValueError as err:
        raise SystemExit(f"error: {err}: give a writable hydra.run.dir") from None
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, checkpoint_dir)
    if ckpt_path:
        try:
            verify_checkpoint(ckpt_path)
        except CheckpointError as err:
            raise SystemExit(f"error: {err}") from None
    pl.seed_everything(cfg.seed, workers=True)
    kind = resolve_device(cfg.trainer.accelerator).type
    if kind == "musa" and not register_musa():
        raise SystemExit("trainer=musa needs torch_musa (Moore Threads' PyTorch extension)")
    if cfg.get("prepare_data"):
        instantiate(cfg.prepare_data)
    tokenizer = load_tokenizer(cfg.llm.get("tokenizer_path") or cfg.llm.path)
    # the data settings are checked before the (slow) model is built
    datamodule = instantiate(cfg.data, frontend=instantiate(cfg.encoder.frontend),
                             tokenizer=tokenizer, prompt=instantiate(cfg.task),
                             transcripts=cfg.encoder.ctc_weight > 0 or head_only,
                             _convert_="all")
    model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, tokenizer)
    try:  # a warm start, when given (a head trained alone starts fresh)
        load_weights(model, init_checkpoint, cfg.model.adapter_path, cfg.model.lora_dir,
                     skip=CTC_HEAD_PREFIX if head_only else None)
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
    if head_only:
        model.train_ctc_head_only()
        log.info("training a CTC head alone (%d weights) on the frozen model",
                 sum(p.numel() for p in model.ctc_head.parameters()))
    datamodule.match_model(model)
    module = instantiate(cfg.module, model=model, _convert_="all")
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    preemption = Preemption(checkpoint_dir)
    callbacks.append(preemption)
    callbacks.append(MooerCheckpoint(
        dirpath=checkpoint_dir, filename="step_{step}", every_n_train_steps=cfg.save_interval,
        save_top_k=cfg.keep_checkpoints, monitor="step" if cfg.keep_checkpoints >= 0 else None,
        mode="max", save_last=True, save_on_train_epoch_end=True, save_merge=cfg.save_merge,
        task=cfg.task.name, auto_insert_metric_name=False))
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    strategy = build_strategy(cfg, kind)
    plugins = [] if isinstance(strategy, DeepSpeedStrategy) else [AtomicCheckpointIO()]
    trainer: pl.Trainer = instantiate(cfg.trainer, strategy=strategy, callbacks=callbacks,
                                      logger=loggers, plugins=plugins, _convert_="all")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except (EmptyEpochError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    except SIGTERMException:
        if preemption.saved is None:
            raise
        raise SystemExit(PREEMPTED_EXIT) from None
    if module.nonfinite_steps:
        log.warning("%d batches were skipped for a non-finite loss", module.nonfinite_steps)
    metric = trainer.callback_metrics.get("val/loss")
    val_loss = float(metric) if metric is not None else None
    if trainer.is_global_zero:
        write_result(output_dir, val_loss)
    return val_loss
