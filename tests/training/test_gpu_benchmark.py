"""benchmarks/gpu.py at tiny shapes on the CPU: every row of the GPU table is produced."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_benchmark_runs_at_tiny_shapes_on_the_cpu():
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--tiny", "--device", "cpu", "--steps", "2",
         "--warmup", "1", "--tail_utterances", "16", "--new_tokens", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:]
            for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    for name in ("auto, SDPA", "auto, SDPA, gradient checkpointing",
                 "auto, SDPA, with the old .nonzero() host sync", "auto, SDPA, LoRA dropout off",
                 "auto, SDPA, micro-batch 16", "zero2, one rank, SDPA"):
        samples, audio, tokens = (float(v) for v in rows[name][:3])
        assert samples > 0 and audio == pytest.approx(samples * 10, rel=0.01) and tokens > audio
    assert "not available" in rows["auto, FlashAttention 2"][-1] or float(
        rows["auto, FlashAttention 2"][0]) > 0
    bucketed = next(name for name in rows if name.startswith("bucketed dynamic"))
    assert int(re.search(r"(\d+)% frames real", bucketed).group(1)) >= 90
    for batch_size in (1, 16):
        for merged in ("", ", LoRA merged"):
            decode = rows[f"decode, beam 4, batch {batch_size}, 4 new tokens{merged}"]
            assert float(decode[5]) > 0 and float(decode[6]) > 0  # RTF, utt/s
