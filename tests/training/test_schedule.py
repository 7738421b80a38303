"""Learning-rate schedules: DeepSpeed's WarmupDecayLR semantics and the cosine."""

from __future__ import annotations

import math

import pytest
import torch

from mooer.training.schedule import make_schedule, warmup_cosine, warmup_decay


@pytest.mark.parametrize("warmup_type", ["log", "linear"])
def test_warmup_decay_matches_deepspeed(warmup_type):
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-4)
    reference = WarmupDecayLR(optimizer, total_num_steps=200, warmup_min_lr=0.0,
                              warmup_max_lr=1e-4, warmup_num_steps=50, warmup_type=warmup_type)
    factor = warmup_decay(50, 200, warmup_type)
    for step in range(0, 200):
        reference.step(step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * factor(step), abs=1e-12)


def test_mt5k_schedule_shape():
    factor = make_schedule("warmup_decay", 1000, 1_000_000)
    assert factor(0) == 0.0 and factor(999) == pytest.approx(1.0, abs=1e-3)
    assert factor(1000) == 1.0
    assert factor(500_500) == pytest.approx(0.5, abs=1e-6)
    assert factor(1_000_000) == 0.0


def test_cosine_and_constant():
    factor = warmup_cosine(10, 110, min_ratio=0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(110) == pytest.approx(0.1)
    assert make_schedule("constant", 0, 1)(12345) == 1.0
    with pytest.raises(ValueError, match="unknown module.scheduler.name"):
        make_schedule("step", 1, 2)
