"""The training recipe given bad input: a checkpoint that would run code, garbage checkpoints, a run that
would train nothing, config values of the wrong type. Each stops early with a message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mooer.config import compose_config
from tests.conftest import make_tiny_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory, num=8, vocab_size=300)


def fit(tmp_path: Path, data_dir: Path, *overrides: str) -> None:
    """train.py's recipe in this process (an early stop costs no interpreter start-up); a built
    model fails the test where the run must stop before it."""
    from mooer.training.run import _fit

    cfg, _ = compose_config("train", ["experiment=tiny", f"paths.data_dir={data_dir}",
                                      "trainer.enable_progress_bar=false",
                                      "llm.architecture.vocab_size=300", *overrides],
                            output_dir=str(tmp_path / "run"))
    _fit(cfg)


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def no_model(monkeypatch):
    import mooer.models.build

    def built(*_args, **_kwargs):
        raise AssertionError("the model was built before the bad input was noticed")

    monkeypatch.setattr(mooer.models.build, "build_speech_llm", built)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, data_dir, monkeypatch, no_model):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, evil)
    # the environment variable that turns torch's default weights_only off must not matter
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(SystemExit, match=r"holds objects that are not weights \(posix.system\)"):
        fit(tmp_path, data_dir, f"ckpt_path={evil}")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint"])
def test_an_empty_or_garbage_checkpoint_gets_a_message(tmp_path, data_dir, content, no_model):
    bad = tmp_path / "run" / "checkpoints" / "last.ckpt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(content)
    with pytest.raises(SystemExit) as stopped:
        fit(tmp_path, data_dir, "ckpt_path=last")
    message = str(stopped.value)
    assert "is not a readable checkpoint: empty, truncated" in message
    assert "weights_only=False" not in message


def test_a_run_that_would_train_nothing_stops_with_the_reason(tmp_path, data_dir):
    with pytest.raises(SystemExit, match=r"gave no batch to train on \(filtered by length: 8\)"):
        fit(tmp_path, data_dir, "data.min_length=100000", "data.max_length=200000")
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_every_shard_missing_stops_the_run(tmp_path, data_dir):
    data_list = tmp_path / "data.list"
    data_list.write_text(f"{tmp_path}/missing_0.tar\n{tmp_path}/missing_1.tar\n")
    with pytest.raises(SystemExit, match=r"gave no batch to train on \(unreadable shard: 2\)"):
        fit(tmp_path, data_dir, f"data.train_data_path={data_list}")


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_steps=abc", "trainer.max_steps must be a number, got 'abc'"),
    ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
])
def test_wrong_values_stop_before_the_model_is_built(tmp_path, data_dir, override, message,
                                                     no_model):
    with pytest.raises(BaseException, match=message):  # SystemExit, or the data error
        fit(tmp_path, data_dir, override)


def test_ranks_from_a_launcher_need_one_run_dir(monkeypatch, tmp_path):
    from mooer.training.run import require_shared_run_dir

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun, SLURM or DeepSpeed's launcher set it
    compose_config("train", ["experiment=tiny"])
    with pytest.raises(SystemExit, match="2 ranks were launched without hydra.run.dir"):
        require_shared_run_dir()
    compose_config("train", ["experiment=tiny", f"hydra.run.dir={tmp_path}"])
    require_shared_run_dir()  # one directory given: every rank writes there
