"""Decode and score test sets: python evaluate.py testsets=[aishell,test-clean]."""

import hydra
from omegaconf import DictConfig

from mooer.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from mooer.evaluation.run import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
