"""What the benchmarks on a trained demo model share: its `--run_dir`/`--data_dir` arguments,
the check that the demo was trained, and its Recognizer on the CPU.

    from demo_model import add_demo_arguments, demo_kaldi, demo_recognizer, require_run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mooer.config import compose_config
from mooer.inference.loading import apply_run_dir
from mooer.inference.recognizer import Recognizer


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """--run_dir (the demo's training run) and --data_dir (its synthesized data)."""
    parser.add_argument("--run_dir", type=Path, default=Path("demo_out/run"))
    parser.add_argument("--data_dir", type=Path, default=Path("demo_out/data"))


def require_run(args: argparse.Namespace) -> None:
    """Exits saying to run `make demo` when --run_dir holds no trained model."""
    if not (args.run_dir / "checkpoints" / "last.ckpt").is_file():
        sys.exit(f"no trained demo in {args.run_dir}: run `make demo` first")


def demo_kaldi(args: argparse.Namespace, name: str = "") -> Path:
    """The demo's Kaldi dirs (`<data_dir>/demo/kaldi`, or its set `name`); exits saying to run
    `make demo` when the run or the data is missing."""
    require_run(args)
    kaldi = args.data_dir / "demo" / "kaldi" / name
    if not kaldi.is_dir():
        sys.exit(f"no demo data in {kaldi}: run `make demo` first")
    return kaldi


def demo_recognizer(args: argparse.Namespace, batch_size: int, decoding: dict[str, Any],
                    *overrides: str) -> Recognizer:
    """The demo run's model (its config and last checkpoint, and evaluate.py `overrides`) on
    the CPU in fp32."""
    cfg = apply_run_dir(compose_config("evaluate", [f"run_dir={args.run_dir}",
                                                    f"paths.data_dir={args.data_dir}",
                                                    *overrides])[0])
    return Recognizer.from_config(cfg, "cpu", "fp32", batch_size, decoding)
