"""The validation error rate as a torchmetrics Metric: Lightning sums it over ranks and resets it."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchmetrics import Metric

from mooer.evaluation.scoring import score


class ErrorRate(Metric):
    """100 x errors / reference tokens, counted as `mooer-score` counts them (MooER's
    compute-wer.py --char=1). Per-utterance counts add up, so updating batch by batch and summing
    over ranks gives the figure scoring everything at once gives."""

    higher_is_better = False
    full_state_update = False

    errors: torch.Tensor
    reference_tokens: torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("errors", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("reference_tokens", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, references: Mapping[str, str], hypotheses: Mapping[str, str]) -> None:
        total = score(dict(references), dict(hypotheses)).total
        self.errors += total.errors
        self.reference_tokens += total.num_ref

    def compute(self) -> torch.Tensor:
        return 100 * self.errors.float() / self.reference_tokens.clamp_min(1)
