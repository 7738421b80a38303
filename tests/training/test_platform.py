"""MUSA support against a CPU-backed fake torch_musa, and atomic checkpoint writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mooer.training.callbacks import AtomicCheckpointIO
from tests.conftest import REPO

FAKE_TORCH_MUSA = '''
"""A stand-in for Moore Threads' torch_musa: `musa` devices backed by the CPU."""
import types
import torch

torch.utils.rename_privateuse1_backend("musa")
torch.musa = types.SimpleNamespace(
    is_available=lambda: True, device_count=lambda: 2, set_device=lambda device: None,
    memory_allocated=lambda device=None: 0, empty_cache=lambda: None)
'''

CHECK = '''
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import AcceleratorRegistry
from mooer.training.accelerators import MUSAAccelerator, register_musa
from mooer.training.strategies import DeepSpeedAnyDeviceStrategy, set_deepspeed_accelerator

assert register_musa() and "musa" in AcceleratorRegistry
assert MUSAAccelerator.is_available() and MUSAAccelerator.auto_device_count() == 2
assert MUSAAccelerator.parse_devices(-1) == [0, 1]
assert MUSAAccelerator.get_parallel_devices([0, 1]) == [torch.device("musa", 0),
                                                        torch.device("musa", 1)]
try:
    MUSAAccelerator.parse_devices(3)
except ValueError as err:
    assert "only 2 are visible" in str(err)
else:
    raise AssertionError("3 devices accepted")
trainer = Trainer(accelerator="musa", devices=2, strategy="ddp", logger=False)
assert trainer.strategy.parallel_devices == [torch.device("musa", 0), torch.device("musa", 1)]
strategy = DeepSpeedAnyDeviceStrategy(stage=2)
strategy.parallel_devices = [torch.device("musa", 0)]
assert strategy._get_process_group_backend() == "mccl"
try:
    set_deepspeed_accelerator("musa")
except RuntimeError as err:
    assert "no MUSA accelerator" in str(err) and "Moore Threads" in str(err)
else:
    raise AssertionError("upstream DeepSpeed accepted musa")
print("musa ok")
'''


def test_musa_accelerator_with_fake_torch_musa(tmp_path):
    (tmp_path / "torch_musa").mkdir()
    (tmp_path / "torch_musa" / "__init__.py").write_text(FAKE_TORCH_MUSA)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(CHECK)], cwd=REPO,
                            env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "musa ok" in result.stdout


def test_without_torch_musa_nothing_registers():
    from mooer.training.accelerators import register_musa

    assert register_musa() is False


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def dying_write(self, checkpoint, target, storage_options=None):
        with open(target, "wb") as handle:  # killed half way through writing the file
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", dying_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_a_full_disk_during_a_save_names_the_path_and_keeps_the_previous_checkpoint(tmp_path):
    """A file size limit (RLIMIT_FSIZE, in a process of its own) stands for the full disk: the
    save fails with the path and the bytes it needed; the checkpoint saved before stays whole
    and loads; no partial file is left."""
    path = tmp_path / "last.ckpt"
    script = f"""
import resource, signal, torch
from mooer.models.weights import CheckpointError
from mooer.training.callbacks import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({{"state_dict": {{"w": torch.ones(1000)}}}}, {str(path)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails, not the process
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    io.save_checkpoint({{"state_dict": {{"w": torch.ones(2_000_000)}}}}, {str(path)!r})
except CheckpointError as err:
    print("ERROR:", err)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"ERROR: could not write {path}: " in result.stdout, result.stdout
    assert "about 7.6 MB needed" in result.stdout  # 2,000,000 fp32 weights
    assert "the previous file under that name, if any, is untouched" in result.stdout
    state = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(state["w"], torch.ones(1000))
    assert not list(tmp_path.glob("*.partial"))
