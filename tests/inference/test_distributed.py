"""Decoding on several processes (gloo, on the CPU): each rank a share dealt by duration, rank 0
writing what one process writes, byte for byte; a failing rank stops the run with its error."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mooer.data.text import read_table
from mooer.inference.distributed import deal_by_duration, free_port, launch_ranks
from tests.conftest import REPO, TINY
from tests.evaluation.test_evaluate import overrides

pytestmark = pytest.mark.slow


def test_deal_by_duration_balances_the_audio_and_deals_each_item_once():
    items = [(f"u{i}", float(s)) for i, s in enumerate([9, 1, 1, 1, 4, 4, 3, 3, 2, 2, 6, 5])]
    shares = deal_by_duration(items, 3)
    assert sorted(k for share in shares for k in share) == sorted(k for k, _ in items)
    totals = [sum(dict(items)[k] for k in share) for share in shares]
    # longest first to the lightest rank: 9; 6; 5; 4->r2; 4->r1; 3->r0; 3->r2; 2->r1; 2->r0;
    # 1->r1; 1->r2; 1->r1 (ties to the lower rank)
    assert totals == [14.0, 14.0, 13.0]
    order = [k for k, _ in items]  # each share keeps the items' own order
    assert all(share == sorted(share, key=order.index) for share in shares)
    assert deal_by_duration(items, 1) == [order]


def run(command: list[str], timeout: float, **options) -> subprocess.CompletedProcess:
    """subprocess.run in a session of its own: past `timeout`, every process it started (ranks,
    torchrun's workers) is killed with it, not left behind."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **options) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def evaluate(root: Path, tokenizer_dir: str, decode_path: Path, *extra: str,
             launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = [*(launcher or [sys.executable]), "evaluate.py",
               *overrides(root, tokenizer_dir, "testsets=[demo_test]", "extra_testsets=[raw]",
                          f"decode_path={decode_path}", *extra)]
    return run(command, 600, cwd=REPO)


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam 3"])
def test_evaluate_on_two_processes_writes_what_one_process_writes(tiny_release, corpus, tmp_path,
                                                                  num_beams):
    root, tokenizer_dir = tiny_release
    beams = f"decoding.num_beams={num_beams}"
    one = evaluate(root, tokenizer_dir, tmp_path / "one", beams)
    assert one.returncode == 0, one.stderr[-3000:]
    run_dir = tmp_path / "run"
    two = evaluate(root, tokenizer_dir, tmp_path / "two", beams, "devices=2",
                   f"hydra.run.dir={run_dir}")
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ("demo_test", "raw"):  # a shard set and a Kaldi dir
        for file in ("text", "wer"):
            assert (tmp_path / "two" / name / file).read_bytes() == \
                (tmp_path / "one" / name / file).read_bytes(), (name, file)
    # each rank says what it took: every utterance once, none twice
    keys = {k for k, _ in read_table(corpus / "text")}
    logs = "".join((run_dir / f"evaluate_rank{r}.log").read_text() for r in (0, 1))
    for name in ("demo_test", "raw"):
        counts = re.findall(rf"{name}: rank (\d) of 2: (\d+) utterances, ([\d.]+) s of audio",
                            logs)
        assert sorted(int(r) for r, _, _ in counts) == [0, 1], logs[-2000:]
        assert sum(int(n) for _, n, _ in counts) == len(keys)
        assert all(int(n) > 0 for _, n, _ in counts)


def test_evaluate_under_torchrun(tiny_release, tmp_path):
    root, tokenizer_dir = tiny_release
    one = evaluate(root, tokenizer_dir, tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(free_port())]
    two = evaluate(root, tokenizer_dir, tmp_path / "two", launcher=torchrun)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    for name in ("demo_test", "raw"):
        assert (tmp_path / "two" / name / "text").read_bytes() == \
            (tmp_path / "one" / name / "text").read_bytes()


def test_a_failing_rank_stops_the_run_with_its_error(tiny_release, tmp_path):
    """Rank 1 fails in its share: the run stops (no hang), naming the rank and the error."""
    root, tokenizer_dir = tiny_release
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import mooer.inference.recognizer as r\n"
        "    def broken(*args, **kwargs):\n"
        "        raise RuntimeError('injected fault')\n"
        "    r.Recognizer.decode = broken\n")
    command = [sys.executable, "evaluate.py",
               *overrides(root, tokenizer_dir, "testsets=[demo_test]", "devices=2",
                          f"decode_path={tmp_path / 'decode'}", f"hydra.run.dir={tmp_path}")]
    env = {"PYTHONPATH": f"{hooks}:{REPO}", "PATH": "/usr/bin:/bin"}
    result = run(command, 300, cwd=REPO, env=env)
    assert result.returncode != 0
    logs = result.stderr + "".join(p.read_text() for p in tmp_path.glob("evaluate_rank*.log"))
    assert "rank 1 failed: RuntimeError: injected fault" in logs
    assert not (tmp_path / "decode" / "demo_test" / "text").exists()


def test_transcribe_on_two_processes_prints_what_one_process_prints(tiny_release, corpus,
                                                                    tmp_path):
    root, tokenizer_dir = tiny_release
    command = [str(Path(sys.executable).with_name("mooer-transcribe")), "--wav_scp",
               str(corpus / "wav.scp"), "--format", "tsv", "--checkpoint", str(root / "release"),
               "--device", "cpu", "--max_new_tokens", "3", "--num_beams", "2"]
    tail = ["--", *TINY, f"llm.tokenizer_path={tokenizer_dir}"]
    one = run([*command, *tail], 300)
    two = run([*command, "--devices", "2", *tail], 300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert two.stdout == one.stdout and one.stdout.count("\n") == 25  # header + 24
    shares = re.findall(r"rank (\d) of 2: (\d+) recordings", two.stderr)
    assert sorted(r for r, _ in shares) == ["0", "1"] and all(int(n) > 0 for _, n in shares)
    assert sum(int(n) for _, n in shares) == 24  # each recording once


def test_a_stopped_launcher_stops_its_ranks(tmp_path):
    """SIGTERM to the process that started the ranks (a job scheduler's stop) ends them too:
    none is left running."""
    rank = ("import os, sys, time; "
            "open(sys.argv[1] + os.environ['RANK'], 'w').write(str(os.getpid())); time.sleep(300)")
    launcher = (f"import sys; from mooer.inference.distributed import {launch_ranks.__name__}; "
                f"sys.exit(launch_ranks(2, [sys.executable, '-c', {rank!r}, "
                f"{str(tmp_path / 'pid')!r}]))")
    process = subprocess.Popen([sys.executable, "-c", launcher], cwd=REPO)
    pids = [tmp_path / f"pid{r}" for r in (0, 1)]
    deadline = time.time() + 60
    while not all(p.is_file() and p.read_text() for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    ranks = [int(p.read_text()) for p in pids]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    for pid in ranks:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
