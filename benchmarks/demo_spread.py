"""Where the demo's held-out errors come from, over several `make demo` runs.

    python benchmarks/demo_spread.py demo_out demo_seed1 demo_seed2 [--set demo_test]

For each run dir (a `python -m mooer.demo.run --out DIR` output) it prints the set's error rate,
how many utterances hold an error, and the errors by token class (Mandarin characters, English
words, digits); then, over all runs, how many erring utterances err in every run (systematic: the
data or the recipe) or in one run only (chance: initialization, data order, augmentation), and
the reference tokens most often wrong.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from mooer.data.text import read_table
from mooer.evaluation.scoring import score, token_class


def run_errors(out: Path, name: str, decode: str = "decode"):
    refs = dict(read_table(out / "data" / "demo" / "test" / name / "text"))
    hyps = dict(read_table(out / decode / name / "text"))
    return score(refs, hyps)


def wrong_tokens(alignment) -> list[str]:
    """Reference tokens substituted or deleted (insertions as '+token')."""
    return [r if r else f"+{h}" for r, h in zip(alignment.ref, alignment.hyp, strict=True)
            if r != h]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--set", default="demo_test")
    parser.add_argument("--decode", default="decode", help="decode dir name inside each run")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)

    results = {run: run_errors(run, args.set, args.decode) for run in args.runs}
    print(f"| run | {args.set} error rate | errors | utterances with an error | "
          "errors on Mandarin / English / digits |")
    print("|---|---|---|---|---|")
    for run, result in results.items():
        erring = [k for k, a in result.utterances.items() if a.errors]
        classes = Counter(token_class(t.lstrip("+")) for a in result.utterances.values()
                          for t in wrong_tokens(a))
        summary = json.loads((run / args.decode / "summary.json").read_text())
        stated = next((r["value"] for r in summary if r["name"] == args.set), None)
        print(f"| {run.name} | {result.error_rate:.2f} % (summary {stated:.2f} %) | "
              f"{result.total.errors} of {result.total.num_ref} | {len(erring)} of "
              f"{len(result.utterances)} | {classes.get('Mandarin', 0)} / "
              f"{classes.get('English', 0)} / {classes.get('Number', 0)} |")
    erring_sets = [{k for k, a in r.utterances.items() if a.errors} for r in results.values()]
    every, counts = set.intersection(*erring_sets), Counter(k for s in erring_sets for k in s)
    once = [k for k, n in counts.items() if n == 1]
    print(f"\nerring utterances over {len(results)} runs: {len(counts)}; in every run: "
          f"{len(every)}; in one run only: {len(once)}")
    errors_in = {"every run": 0, "some runs": 0, "one run": 0}
    for result in results.values():
        for key, a in result.utterances.items():
            kind = ("every run" if key in every else "one run" if counts[key] == 1
                    else "some runs")
            errors_in[kind] += a.errors
    total = sum(errors_in.values())
    print("errors by where their utterance errs: " + ", ".join(
        f"{kind} {n} ({100 * n / max(total, 1):.0f} %)" for kind, n in errors_in.items()))
    tokens = Counter(t for r in results.values() for a in r.utterances.values()
                     for t in wrong_tokens(a))
    print("reference tokens most often wrong (all runs): " + ", ".join(
        f"{t} x{n}" for t, n in tokens.most_common(args.top)))
    first = next(iter(results.values()))
    for key in sorted(every)[:args.top]:
        a = first.utterances[key]
        print(f"  every run: {key}: {' '.join(a.ref)} -> {' '.join(t or '_' for t in a.hyp)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
