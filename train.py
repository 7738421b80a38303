"""Train a speech LLM: python train.py encoder=paraformer llm=qwen2_7b [experiment=mt5k]."""

import hydra
from omegaconf import DictConfig

from mooer.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from mooer.training.run import train

    return train(cfg)


if __name__ == "__main__":
    main()
