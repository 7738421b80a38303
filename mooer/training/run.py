"""The training recipe behind train.py."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def train(cfg: DictConfig) -> float | None:
    """Fit the configured model; returns the metric a sweeper optimizes."""
    if cfg.dry_run:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return None
    raise SystemExit(
        "mooer: the training loop is not part of this release yet. "
        "`python train.py dry_run=true ...` composes, resolves and prints the configuration."
    )
