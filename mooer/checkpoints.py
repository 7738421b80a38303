"""Checkpoints, one owner: MooER's release layout, this project's training checkpoints, averaging,
verification before a resume, and atomic writes. (Reading a weight file safely is
`mooer.models.weights`, below the models that load their own.)

MooER's release: `adapter_project.pt` (projector, keys `encoder_projector.*`, plus
`encoder.model.<SANM key>` when the encoder was trained, as MooER's MooerModel names them) and a
peft LoRA dir (`adapter_config.json` + `adapter_model.bin` or `.safetensors`). Load them as
released; export ours the same way. Ours: the trainable weights under `model.` (a frozen 7B LLM
is never rewritten), in Lightning's checkpoint file or DeepSpeed's directory."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from mooer.files import disk_full_message, partial_path
from mooer.models.speech_llm import SpeechLLM
from mooer.models.weights import CheckpointError, load_state_dict_file, load_strict, safe_torch_load

LORA_SUBDIRS = ("new_llm", "lora_weights")  # where MooER-layout dirs keep their LoRA
PROJECTOR_PREFIX = "encoder_projector."
ENCODER_PREFIX = "encoder.model."  # MooER wraps the SANM encoder as `encoder.model`


def load_adapter_project(model: SpeechLLM, path: str | Path) -> None:
    """Load MooER's adapter_project.pt into the projector (and encoder, when it carries one)."""
    state = load_state_dict_file(path)
    projector = {k[len(PROJECTOR_PREFIX):]: v for k, v in state.items()
                 if k.startswith(PROJECTOR_PREFIX)}
    encoder = {k[len(ENCODER_PREFIX):]: v for k, v in state.items()
               if k.startswith(ENCODER_PREFIX)}
    foreign = sorted(k for k in state if not k.startswith((PROJECTOR_PREFIX, ENCODER_PREFIX)))
    if foreign and all(k.startswith("encoder.") for k in foreign):
        raise CheckpointError(f"{path} names encoder weights `encoder.<key>` ({foreign[0]}), "
                              f"MooER names them `{ENCODER_PREFIX}<key>`: re-export it")
    if not projector:
        raise CheckpointError(f"{path} has no '{PROJECTOR_PREFIX}*' keys: it is not a MooER "
                              f"adapter_project.pt (found e.g. {', '.join(list(state)[:3])})")
    if foreign:
        raise CheckpointError(f"{path} holds keys that are neither projector nor encoder: "
                              f"{', '.join(foreign[:5])}")
    load_strict(model.projector, projector, f"{path} (projector)")
    if encoder:
        load_strict(model.encoder, encoder, f"{path} (encoder)")


def _lora_weight_file(lora_dir: Path) -> Path:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (lora_dir / name).is_file():
            return lora_dir / name
    raise CheckpointError(f"{lora_dir} has no adapter_model.safetensors or adapter_model.bin")


def load_lora(model: SpeechLLM, lora_dir: str | Path) -> None:
    """Load a peft LoRA dir into the LLM; the LLM is wrapped with that LoRA config if it has
    none yet, and a rank or target mismatch with an existing LoRA is an error."""
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict

    lora_dir = Path(lora_dir)
    config_path = lora_dir / "adapter_config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{lora_dir} is not a LoRA dir: no adapter_config.json")
    saved = json.loads(config_path.read_text())
    if saved.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{config_path} is a {saved['peft_type']} adapter, not LoRA")
    if not isinstance(model.llm, PeftModel):
        config = LoraConfig(r=saved["r"], lora_alpha=saved["lora_alpha"],
                            lora_dropout=saved.get("lora_dropout", 0.0),
                            target_modules=saved["target_modules"], bias=saved.get("bias", "none"),
                            task_type="CAUSAL_LM")
        model.llm = get_peft_model(model.llm, config)
    else:
        ours = model.llm.peft_config["default"]
        if not isinstance(ours, LoraConfig):
            raise CheckpointError(f"the model's adapter is {type(ours).__name__}, not LoRA: "
                                  f"{lora_dir} cannot be loaded into it")
        targets = set(ours.target_modules or ())
        if ours.r != saved["r"] or targets != set(saved["target_modules"]):
            raise CheckpointError(
                f"{lora_dir} has LoRA r={saved['r']} on {sorted(saved['target_modules'])}, the "
                f"model r={ours.r} on {sorted(targets)}: set llm.lora to match")
    state = load_state_dict_file(_lora_weight_file(lora_dir))
    result = set_peft_model_state_dict(model.llm, state)
    missing_lora = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing_lora or unexpected:
        raise CheckpointError(f"{lora_dir} does not fit the LLM: missing {missing_lora[:4]}, "
                              f"unexpected {unexpected[:4]}")


def merge_lora(model: SpeechLLM) -> None:
    """Fold LoRA into the base weights (faster inference, no peft wrapper left)."""
    from peft import PeftModel

    if isinstance(model.llm, PeftModel):
        model.llm = model.llm.merge_and_unload()


def export_mooer(model: SpeechLLM, out_dir: str | Path, lora_subdir: str = "lora_weights",
                 safetensors: bool = False) -> Path:
    """Write `out_dir/adapter_project.pt` (+ `out_dir/<lora_subdir>/` when the LLM has LoRA)
    in MooER's layout; the encoder is included only when it is trained."""
    from peft import PeftModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {PROJECTOR_PREFIX + k: v.detach().cpu().clone()
             for k, v in model.projector.state_dict().items()}
    if not model.freeze_encoder:
        state.update({ENCODER_PREFIX + k: v.detach().cpu().clone()
                      for k, v in model.encoder.state_dict().items()})
    torch.save(state, out_dir / "adapter_project.pt")
    if isinstance(model.llm, PeftModel):
        model.llm.save_pretrained(str(out_dir / lora_subdir), safe_serialization=safetensors)
    return out_dir


def load_mooer(model: SpeechLLM, adapter_path: str | Path | None = None,
               lora_dir: str | Path | None = None, merge: bool = False) -> SpeechLLM:
    """Warm start or inference from MooER release files (either may be None)."""
    if adapter_path:
        load_adapter_project(model, adapter_path)
    if lora_dir:
        load_lora(model, lora_dir)
    if merge:
        merge_lora(model)
    return model


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a directory a `python train.py` run wrote (its `.hydra/config.yaml`)."""
    return (Path(path) / ".hydra" / "config.yaml").is_file()


def init_weights(init: str | Path) -> Path:
    """The weights `init_from` names: a training run dir's last.ckpt (a DeepSpeed run's newest
    `*_merged` export, its last.ckpt being a directory of shards), or the MooER-layout dir or
    checkpoint file itself."""
    path = Path(init)
    if not path.exists():
        raise CheckpointError(f"init_from {init} does not exist")
    if not is_run_dir(path):
        return path  # a MooER-layout dir or a checkpoint file
    checkpoint = path / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        raise CheckpointError(f"init_from {init} is a run dir without checkpoints/last.ckpt")
    if checkpoint.is_dir():
        exports = sorted(checkpoint.parent.glob("*_step_*_merged"),
                         key=lambda d: int(d.name.rsplit("_step_", 1)[1].split("_")[0]))
        if not exports:
            raise CheckpointError(f"init_from {init}: its last.ckpt is DeepSpeed's sharded "
                                  "directory and the run wrote no *_merged export "
                                  "(save_merge=true): give init_from=<a MooER-layout dir> of its "
                                  "weights")
        return exports[-1]
    return checkpoint


def run_checkpoints(run_dir: str | Path, count: int) -> list[Path]:
    """The newest `count` checkpoints of a training run, oldest first: `last.ckpt` (the end of
    training) and the `step_<N>.ckpt` files saved before it."""
    directory = Path(run_dir) / "checkpoints"
    by_step = {int(p.stem.split("_", 1)[1]): p for p in directory.glob("step_*.ckpt")
               if p.stem.split("_", 1)[1].isdigit() and p.is_file()}  # not DeepSpeed dirs
    last = directory / "last.ckpt"
    if last.is_file():
        step = safe_torch_load(last, mmap=True).get("global_step")  # its weights stay unread
        if isinstance(step, int) and step not in by_step:
            by_step[step] = last
    if len(by_step) < count:
        raise CheckpointError(f"averaging {count} checkpoints needs {count}, but {directory} "
                              f"holds {len(by_step)} (steps {sorted(by_step)}): lower average= "
                              "or save more often (save_interval=, keep_checkpoints=)")
    return [by_step[step] for step in sorted(by_step)[-count:]]


def average_state_dicts(paths: Sequence[str | Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the weights of several checkpoints of one model (WeNet's and
    icefall's model averaging); integer tensors are taken from the last."""
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for number, path in enumerate(paths):
        state = load_state_dict_file(path)
        if number and set(state) != set(total):
            raise CheckpointError(f"{path} holds other weights than {paths[0]}: only checkpoints "
                                  "of one run can be averaged")
        for key, value in state.items():
            if not value.is_floating_point():
                total[key] = value
            elif number == 0:
                total[key], dtypes[key] = value.to(torch.float64), value.dtype
            elif value.shape != total[key].shape:
                raise CheckpointError(f"{path}: {key} is {tuple(value.shape)}, "
                                      f"{tuple(total[key].shape)} in {paths[0]}")
            else:
                total[key] += value.to(torch.float64)
    return {key: (value / len(paths)).to(dtypes[key]) if key in dtypes else value
            for key, value in total.items()}


def load_trainable(model: SpeechLLM, path: str | Path,
                   state: dict[str, torch.Tensor] | None = None, skip: str | None = None) -> None:
    """Load one of our training checkpoints (trainable weights under `model.`); `state`, when
    given, holds its weights already (an average named by `path`); weights whose names start
    with `skip` are left out (a CTC head the run replaces)."""
    state = load_state_dict_file(path) if state is None else state
    state = {k.removeprefix("model."): v for k, v in state.items()
             if not (skip and k.removeprefix("model.").startswith(skip))}
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise CheckpointError(f"{path} has weights this model lacks: {', '.join(unknown[:5])} "
                              "(is the encoder/llm/projector config the one it was trained with?)")
    missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in state
                     and not (skip and n.startswith(skip)))
    if missing:
        raise CheckpointError(
            f"{path} lacks {len(missing)} of the weights this config trains "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): it was not "
            "trained with this encoder/projector/llm config (give run_dir= to use the run's)")
    model.load_state_dict(state, strict=False)


def load_weights(model: SpeechLLM, checkpoint: str | Path | None, adapter_path: str | None,
                 lora_dir: str | None, skip: str | None = None) -> None:
    """`checkpoint` is a MooER-layout dir (adapter_project.pt + new_llm/ or lora_weights/) or
    one of our checkpoint files (`skip`: see `load_trainable`); adapter_path/lora_dir are MooER
    release files."""
    if checkpoint:
        checkpoint = Path(checkpoint)
        if checkpoint.is_dir():
            if not (checkpoint / "adapter_project.pt").is_file():
                raise CheckpointError(f"{checkpoint} has no adapter_project.pt: expected a "
                                      "MooER-layout dir (<task>_epoch_<E>_step_<S>_merged/ or a release dir)")
            lora = next((checkpoint / d for d in LORA_SUBDIRS if (checkpoint / d).is_dir()), None)
            load_mooer(model, checkpoint / "adapter_project.pt", lora)
        else:
            load_trainable(model, checkpoint, skip=skip)
    load_mooer(model, adapter_path, lora_dir)


CTC_HEAD_PREFIX = "ctc_head."


def load_ctc_head(model: SpeechLLM, path: str | Path) -> None:
    """Add a CTC head trained apart (conf/experiment/ctc_head.yaml: that run's checkpoint, or a
    state dict of `ctc_head.weight` and `ctc_head.bias`) to any model, MooER's release
    included, replacing the model's own: word times then come from it."""
    state = {k.removeprefix("model."): v for k, v in load_state_dict_file(path).items()}
    head = {k.removeprefix(CTC_HEAD_PREFIX): v for k, v in state.items()
            if k.startswith(CTC_HEAD_PREFIX)}
    if not head:
        raise CheckpointError(f"{path} holds no CTC head (ctc_head.weight, ctc_head.bias): give "
                              "the checkpoint of a run of experiment=ctc_head")
    try:
        model.add_ctc_head(head, source=str(path))
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def _deepspeed_classes() -> list[type]:
    """The classes DeepSpeed's optimizer-state files hold besides tensors (its loss scaler, ZeRO
    stage and fragment addresses): allowed in weights_only loading, nothing else is."""
    classes = []
    for module, name in (("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                         ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                         ("deepspeed.utils.tensor_fragment", "fragment_address")):
        try:
            classes.append(getattr(import_module(module), name))
        except (ImportError, AttributeError):  # another DeepSpeed version: that class is not used
            continue
    return classes


def verify_checkpoint(path: str | Path) -> None:
    """Refuse a resume checkpoint that holds more than tensors, plain containers and the few
    classes DeepSpeed writes, before anything unpickles it without weights_only (DeepSpeed does);
    name empty, truncated or foreign files."""
    path = Path(path)
    # every file of a DeepSpeed directory: ZeRO's elastic loading reads all ranks' shards
    files = sorted(path.rglob("*.pt")) if path.is_dir() else [path]
    if not files:
        raise CheckpointError(f"{path} holds no checkpoint files (*.pt): not a checkpoint of "
                              "this project")
    allowed = _deepspeed_classes() if path.is_dir() else []  # a DeepSpeed checkpoint directory
    for file in files:
        try:
            safe_torch_load(file, allowed)
        except CheckpointError as err:
            raise CheckpointError(f"cannot resume from {path}: {err}") from None


def trainable_state(state: dict[str, torch.Tensor], trainable: Iterable[str]
                    ) -> dict[str, torch.Tensor]:
    """The entries of a state dict that train (what our checkpoints keep)."""
    keep = set(trainable)
    return {key: value for key, value in state.items() if key in keep}


def check_trainable(state: dict[str, torch.Tensor], trainable: Iterable[str]) -> None:
    """A checkpoint must hold every weight that trains, or it was made for another model."""
    missing = sorted(set(trainable) - set(state))
    if missing:
        raise KeyError(f"the checkpoint lacks trainable weights {missing[:4]}: was it made with "
                       "the same encoder/projector/llm config?")


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint: about what writing it needs."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    return 0


def write_failed(path: str | Path, checkpoint: Any, err: Exception) -> CheckpointError:
    """The error a checkpoint write that failed (a full disk, a size limit) is reported as, with
    the bytes `checkpoint` needs; its partial file removed, the previous one untouched."""
    partial = partial_path(path)
    if os.path.isdir(partial):
        shutil.rmtree(partial, ignore_errors=True)
    elif os.path.exists(partial):
        os.remove(partial)
    cause = err if isinstance(err, OSError) else OSError(str(err).splitlines()[0])
    return CheckpointError(disk_full_message(path, tensor_bytes(checkpoint), cause))
