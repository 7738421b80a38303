"""Multirun sweeps whose jobs start several processes.

With `trainer.devices=N` and no external launcher, Lightning starts ranks 1..N-1 by re-running
`sys.argv`. Inside a sweep (`python train.py -m llm.lora.r=8,16 trainer.devices=2 ...`) that
command is the whole sweep, so each child starts a sweep of its own; and the launch leaves rank
variables (LOCAL_RANK, WORLD_SIZE, ...), a process group and DeepSpeed's groups behind, so the next
job in the same process takes itself for a rank of torchrun and waits for ranks that never come.

So each multirun job runs as a fresh single run in its own process: the job's overrides, the
job's directory. Lightning then launches that run's other ranks as it does for any single run,
and the job leaves nothing behind in the sweep's process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd, to_absolute_path

RESULT_FILE = "fit_result.json"

# Hydra settings the job's own process must not inherit from the sweep
_SWEEP_ONLY = ("hydra.mode", "hydra.sweep.", "hydra.run.dir", "hydra.output_subdir",
               "hydra/sweeper", "hydra/launcher")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def isolate_job() -> bool:
    """True in a multirun job started by Hydra itself (not a rank started by torchrun/SLURM)."""
    return in_multirun() and "LOCAL_RANK" not in os.environ and "RANK" not in os.environ


def _quoted(value: str) -> str:
    """A Hydra override value in double quotes (backslash and quote escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def job_command() -> tuple[list[str], str]:
    """The command line (and working directory) that runs the current multirun job alone."""
    import __main__  # the script Hydra runs (train.py): resolved when the job is run

    config = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    for source in config.runtime.config_sources:
        if source.provider == "command-line":
            command += ["--config-dir", source.path.removeprefix("file://")]
    if config.job.config_name:
        command += ["--config-name", config.job.config_name]
    command += list(config.overrides.task)
    command += [o for o in config.overrides.hydra if not o.startswith(_SWEEP_ONLY)]
    # the sweep already wrote the job's .hydra/ (config, overrides) in that directory
    command += [f"hydra.run.dir={_quoted(config.runtime.output_dir)}", "hydra.output_subdir=null"]
    return command, get_original_cwd()


def run_job_in_subprocess() -> float | None:
    """Run the current multirun job as a single run in a new process; its validation loss."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    command, cwd = job_command()
    result = subprocess.run(command, cwd=cwd)
    if result.returncode:
        raise RuntimeError(f"sweep job in {output_dir} failed (exit {result.returncode}); "
                           f"its log: {output_dir / (HydraConfig.get().job.name + '.log')}")
    return read_result(output_dir)


def write_result(output_dir: Path, val_loss: float | None) -> None:
    (output_dir / RESULT_FILE).write_text(json.dumps({"val_loss": val_loss}) + "\n")


def read_result(output_dir: Path) -> float | None:
    path = output_dir / RESULT_FILE
    return json.loads(path.read_text())["val_loss"] if path.is_file() else None
