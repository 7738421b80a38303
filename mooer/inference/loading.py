"""Build a SpeechLLM for decoding from a config and the weights the user points at."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from mooer.checkpoints import (
    average_state_dicts,
    init_weights,
    is_run_dir,
    load_ctc_head,
    load_trainable,
    load_weights,
    merge_lora,
    run_checkpoints,
)
from mooer.config import run_config
from mooer.models.build import build_speech_llm
from mooer.models.llm import torch_dtype
from mooer.models.speech_llm import SpeechLLM
from mooer.models.weights import CheckpointError

log = logging.getLogger(__name__)


def apply_run_dir(cfg: DictConfig) -> DictConfig:
    """With `run_dir` (a training run), take its model config, its prompt format (`task`: so a
    run decodes with exactly the prompt it was trained with) and its last checkpoint."""
    run_dir = cfg.get("run_dir")
    if not run_dir:
        if (cfg.get("average") or 1) > 1:
            raise CheckpointError(f"average={cfg.average} averages a run's checkpoints: give "
                                  "run_dir= too")
        return cfg
    cfg = cfg.copy()
    for key, node in run_model_config(run_dir).items():
        cfg[key] = node
    if not cfg.get("checkpoint"):
        cfg.checkpoint = str(Path(run_dir) / "checkpoints" / "last.ckpt")
        with open_dict(cfg):
            cfg.base_checkpoints = [str(p) for p in base_weights(run_dir)]
            if run_config(run_dir).get("ctc_head_only") and not cfg.model.get("ctc_head"):
                # a head trained alone (experiment=ctc_head): the model it started from, and it
                cfg.model.ctc_head, cfg.checkpoint = cfg.checkpoint, None
    return cfg


def base_weights(run_dir: str | Path) -> list[Path]:
    """The weights a run started from (`init_from`, and what that run started from), oldest
    first: a run's checkpoints hold only what it trained, so what it froze (`encoder.freeze`
    in a fine-tune of a trained run) comes from there."""
    chain: list[Path] = []
    current, seen = Path(run_dir).resolve(), set()
    while current not in seen:
        seen.add(current)
        init = run_config(current).get("init_from")
        if not init:
            break
        start = Path(init) if Path(init).is_absolute() else _train_cwd(current) / init
        try:
            chain.append(init_weights(start))
        except CheckpointError as err:  # moved or deleted: what the run trained still loads
            log.warning("%s started from weights that are gone (%s): the weights it did not "
                        "train (a frozen encoder) are not loaded from there", current, err)
            break
        if not is_run_dir(start):
            break
        current = start.resolve()
    return chain[::-1]


def _train_cwd(run_dir: Path) -> Path:
    """The directory a run was started in (what its relative paths are relative to)."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    return (Path(OmegaConf.load(hydra_file).hydra.runtime.cwd) if hydra_file.is_file()
            else Path.cwd())


def run_model_config(run_dir: str | Path, groups: tuple[str, ...] = ("encoder", "projector",
                                                                      "llm", "task")) -> dict:
    """A training run's config `groups`, resolved where they were written: relative file paths
    made absolute from the directory the run was started in."""
    trained = run_config(run_dir)
    train_cwd = _train_cwd(Path(run_dir))
    return {key: _anchored(OmegaConf.to_container(trained[key], resolve=True), train_cwd)
            for key in groups}


PATH_KEYS = frozenset({"path", "tokenizer_path", "cmvn_path", "checkpoint"})


def _anchored(node, train_cwd: Path):
    """A run's model config with its relative file paths made absolute from the directory the
    run was started in, so that decoding works from any directory."""
    if isinstance(node, dict):
        return {k: (str(train_cwd / v) if k in PATH_KEYS and isinstance(v, str) and v
                    and not Path(v).is_absolute() and (train_cwd / v).exists()
                    else _anchored(v, train_cwd)) for k, v in node.items()}
    if isinstance(node, list):
        return [_anchored(v, train_cwd) for v in node]
    return node


def load_for_decoding(cfg: DictConfig, device: torch.device, precision: str,
                      tokenizer=None) -> tuple[SpeechLLM, torch.dtype]:
    """The configured model with its weights, LoRA merged, in eval mode on `device`."""
    torch.manual_seed(cfg.get("seed", 42))  # pieces without weight files are reproducible
    model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, tokenizer)
    model_cfg = cfg.get("model") or {}
    average = cfg.get("average") or 1
    for base in cfg.get("base_checkpoints") or []:  # what a run started from (init_from)
        load_weights(model, base, None, None)
    if average > 1 and cfg.get("run_dir"):
        paths = run_checkpoints(cfg.run_dir, average)
        log.info("averaging the weights of %d checkpoints: %s", average,
                 ", ".join(p.name for p in paths))
        load_trainable(model, f"the average of {', '.join(map(str, paths))}",
                       average_state_dicts(paths))
        load_weights(model, None, model_cfg.get("adapter_path"), model_cfg.get("lora_dir"))
    else:
        load_weights(model, cfg.get("checkpoint"), model_cfg.get("adapter_path"),
                     model_cfg.get("lora_dir"))
    head = model_cfg.get("ctc_head")
    if head:
        load_ctc_head(model, head)
    merge_lora(model)
    dtype = torch_dtype(precision)
    if device.type == "cpu" and dtype != torch.float32:
        log.info("decoding on the CPU in fp32 (%s is for accelerators)", precision)
        dtype = torch.float32
    return model.to(device=device, dtype=dtype).eval(), dtype
