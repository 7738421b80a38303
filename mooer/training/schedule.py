"""Learning-rate schedules as multipliers of the peak lr, for torch's LambdaLR."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def warmup_decay(warmup_steps: int, total_steps: int, warmup_type: str = "log",
                 min_ratio: float = 0.0) -> Callable[[int], float]:
    """DeepSpeed's WarmupDecayLR: warm up over `warmup_steps` (log, as DeepSpeed's default, or
    linear), then decay linearly to `min_ratio` at `total_steps`."""
    if warmup_type not in ("log", "linear"):
        raise ValueError(f"warmup_type is log or linear, got {warmup_type!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            if warmup_type == "log":
                gamma = math.log(step + 1) / math.log(warmup_steps) if warmup_steps > 1 else 1.0
            else:
                gamma = step / warmup_steps
            return min_ratio + (1 - min_ratio) * gamma
        remaining = max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * remaining

    return factor


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0
                  ) -> Callable[[int], float]:
    """Linear warmup, then a cosine from 1 down to `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def lr_schedule(optimizer: torch.optim.Optimizer, name: str = "warmup_decay",
                warmup_steps: int = 0, total_steps: int = 1, warmup_type: str = "log",
                min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """`module.scheduler`: the named schedule over `optimizer`, stepped every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, make_schedule(name, warmup_steps, total_steps, warmup_type, min_lr_ratio))


def make_schedule(name: str, warmup_steps: int, total_steps: int, warmup_type: str = "log",
                  min_ratio: float = 0.0) -> Callable[[int], float]:
    """The multiplier of the schedule named `name`: warmup_decay, cosine or constant."""
    if name == "warmup_decay":
        return warmup_decay(warmup_steps, total_steps, warmup_type, min_ratio)
    if name == "cosine":
        return warmup_cosine(warmup_steps, total_steps, min_ratio)
    if name == "constant":
        return lambda step: 1.0
    raise ValueError(f"unknown module.scheduler.name {name!r}: warmup_decay, cosine or constant")
