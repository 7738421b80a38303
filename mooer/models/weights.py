"""Loading user-supplied weight files safely, with errors that say what to do."""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A weight file that is missing, unreadable, or does not fit the model."""


def safe_torch_load(path: str | Path, allowed: Sequence[type] = (), mmap: bool = False) -> Any:
    """torch.load with weights_only=True (tensors, plain containers and the `allowed` classes): a
    pickle that would call anything else is refused, never run. `mmap`: tensors are mapped from
    the file, read only when touched (for a look at a checkpoint's metadata)."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # not a pickle stream at all
            raise CheckpointError(f"{path} is not a readable checkpoint: empty, truncated or not "
                                  "written by torch.save (not a pickle)") from None
        raise CheckpointError(f"{path} holds objects that are not weights ({found.group(1)}): "
                              "refused, since unpickling them could run code. Use checkpoints "
                              "this project or MooER wrote") from None
    except Exception as err:  # corrupt archives raise many kinds of errors
        raise CheckpointError(f"{path} is not a readable checkpoint: empty, truncated or not "
                              f"written by torch.save ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from `.pt`/`.pth`/`.bin` (weights_only) or `.safetensors`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file {path} not found")
    if path.suffix != ".safetensors":
        state = safe_torch_load(path)
    else:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # corrupt archives raise many kinds of errors
            raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: "
                                  f"{err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with a readable report of missing/unexpected/mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

        parts = [f"{source} does not fit {type(module).__name__}:"]
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {show(shapes)}")
        parts.append("check that the config (sizes, number of blocks) matches the checkpoint")
        raise CheckpointError("\n  ".join(parts))
    module.load_state_dict(state, strict=True)
