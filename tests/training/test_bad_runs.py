"""train.py given bad input: a checkpoint that would run code, garbage checkpoints, a run that
would train nothing, config values of the wrong type. Each stops early with a message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from mooer.demo.prepare import ensure_demo_data

    path = tmp_path_factory.mktemp("data")
    ensure_demo_data(path / "tiny", num=8, seed=0, vocab_size=300)
    return path


def train(run_dir: Path, data_dir: Path, *overrides: str, env: dict | None = None
          ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", "experiment=tiny", f"paths.data_dir={data_dir}",
         "trainer.enable_progress_bar=false", "llm.architecture.vocab_size=300",
         f"hydra.run.dir={run_dir}", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, data_dir):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, evil)
    # the environment variable that turns torch's default weights_only off must not matter
    result = train(tmp_path / "run", data_dir, f"ckpt_path={evil}",
                   env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert result.returncode != 0
    assert "holds objects that are not weights (posix.system)" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint"])
def test_an_empty_or_garbage_checkpoint_gets_a_message(tmp_path, data_dir, content):
    bad = tmp_path / "checkpoints" / "last.ckpt"
    bad.parent.mkdir()
    bad.write_bytes(content)
    result = train(tmp_path, data_dir, "ckpt_path=last")
    assert result.returncode != 0
    assert "is not a readable checkpoint: empty, truncated" in result.stderr
    assert "weights_only=False" not in result.stderr and "EOFError\n" not in result.stderr


def test_a_run_that_would_train_nothing_stops_with_the_reason(tmp_path, data_dir):
    result = train(tmp_path / "run", data_dir, "data.min_length=100000", "data.max_length=200000")
    assert result.returncode != 0
    assert "gave no batch to train on (filtered by length: 8)" in result.stderr
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_every_shard_missing_stops_the_run(tmp_path, data_dir):
    data_list = tmp_path / "data.list"
    data_list.write_text(f"{tmp_path}/missing_0.tar\n{tmp_path}/missing_1.tar\n")
    result = train(tmp_path / "run", data_dir, f"data.train_data_path={data_list}")
    assert result.returncode != 0
    assert "gave no batch to train on (unreadable shard: 2)" in result.stderr


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_steps=abc", "trainer.max_steps must be a number, got 'abc'"),
    ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
])
def test_wrong_values_stop_before_the_model_is_built(tmp_path, data_dir, override, message):
    result = train(tmp_path / "run", data_dir, override)
    assert result.returncode != 0 and message in result.stderr
    assert "Trainable params" not in result.stdout + result.stderr
