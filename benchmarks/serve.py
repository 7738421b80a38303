"""mooer-serve under load, on the demo model: requests/s and p50/p95 latency at several
concurrencies, batching across requests on (--batch_size 8) and off (--batch_size 1, one
segment at a time: how the server decoded before), and the count of requests answered, refused
(503) and failed. Every request must get an answer: none may be lost or hang.

    make demo && python benchmarks/serve.py [--run_dir demo_out/run] [--requests 32]

Requests are 5 s recordings (held-out demo utterances joined with short pauses), greedy. The
headline compares 8 concurrent requests against the same 8 sent one by one (the baseline), on
the batching server, in interleaved repeats; and checks that every answer of the batching server
is the one the server without batching gives.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from mooer.inference.distributed import free_port

REPO = Path(__file__).resolve().parents[1]

RATE = 16000


def recordings(wav_scp: Path, out: Path, count: int, seconds: float) -> list[Path]:
    """`count` recordings of `seconds` each: held-out utterances in order, 0.3 s apart, cut to
    length at the end of an utterance's silence where possible."""
    rows = [line.split(maxsplit=1) for line in wav_scp.read_text().splitlines() if line.strip()]
    pause = np.zeros(int(0.3 * RATE), np.float32)
    paths, row = [], 0
    for index in range(count):
        pieces, length = [], 0
        while length < seconds * RATE:
            wave, rate = sf.read(rows[row % len(rows)][1], dtype="float32")
            assert rate == RATE, rate
            pieces += [wave, pause]
            length += len(wave) + len(pause)
            row += 1
        path = out / f"request{index:03d}.wav"
        sf.write(path, np.concatenate(pieces)[:int(seconds * RATE)], RATE)
        paths.append(path)
    return paths


def start(run_dir: Path, data_dir: Path, batch_size: int, max_queue: int, log: Path
          ) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    command = [str(Path(sys.executable).with_name("mooer-serve")), "--run_dir", str(run_dir),
               "--device", "cpu", "--precision", "fp32", "--port", str(port),
               "--batch_size", str(batch_size), "--max_queue", str(max_queue),
               "--max_new_tokens", "48", "--", f"paths.data_dir={data_dir}"]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            sys.exit(f"mooer-serve stopped: see {log}")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    sys.exit(f"mooer-serve did not answer: see {log}")


def ask(url: str, path: Path) -> tuple[str, float, str]:
    """One request: (answered | refused | failed, seconds, transcript or reason)."""
    import httpx

    started = time.perf_counter()
    try:
        with open(path, "rb") as f:
            answer = httpx.post(f"{url}/api/transcribe", files={"file": (path.name, f)},
                                data={"task": "asr", "num_beams": "1"}, timeout=600)
    except httpx.HTTPError as err:
        return "failed", time.perf_counter() - started, repr(err)
    seconds = time.perf_counter() - started
    if answer.status_code == 200:
        return "answered", seconds, answer.json()["transcript"]
    if answer.status_code == 503:
        return "refused", seconds, answer.text
    return "failed", seconds, f"{answer.status_code} {answer.text[:200]}"


def load(url: str, paths: list[Path], concurrency: int) -> dict:
    """Every path sent with `concurrency` clients at a time: wall time, latencies, outcomes."""
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: ask(url, p), paths))
    wall = time.perf_counter() - started
    latencies = sorted(s for outcome, s, _ in results if outcome == "answered")
    counts = {k: sum(outcome == k for outcome, _, _ in results)
              for k in ("answered", "refused", "failed")}
    return {"concurrency": concurrency, "requests": len(paths), "wall_s": round(wall, 3),
            "requests_per_s": round(counts["answered"] / wall, 2),
            "p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
            "p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies else None,
            **counts, "texts": [text if outcome == "answered" else None
                                for outcome, _, text in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", type=Path, default=REPO / "demo_out" / "run")
    parser.add_argument("--data_dir", type=Path, default=REPO / "demo_out" / "data")
    parser.add_argument("--requests", type=int, default=32, help="requests at each concurrency")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--overload", type=int, default=64,
                        help="a last round of this many requests at once, past --max_queue")
    parser.add_argument("--max_queue", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3, help="of the 8-at-once headline")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not (args.run_dir / "checkpoints" / "last.ckpt").is_file():
        sys.exit(f"no model in {args.run_dir}: run make demo first")
    levels = [int(c) for c in args.concurrency.split(",")]
    rows, headline = [], {}
    with tempfile.TemporaryDirectory(prefix="mooer-serve-bench-") as work:
        paths = recordings(args.data_dir / "demo" / "kaldi" / "test" / "wav.scp", Path(work),
                           max(args.requests, args.overload, 8), args.seconds)
        texts: dict[int, list] = {}
        for batch_size in (8, 1):
            process, url = start(args.run_dir, args.data_dir, batch_size, args.max_queue,
                                 Path(work) / f"serve{batch_size}.log")
            try:
                ask(url, paths[0])  # warm up
                if batch_size == 8:
                    times: dict[str, list[float]] = {"one by one": [], "8 at once": []}
                    for _ in range(args.repeats):
                        times["one by one"].append(load(url, paths[:8], 1)["wall_s"])
                        times["8 at once"].append(load(url, paths[:8], 8)["wall_s"])
                    headline = {k: statistics.median(v) for k, v in times.items()}
                for level in [*levels, args.overload]:
                    row = load(url, paths[:args.requests if level != args.overload
                                          else args.overload], level)
                    row["batching"] = "on (8)" if batch_size == 8 else "off (1)"
                    rows.append(row)
                    print(f"measured: batch {batch_size}, concurrency {level}: "
                          f"{row['wall_s']:.1f} s", flush=True)
                texts[batch_size] = load(url, paths[:args.requests], 1)["texts"]
            finally:
                process.terminate()
                process.wait(timeout=60)
    print(f"\nmooer-serve on {args.run_dir}, {args.seconds:g} s requests (greedy), CPU, "
          f"{os.cpu_count()} cores, --max_queue {args.max_queue}\n")
    print("| batching | concurrency | requests | requests/s | p50 | p95 | answered | refused "
          "| failed |\n|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        p50 = f"{row['p50_s']:.2f} s" if row["p50_s"] is not None else "-"
        p95 = f"{row['p95_s']:.2f} s" if row["p95_s"] is not None else "-"
        print(f"| {row['batching']} | {row['concurrency']} | {row['requests']} | "
              f"{row['requests_per_s']:.2f} | {p50} | {p95} | {row['answered']} | "
              f"{row['refused']} | {row['failed']} |")
    ratio = headline["8 at once"] / headline["one by one"]
    print(f"\n8 requests at once: {headline['8 at once']:.2f} s against {headline['one by one']:.2f}"
          f" s one by one (baseline): {ratio:.2f}x (median of {args.repeats})")
    same = texts[8] == texts[1]
    print(f"failed (an error, or no answer within 600 s): {sum(r['failed'] for r in rows)}")
    print(f"answers with batching identical to one segment at a time: {same}")
    if args.json:
        args.json.write_text(json.dumps({"rows": [{k: v for k, v in r.items() if k != "texts"}
                                                  for r in rows],
                                         "headline": headline, "ratio": ratio,
                                         "identical": same}, indent=2))


if __name__ == "__main__":
    main()
