"""Training-step overhead: our Lightning module against a bare PyTorch loop on the same tiny
model and batches, in one run.

    python benchmarks/train_step.py [--steps 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from mooer.config import compose_config
from mooer.data.datamodule import SpeechDataModule
from mooer.data.features import ParaformerFrontend
from mooer.demo.prepare import ensure_demo_data
from mooer.models.build import build_speech_llm
from mooer.models.llm import load_tokenizer
from mooer.training.module import SpeechLLMModule

OPTIM = {"name": "adamw", "lr": 1e-3, "scheduler": "cosine", "warmup_steps": 10,
         "total_steps": 1000}


class StepTimer(pl.Callback):
    """Wall time of the steps after `warmup`."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.started, self.elapsed = warmup, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.started = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        self.elapsed = time.perf_counter() - self.started


def build(data_dir: Path):
    cfg, _ = compose_config("train", ["experiment=tiny", f"paths.data_dir={data_dir}"])
    torch.manual_seed(0)
    tokenizer = load_tokenizer(cfg.llm.tokenizer_path)
    return build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, tokenizer), cfg, tokenizer


def bare_loop(data_dir: Path, batches: list, warmup: int) -> float:
    """Seconds of the steps after `warmup` in a plain PyTorch loop."""
    model, _, _ = build(data_dir)
    module = SpeechLLMModule(model, OPTIM, log_interval=0)
    optimizer_config = module.configure_optimizers()
    optimizer = optimizer_config["optimizer"]
    scheduler = optimizer_config["lr_scheduler"]["scheduler"]
    model.train()
    for index, batch in enumerate(batches):
        if index == warmup:
            started = time.perf_counter()
        model(batch)["loss"].backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def lightning_loop(data_dir: Path, batches: list, warmup: int, steps: int) -> float:
    """Seconds of the steps after `warmup` through our LightningModule and a Trainer."""
    model, _, _ = build(data_dir)
    timer = StepTimer(warmup)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(SpeechLLMModule(model, OPTIM, log_interval=0),
                train_dataloaders=DataLoader(batches, batch_size=None))
    return timer.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data_dir", type=Path, default=Path("/tmp/mooer-bench-train"))
    args = parser.parse_args()
    ensure_demo_data(args.data_dir / "tiny", num=64, seed=0, vocab_size=400)
    _, cfg, tokenizer = build(args.data_dir)
    dm = SpeechDataModule(ParaformerFrontend(None), tokenizer,
                          train_data_path=cfg.data.train_data_path, batch_size=8, min_length=0)
    batches = [b for b in dm.loader("train")] * (args.steps // 8 + 2)
    batches = batches[: args.steps]
    timed = args.steps - args.warmup

    bare_times, our_times = [], []
    for _ in range(args.repeats):  # interleaved, best of each: robust to a noisy machine
        bare_times.append(bare_loop(args.data_dir, batches, args.warmup) / timed)
        our_times.append(lightning_loop(args.data_dir, batches, args.warmup, args.steps) / timed)
    bare, ours = min(bare_times), min(our_times)
    print(f"\ntiny model, batch 8, {timed} timed steps after {args.warmup} warm-up steps, "
          f"best of {args.repeats} interleaved runs\n")
    print("| loop | ms/step | overhead |\n|---|---|---|")
    print(f"| bare PyTorch | {bare * 1000:.1f} | - |")
    print(f"| mooer Lightning module | {ours * 1000:.1f} | {ours / bare - 1:+.1%} |")


if __name__ == "__main__":
    main()
