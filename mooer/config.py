"""Hydra/OmegaConf helpers shared by the entry points."""

from __future__ import annotations

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """Register the resolvers the configs use (`${not:...}`); safe to call more than once."""
    if not OmegaConf.has_resolver("not"):
        OmegaConf.register_new_resolver("not", lambda value: not value)
