"""The full demo once per training seed, on one synthesized corpus: the README's demo figures.

    python benchmarks/demo_seeds.py                      # seeds 42, 1 and 2 into demo_seeds/
    python benchmarks/demo_seeds.py --seeds 42 --out demo_seeds --num 400 --max_steps 300

Runs `python -m mooer.demo.run --train_seed S` for each seed (the first run synthesizes the
corpus; the others read the same one, so the seeds differ only in training: espeak-ng is not
bit-reproducible, and a corpus of their own would add its own spread). Prints each run's
figures side by side and one line with their ranges, which the README quotes as printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def figures(out: Path) -> dict[str, float]:
    """A finished demo run's held-out CER, unseen-voice CER, BLEU and chrF."""
    summary = {r["name"]: r for r in json.loads((out / "decode" / "summary.json").read_text())}
    return {"cer": summary["demo_test"]["value"],
            "unseen": summary["demo_unseen_voices"]["value"],
            "bleu": summary["demo_test_ast"]["value"], "chrf": summary["demo_test_ast"]["chrf"]}


def span(values: list[float], digits: int) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if f"{low:.{digits}f}" == f"{high:.{digits}f}" else \
        f"{low:.{digits}f}-{high:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("demo_seeds"))
    parser.add_argument("--num", type=int, default=None, help="mooer.demo.run's --num")
    parser.add_argument("--max_steps", type=int, default=None, help="mooer.demo.run's --max_steps")
    args, demo_args = parser.parse_known_args(argv)
    for name in ("num", "max_steps"):
        if getattr(args, name) is not None:
            demo_args += [f"--{name}", str(getattr(args, name))]
    results, times = {}, {}
    first = None
    for seed in args.seeds:
        out = (args.out / f"seed_{seed}").resolve()
        out.mkdir(parents=True, exist_ok=True)
        if first is not None and not (out / "data").exists():
            (out / "data").symlink_to(first / "data", target_is_directory=True)
        print(f"== seed {seed}: {out}", flush=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mooer.demo.run", "--out", str(out),
                        "--train_seed", str(seed), *demo_args], check=True)
        times[seed] = time.perf_counter() - started
        results[seed] = figures(out)
        first = first or out
    print(f"\ndemo runs, one corpus, training seeds {', '.join(map(str, args.seeds))}\n")
    print("| | " + " | ".join(f"seed {s}" for s in args.seeds) + " |")
    print("|---|" + "---|" * len(args.seeds))
    rows = [("held-out ASR CER (unseen sentences, beam 4)", lambda r: f"{r['cer']:.2f} %"),
            ("ASR CER, unseen voices", lambda r: f"{r['unseen']:.2f} %"),
            ("held-out AST BLEU (chrF)", lambda r: f"{r['bleu']:.1f} ({r['chrf']:.1f})")]
    for name, show in rows:
        print(f"| {name} | " + " | ".join(show(results[s]) for s in args.seeds) + " |")
    print("| wall time | " + " | ".join(f"{times[s]:.0f} s" for s in args.seeds) + " |")
    values = list(results.values())
    print(f"\nheld-out CER {span([r['cer'] for r in values], 2)} %, unseen voices "
          f"{span([r['unseen'] for r in values], 2)} %, BLEU "
          f"{span([r['bleu'] for r in values], 1)} ({len(values)} seed"
          f"{'s' if len(values) > 1 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
