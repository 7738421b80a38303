"""Hydra/OmegaConf helpers shared by the entry points, notebooks, benchmarks and tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

# the Hydra groups ship inside the package (in the wheel too); the checkout's top-level conf/ is a
# link to them, for train.py and evaluate.py
CONF_DIR = Path(__file__).resolve().parent / "conf"


def as_dict(node: Any) -> dict[str, Any]:
    """A config node as a plain dict, resolved (for `**` and `.pop`)."""
    container = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    if not isinstance(container, dict):
        raise TypeError(f"expected a mapping in the config, got {type(container).__name__}")
    return {str(key): value for key, value in container.items()}


def as_config(node: Any) -> DictConfig:
    """`node` (a mapping) as a DictConfig."""
    config = node if isinstance(node, DictConfig) else OmegaConf.create(node)
    if not isinstance(config, DictConfig):
        raise TypeError(f"expected a mapping in the config, got {type(config).__name__}")
    return config


def register_resolvers() -> None:
    """Register the resolvers the configs use (`${not:...}`); safe to call more than once."""
    if not OmegaConf.has_resolver("not"):
        OmegaConf.register_new_resolver("not", lambda value: not value)


def compose_config(config_name: str = "train", overrides: Sequence[str] = (),
                   output_dir: str = "outputs/compose") -> tuple[DictConfig, dict[str, str]]:
    """Compose `conf/<config_name>.yaml` with overrides outside a Hydra run, fully resolved.

    Returns the config without its `hydra` node and the chosen option of every group.
    """
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = output_dir
    HydraConfig.instance().set_config(cfg)  # serves ${hydra:...} interpolations
    choices = {str(group): str(option) for group, option in cfg.hydra.runtime.choices.items()}
    with open_dict(cfg):
        del cfg["hydra"]
    return as_config(as_dict(cfg)), choices


def task_options() -> list[str]:
    """The prompt formats of `conf/task`."""
    return sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))


def task_config(task: str = "asr", run_dir: str | Path | None = None) -> DictConfig:
    """The prompt format's config (instantiate it for a PromptFormat): `conf/task/<task>.yaml`
    as composed for training, or the one a training run recorded in its run dir."""
    if run_dir is None:
        return as_config(compose_config("train", [f"task={task}"])[0].task)
    return as_config(as_dict(run_config(run_dir).task))


def run_config(run_dir: str | Path) -> DictConfig:
    """The config a training run recorded (`<run_dir>/.hydra/config.yaml`), unresolved."""
    saved = Path(run_dir) / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"run_dir {run_dir} has no .hydra/config.yaml: give the "
                                "directory a `python train.py` run wrote")
    register_resolvers()
    return as_config(OmegaConf.load(saved))
