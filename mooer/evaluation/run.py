"""The evaluation recipe behind evaluate.py."""

from __future__ import annotations

from omegaconf import DictConfig


def evaluate(cfg: DictConfig) -> None:
    """Decode and score every configured test set."""
    raise SystemExit(
        "mooer: decoding and scoring are not part of this release yet. "
        "`python evaluate.py --cfg job ...` prints the composed configuration."
    )
