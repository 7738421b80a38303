"""The built wheel works without the checkout: its console scripts run and its configs compose
(they ship inside the package) from another directory, in a fresh venv."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
    return result


def test_the_wheel_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(REPO)], tmp_path)
    (wheel,) = dist.glob("mooer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mooer/conf/train.yaml" in names and "mooer/conf/experiment/mt5k.yaml" in names
    assert "mooer/conf/task/context/hotwords.yaml" in names  # groups within groups
    assert not any(name.startswith(("tests/", "conf/")) for name in names)

    venv = tmp_path / "venv"  # a fresh venv: the wheel, and the dependencies of this one
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         str(wheel)], tmp_path)
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    tmp_path).stdout.strip())
    # a path entry, not a site dir: this venv's editable finder for the checkout is not loaded
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([str(python), "-c", "import mooer; print(mooer.__file__)"], elsewhere).stdout
    assert where.startswith(str(site)), where  # the installed copy, not the checkout

    usage = run([str(venv / "bin" / "mooer-transcribe"), "--help"], elsewhere).stdout
    assert "--wav_path" in usage and "--max_segment_s" in usage

    (elsewhere / "ref").write_text("a 今天 天气 好\nb hello world\n", encoding="utf-8")
    (elsewhere / "hyp").write_text("a 今天 天气 不 好\nb hello world\n", encoding="utf-8")
    scored = run([str(venv / "bin" / "mooer-score"), "--char", "1", "ref", "hyp"], elsewhere)
    # compute-wer's units: 5 Mandarin characters and 2 English words; 1 insertion
    assert "Overall -> 14.29 % N=7 C=7 S=0 D=0 I=1" in scored.stdout, scored.stdout

    composed = run([str(python), "-c", (
        "from mooer.config import CONF_DIR, compose_config\n"
        "cfg, choices = compose_config('train', ['experiment=mt5k'])\n"
        "print(CONF_DIR, choices['llm'], cfg.llm.lora.r, cfg.data.batch_size)")], elsewhere)
    conf_dir, llm, rank, batch = composed.stdout.split()
    assert conf_dir.startswith(str(site)) and (llm, rank, batch) == ("qwen2_7b", "64", "16")
