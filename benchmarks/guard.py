"""The hallucination guard on a stress set and on clean speech: what the demo model answers
noise, tones, silence, speed-changed and concatenated utterances, with the guard and without.

    python benchmarks/guard.py --run_dir demo_seeds/seed_42/run --data_dir demo_seeds/seed_42/data

The stress set (made here, seeded): white and brown noise, pure and chorded tones with a beat,
near-silence (a faint noise floor), held-out utterances sped up 1.6x and slowed to 0.6x, and
four held-out utterances back to back (longer than any training utterance). Each answer is
checked against the guard's rules (`mooer.inference.guard`, always with its default settings,
whatever decoded it): a 4-gram more than 3 times, more tokens than the cap, the instruction or
a refusal. Clean: the held-out set's MER with the guard and without.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
from demo_model import add_demo_arguments, demo_kaldi, demo_recognizer

from mooer.data.audio import resample
from mooer.data.text import read_table
from mooer.evaluation.scoring import score
from mooer.inference.guard import Guard

RATE = 16000


def stress_set(test: Path, out: Path, seed: int, per_kind: int) -> dict[str, str]:
    """Write the stress recordings; returns uttid -> kind."""
    rng = np.random.default_rng(seed)
    speech = [sf.read(path, dtype="float32")[0] for _, path in read_table(test / "wav.scp")]
    kinds: dict[str, str] = {}
    lines = []

    def add(kind: str, index: int, audio: np.ndarray) -> None:
        key = f"{kind}-{index:03d}"
        path = out / f"{key}.wav"
        sf.write(path, np.clip(audio, -1, 1).astype(np.float32), RATE)
        lines.append(f"{key} {path}\n")
        kinds[key] = kind

    for i in range(per_kind):
        seconds = rng.uniform(1.0, 6.0)
        n = int(seconds * RATE)
        t = np.arange(n) / RATE
        add("white-noise", i, rng.normal(0, 0.1, n))
        add("brown-noise", i, np.cumsum(rng.normal(0, 0.01, n)) * 0.05)
        add("tone", i, 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t))
        chord = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(150, 900, 3))
        add("chord", i, 0.15 * chord * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)))
        add("near-silence", i, rng.normal(0, 3e-4, n))
        pick = speech[int(rng.integers(len(speech)))]
        add("fast-1.6x", i, resample(pick, int(RATE * 1.6), RATE))
        add("slow-0.6x", i, resample(pick, int(RATE * 0.6), RATE))
        pieces = [speech[int(j)] for j in rng.integers(len(speech), size=4)]
        add("four-in-a-row", i, np.concatenate(pieces))
    (out / "wav.scp").write_text("".join(lines), encoding="utf-8")
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_demo_arguments(parser)
    parser.add_argument("--per_kind", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    test = demo_kaldi(args, "test")
    recognizer = demo_recognizer(args, 16, {"num_beams": 4, "max_new_tokens": 200})
    rules, instruction = Guard(), [recognizer.prompt.instructions["asr"]]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        kinds = stress_set(test, Path(work), args.seed, args.per_kind)
        for name, guard in (("off", Guard(enabled=False)), ("on", Guard())):
            recognizer.guard = guard
            stressed = recognizer.decode(work, "asr", progress=False)
            clean = recognizer.decode(test, "asr", progress=False)
            found: Counter = Counter()
            for key, text in stressed.hypotheses.items():
                why = rules.check(stressed.tokens[key], text, stressed.durations[key], instruction)
                found[why or "fine"] += 1
            refs = dict(read_table(test / "text"))
            rows.append((name, found, len(stressed.retried), len(stressed.flagged),
                         score(refs, clean.hypotheses).error_rate, len(clean.retried),
                         stressed.elapsed + clean.elapsed))
    print(f"\nstress set: {len(kinds)} recordings ({args.per_kind} each of "
          f"{', '.join(sorted(set(kinds.values())))}); clean: {test} ({len(read_table(test / 'text'))} "
          f"utterances); {args.run_dir}, beam 4, 200 new tokens at most\n")
    print("| guard | loops | over-long | instruction or refusal | retried / still flagged "
          "| clean MER | clean retried | decoding s |\n|---|---|---|---|---|---|---|---|")
    for name, found, retried, flagged, mer, clean_retried, seconds in rows:
        print(f"| {name} | {found['loop']} | {found['over-long']} | "
              f"{found['instruction'] + found['refusal']} | {retried} / {flagged} | "
              f"{mer:.2f} % | {clean_retried} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
