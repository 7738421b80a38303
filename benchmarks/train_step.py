"""Training-step overhead: our Lightning module against a bare PyTorch loop on the same tiny
model and batches, in one run.

    python benchmarks/train_step.py [--steps 210] [--warmup 10] [--repeats 3]

The Lightning side trains as train.py does: CSV logger every 10 steps, MooER's log line every 100.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from mooer.config import compose_config
from mooer.data.datamodule import SpeechDataModule
from mooer.data.features import ParaformerFrontend
from mooer.models.build import build_speech_llm
from mooer.models.llm import load_tokenizer

# conf/module with experiment=tiny's AdamW, a cosine schedule over 1,000 steps
MODULE = ["module.scheduler.warmup_steps=10", "module.scheduler.total_steps=1000"]


class StepTimer(pl.Callback):
    """The start of every training batch: consecutive starts bound one whole loop iteration
    (data, transfer, hooks, step, logging)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, module) -> None:
        self.starts.append(time.perf_counter())


def step_times(starts: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(starts[warmup:], starts[warmup + 1:], strict=False)]


def build(data_dir: Path):
    cfg, _ = compose_config("train", ["experiment=tiny", f"paths.data_dir={data_dir}", *MODULE])
    torch.manual_seed(0)
    tokenizer = load_tokenizer(cfg.llm.tokenizer_path)
    return build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, tokenizer), cfg, tokenizer


def bare_loop(data_dir: Path, batches: list, warmup: int) -> list[float]:
    """Seconds of each step after `warmup` in a plain PyTorch loop."""
    model, cfg, _ = build(data_dir)
    module = instantiate(cfg.module, model=model, log_interval=0, _convert_="all")
    optimizer_config = module.configure_optimizers()
    optimizer = optimizer_config["optimizer"]
    scheduler = optimizer_config["lr_scheduler"]["scheduler"]
    model.train()
    starts = []
    for batch in DataLoader(batches, batch_size=None):  # the same loader Lightning gets
        starts.append(time.perf_counter())
        model(batch)["loss"].backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    starts.append(time.perf_counter())
    return step_times(starts, warmup)


def lightning_loop(data_dir: Path, batches: list, warmup: int, steps: int) -> list[float]:
    """Seconds of each step after `warmup` through our LightningModule and a Trainer."""
    model, cfg, _ = build(data_dir)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as log_dir:  # logging as in training: CSV every 10 steps
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps,
                             logger=CSVLogger(log_dir), log_every_n_steps=10,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0)
        trainer.fit(instantiate(cfg.module, model=model, log_interval=100, _convert_="all"),
                    train_dataloaders=DataLoader(batches, batch_size=None))
    return step_times(timer.starts, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=210)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data_dir", type=Path, default=Path("/tmp/mooer-bench-train"))
    args = parser.parse_args()
    cfg, _ = compose_config("train", ["experiment=tiny", f"paths.data_dir={args.data_dir}",
                                      "prepare_data.num=64"])
    instantiate(cfg.prepare_data)
    _, cfg, tokenizer = build(args.data_dir)
    dm = SpeechDataModule(ParaformerFrontend(None), tokenizer, instantiate(cfg.task),
                          train_data_path=cfg.data.train_data_path, batch_size=8, min_length=0)
    batches = [b for b in dm.loader("train")] * (args.steps // 8 + 2)
    batches = batches[: args.steps]
    timed = args.steps - args.warmup

    bare_times, our_times = [], []
    for _ in range(args.repeats):  # interleaved, and the median step: robust to a noisy machine
        bare_times += bare_loop(args.data_dir, batches, args.warmup)
        our_times += lightning_loop(args.data_dir, batches, args.warmup, args.steps)
    bare, ours = statistics.median(bare_times), statistics.median(our_times)
    bare_mean, ours_mean = statistics.mean(bare_times), statistics.mean(our_times)
    print(f"\ntiny model, batch 8, {timed} timed steps after {args.warmup} warm-up steps, "
          f"{args.repeats} interleaved runs of each\n")
    print("| loop | median ms/step | overhead | mean ms/step | overhead |\n|---|---|---|---|---|")
    print(f"| bare PyTorch | {bare * 1000:.2f} | - | {bare_mean * 1000:.2f} | - |")
    print(f"| mooer Lightning module | {ours * 1000:.2f} | {ours / bare - 1:+.1%} "
          f"| {ours_mean * 1000:.2f} | {ours_mean / bare_mean - 1:+.1%} |")

if __name__ == "__main__":
    main()
