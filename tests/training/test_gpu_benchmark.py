"""benchmarks/gpu.py at tiny shapes on the CPU: every row the CPU can run (hotword decoding
too), the JSON it writes, and its two checks (the FLOP formula against FlopCounterMode, packed
against padded losses)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_benchmark_runs_every_row_at_tiny_shapes_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--tiny", "--device", "cpu", "--steps", "2",
         "--warmup", "1", "--repeats", "2", "--tail_utterances", "40", "--new_tokens", "4",
         "--row_tokens", "256", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["flop_counter_ratio"] == pytest.approx(1.0, abs=0.03)
    assert report["packed_vs_padded_max_abs_diff"] < 1e-5
    rows = {row["name"]: row for row in report["rows"]}
    training = [row for row in rows.values() if row["kind"] == "train"]
    assert [row["name"] for row in training] == [
        "lightning, auto, bf16-mixed (recipe)", "lightning, auto, bf16-mixed, micro-batch 16 x 1",
        "lightning, auto, bf16-mixed, compiled regions", "bare loop, autocast, fused optimizer",
        "lightning, zero2, bf16-mixed (MooER's strategy)"]
    for row in training:
        assert not row["note"].startswith("failed"), row
        assert len(row["samples_per_s_repeats"]) == 2 and row["samples_per_s"] > 0
        # 10 s a sample, 83 audio slots + 28 prompt + 30 answer tokens, no padding
        assert row["audio_s_per_s"] == pytest.approx(10 * row["samples_per_s"], rel=1e-6)
        assert row["real_tokens_per_s"] == pytest.approx(141 * row["samples_per_s"], rel=1e-6)
        assert row["answer_tokens_per_s"] == pytest.approx(30 * row["samples_per_s"], rel=1e-6)
        assert row["token_efficiency"] == 1.0 and row["flops_per_sample"] > 0
        assert "mfu" in row  # NaN on the CPU: no peak to divide by
    assert rows["lightning, auto, bf16-mixed, compiled regions"]["warmup_and_compile_s"] > 0
    tail = {name.split(",")[1].split()[0]: row for name, row in rows.items()
            if row["kind"] == "tail"}
    assert set(tail) == {"fixed", "bucketed", "packed"}
    # packing and bucketing pad less than fixed batches of the same utterances
    assert tail["packed"]["token_efficiency"] > tail["fixed"]["token_efficiency"]
    assert tail["bucketed"]["frame_efficiency"] > tail["fixed"]["frame_efficiency"]
    decoding = [row for row in rows.values() if row["kind"] == "decode"]
    assert len(decoding) == 4
    for row in decoding:  # rtf = time / (batch x 10 s of audio), within the run's wall time
        batch = int(row["name"].split("batch ")[1].split(",")[0])
        assert row["rtf"] * row["utterances_per_s"] == pytest.approx(1 / 10, rel=1e-6)
        assert 0 < row["rtf"] < wall / (batch * 10)
    hotwords = [row for row in rows.values() if row["kind"] == "hotwords"]
    cached = hotwords.pop()  # rewriting's decoder pass over the decoding's prompt cache
    assert cached["name"].startswith("rewriting's decoder pass") and "failed" not in cached["note"]
    assert len(cached["cached_vs_again_repeats"]) == 2 and cached["seconds_cached"] > 0
    assert cached["max_abs_diff"] < 1e-4  # the same log-probabilities (fp32 here)
    copied = hotwords.pop()  # the CTC posteriors to the host: whole, or the columns read
    assert copied["name"].startswith("CTC posteriors to the host") and copied["same"] is True
    assert len(copied["columns_vs_whole_repeats"]) == 2 and copied["seconds_columns"] > 0
    assert copied["columns"] < copied["classes"]
    assert [row["name"].split("batch 16, ")[1] for row in hotwords] == [
        "no list", "heard words + 100 distractors, checked and rewritten (default)",
        "heard words + 100 distractors, checked",
        "100 distractors only, checked and rewritten (default)", "100 distractors only, checked",
        "5000 random words, unchecked (a model without a CTC head)"]
    assert hotwords[0]["vs_no_list"] == 1.0
    for row in hotwords:
        assert not row["note"].startswith("failed"), row
        for rtf, per_second in zip(row["rtf_repeats"], row["utterances_per_s_repeats"],
                                   strict=True):
            assert rtf * per_second == pytest.approx(1 / 10, rel=1e-6)
        assert len(row["vs_no_list_repeats"]) == 2 and row["vs_no_list"] > 0
    # the words on the CTC head's own best path are heard in every row; random pairs, on a
    # head as peaked as a trained one, are biased in none
    assert [(row["words"], row["rows_checked"], row["rows_tried"]) for row in hotwords[1:3]] \
        == [(148, 16, 16)] * 2
    assert all(row["words"] == 100 and row["rows_checked"] == 0 for row in hotwords[3:5])
    assert hotwords[5]["words"] == 5000 and "every row biased" in hotwords[5]["note"]
    assert "| lightning, auto, bf16-mixed (recipe) |" in result.stdout
