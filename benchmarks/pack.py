"""Packing throughput: mooer-pack at 1 and 2 processes next to `tar cf` of the same files.

    python benchmarks/pack.py [--num 20000] [--work /tmp/mooer-bench-pack]

Files are short 16 kHz mono WAVs (1.0-1.7 s, noise), made once and reused; every run reads
them from the page cache (a warm-up pass reads them all first).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from mooer.data.audio import wav_bytes
from mooer.data.pack import pack


def make_files(directory: Path, num: int) -> tuple[Path, Path]:
    """A Kaldi dir of `num` short WAVs (reused when already complete)."""
    wav_dir = directory / "wav"
    wav_scp, text = directory / "wav.scp", directory / "text"
    if not (text.exists() and len(text.read_text().splitlines()) == num):
        wav_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        rows = []
        for index in range(num):
            path = wav_dir / f"utt{index:06d}.wav"
            samples = rng.normal(0, 0.1, size=int(rng.uniform(1.0, 1.7) * 16000)).astype(np.float32)
            path.write_bytes(wav_bytes(samples, 16000))
            rows.append((f"utt{index:06d}", path))
        wav_scp.write_text("".join(f"{k} {p}\n" for k, p in rows))
        text.write_text("".join(f"{k} 一二三 four five\n" for k, _ in rows))
    return wav_scp, text


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=20000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mooer-bench-pack"))
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per method")
    args = parser.parse_args()
    wav_scp, text = make_files(args.work / "data", args.num)
    wav_dir = args.work / "data" / "wav"
    megabytes = sum(p.stat().st_size for p in wav_dir.iterdir()) / 1e6
    out = args.work / "out"

    def run_tar():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "cf", str(out / "all.tar"), "-C", str(wav_dir.parent), "wav"],
                       check=True)

    def run_pack(processes: int):
        summary = pack(wav_scp, text, out, num_utts_per_shard=1000, num_threads=processes,
                       progress=False)
        assert summary.packed == args.num and not summary.rejects

    run_tar()  # warm the page cache
    methods = [("tar cf (copies bytes)", run_tar),
               ("mooer-pack, 1 process (validates)", lambda: run_pack(1)),
               ("mooer-pack, 2 processes (validates)", lambda: run_pack(2))]
    results = []
    for name, fn in methods:
        best = float("inf")
        for _ in range(args.repeats):
            shutil.rmtree(out, ignore_errors=True)
            best = min(best, timed(fn))
        results.append((name, best))
    shutil.rmtree(out, ignore_errors=True)
    tar_seconds = results[0][1]
    print(f"\n{args.num} files, {megabytes:.0f} MB, best of {args.repeats}\n")
    print(f"| {'method':38s} | {'seconds':>8s} | {'utt/s':>8s} | {'MB/s':>7s} | {'vs tar':>7s} |")
    print(f"|{'-' * 40}|{'-' * 10}|{'-' * 10}|{'-' * 9}|{'-' * 9}|")
    for name, seconds in results:
        print(f"| {name:38s} | {seconds:8.2f} | {args.num / seconds:8.0f} | "
              f"{megabytes / seconds:7.0f} | {tar_seconds / seconds:6.0%} |")


if __name__ == "__main__":
    main()
