"""evaluate.py on one process against N processes (devices=N), on the demo model and its
held-out set: wall time of the whole command, interleaved repeats, and that the outputs agree.

    make demo && python benchmarks/parallel_decode.py [--run_dir demo_out/run] [--devices 2]

One process uses every core (torch's threads); each of N ranks gets cores / N threads, so the
comparison is of the same machine used two ways. The baseline is the single process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def evaluate(run_dir: Path, data_dir: Path, out: Path, devices: int, threads: int,
             testset: str, beams: int) -> float:
    """Seconds the whole evaluate.py command takes."""
    command = [sys.executable, "evaluate.py", f"run_dir={run_dir}", f"paths.data_dir={data_dir}",
               f"test_data_dir={data_dir / 'demo' / 'test'}", f"testsets=[{testset}]",
               f"decode_path={out}", f"decoding.num_beams={beams}", "decoding.batch_size=32",
               "decoding.max_new_tokens=48", "device=cpu", f"devices={devices}",
               f"hydra.run.dir={out.parent / (out.name + '_run')}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", type=Path, default=REPO / "demo_out" / "run")
    parser.add_argument("--data_dir", type=Path, default=REPO / "demo_out" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "demo_out" / "parallel_decode")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--testset", default="demo_test")
    parser.add_argument("--beams", type=int, default=4)
    args = parser.parse_args()
    if not (args.run_dir / "checkpoints" / "last.ckpt").is_file():
        sys.exit(f"no model in {args.run_dir}: run make demo first")
    cores = os.cpu_count() or 1
    times: dict[int, list[float]] = {1: [], args.devices: []}
    for repeat in range(args.repeats):
        for devices in (1, args.devices):
            out = args.out / f"{devices}p_{repeat}"
            times[devices].append(evaluate(args.run_dir, args.data_dir, out, devices,
                                           max(1, cores // devices), args.testset, args.beams))
            print(f"measured: {devices} process(es), repeat {repeat}: {times[devices][-1]:.1f} s",
                  flush=True)
    same = all((args.out / f"{d}p_0" / args.testset / f).read_bytes()
               == (args.out / "1p_0" / args.testset / f).read_bytes()
               for d in (args.devices,) for f in ("text", "wer"))
    one, many = statistics.median(times[1]), statistics.median(times[args.devices])
    print(f"\nevaluate.py on {args.testset} ({args.run_dir}), beam {args.beams}, {cores} cores, "
          f"median of {args.repeats} interleaved runs\n")
    print("| processes | threads each | wall time | vs one process |\n|---|---|---|---|")
    print(f"| 1 (baseline) | {cores} | {one:.1f} s | 1.00x |")
    print(f"| {args.devices} | {max(1, cores // args.devices)} | {many:.1f} s | "
          f"{many / one:.2f}x |")
    print(f"\noutputs (text, wer) identical: {same}")


if __name__ == "__main__":
    main()
