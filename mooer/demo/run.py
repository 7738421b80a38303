"""`make demo`: the whole system on a 2-core CPU, offline, in about 15 minutes.

Synthesizes a bilingual corpus, packs it, trains a BPE tokenizer and a small speech LLM from
scratch (ASR + AST), evaluates the held-out sets with evaluate.py, transcribes a fresh sentence
with mooer-transcribe, plots the training curves and prints a table.

    python -m mooer.demo.run [--out demo_out] [--num 6000] [--max_steps 2800]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hydra.utils import instantiate

from mooer.config import compose_config
from mooer.data.text import read_table
from mooer.demo.corpus import UtteranceSpec, speaker_id, write_corpus
from mooer.demo.grammar import sample_sentence
from mooer.demo.prepare import UNSEEN_ZH_VOICES

REPO = Path(__file__).resolve().parents[2]


def run(command: list[str], log_path: Path, status: Callable[[float], str] | None = None,
        every: float = 1.0) -> None:
    """Run a step, echoing its command; its output goes to `log_path` (and the tail on error).
    With `status`, one live line (`status(elapsed seconds)`) shows progress meanwhile: redrawn
    in place on a terminal, printed every 60 s otherwise."""
    print("  $ " + " ".join(command), flush=True)
    terminal, started, shown, last = sys.stdout.isatty(), time.perf_counter(), -60.0, ""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            time.sleep(every)
            elapsed = time.perf_counter() - started
            line = status(elapsed) if status else ""
            if line and terminal:
                print(f"\r  {line:<100}", end="", flush=True)
                last = line
            elif line and elapsed - shown >= 60:
                print(f"  {line}", flush=True)
                shown = elapsed
    if last:
        print(flush=True)
    if process.returncode:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise SystemExit(f"step failed (exit {process.returncode}); the end of {log_path}:\n{tail}")


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def training_status(log_path: Path, run_dir: Path, max_steps: int) -> Callable[[float], str]:
    """The live training line: step of max_steps, loss (MooER's log line in the log), the last
    validation error rate (the CSV log), elapsed and ETA."""
    def status(elapsed: float) -> str:
        text = log_path.read_text(errors="replace") if log_path.is_file() else ""
        lines = [line for line in text.splitlines() if "Training Epoch:" in line]
        if not lines:
            return f"training: starting ({_clock(elapsed)} elapsed)"
        step = int(lines[-1].split(", step ")[1].split()[0])
        loss = lines[-1].split("(loss: ")[1].split(",")[0]
        rates = [r["val/error_rate"] for r in metric_rows(run_dir) if r.get("val/error_rate")]
        val = f", val error {float(rates[-1]):.1f} %" if rates else ""
        eta = elapsed / max(step, 1) * (max_steps - step)
        return (f"training: step {step} of {max_steps}, loss {loss}{val}, {_clock(elapsed)} "
                f"elapsed, ETA {_clock(eta)}")
    return status


def progress_status(log_path: Path, what: str) -> Callable[[float], str]:
    """The live line of a step that draws tqdm bars into its log: the last bar drawn."""
    def status(elapsed: float) -> str:
        text = log_path.read_text(errors="replace") if log_path.is_file() else ""
        bars = [part.strip() for part in text.replace("\n", "\r").split("\r")
                if "it/s]" in part or "utt/s]" in part or "s/utt]" in part]
        return f"{what}: {bars[-1] if bars else 'starting'} ({_clock(elapsed)} elapsed)"
    return status


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's CSV logs, oldest version first."""
    rows = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


def plot_curves(run_dir: Path) -> Path | None:
    """train/val loss and validation error rate from the CSV logs, as curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = metric_rows(run_dir)
    if not rows:
        return None

    def series(name: str) -> tuple[list[int], list[float]]:
        points = [(int(r["step"]), float(r[name])) for r in rows if r.get(name)]
        return [p[0] for p in points], [p[1] for p in points]

    figure, (loss_axis, error_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("train/loss", "val/loss"):
        loss_axis.plot(*series(name), label=name)
    loss_axis.set_xlabel("step")
    loss_axis.set_yscale("log")
    loss_axis.legend()
    error_axis.plot(*series("val/error_rate"), label="validation error rate (%)", color="C2")
    error_axis.set_xlabel("step")
    error_axis.legend()
    figure.tight_layout()
    path = run_dir / "curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def fresh_utterance(data_dir: Path, out: Path, seed: int) -> tuple[Path, str]:
    """A sentence no split contains, spoken by a voice never trained on."""
    known = {t for _, t in read_table(data_dir / "corpus" / "text")}
    rng = random.Random(seed)
    sentence = sample_sentence(rng, ("date", "price", "count"))
    while sentence.zh in known:
        sentence = sample_sentence(rng, ("date", "price", "count"))
    voice = UNSEEN_ZH_VOICES[0]
    spec = UtteranceSpec(f"{speaker_id(voice)}-fresh", "zh", sentence.zh, sentence.en, voice,
                         165, 50, 50, seed)
    write_corpus(out, [spec], progress=False)
    return out / "wav" / f"{spec.uttid}.wav", sentence.zh


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--num", type=int, default=6000, help="utterances to synthesize")
    parser.add_argument("--max_steps", type=int, default=2800, help="training steps")
    parser.add_argument("--dev_num", type=int, default=150)
    parser.add_argument("--test_num", type=int, default=300)
    parser.add_argument("--unseen_voices_num", type=int, default=200)
    parser.add_argument("--english_ratio", type=float, default=0.3,
                        help="share of utterances spoken in English (the rest in Mandarin)")
    parser.add_argument("--seed", type=int, default=0, help="the corpus' seed")
    parser.add_argument("--train_seed", type=int, default=42,
                        help="training's seed (initialization, data order, augmentation)")
    parser.add_argument("--average", type=int, default=1,
                        help="evaluate the mean of the run's last N checkpoints (1: last.ckpt)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    python = sys.executable

    print(f"[1/5] synthesizing {args.num} utterances, splitting by sentence, packing shards, "
          "training a BPE tokenizer", flush=True)
    data_root = out / "data"
    recipe = ["experiment=demo", f"paths.data_dir={data_root}", f"prepare_data.num={args.num}",
              f"prepare_data.seed={args.seed}", f"prepare_data.dev_num={args.dev_num}",
              f"prepare_data.test_num={args.test_num}",
              f"prepare_data.unseen_voices_num={args.unseen_voices_num}",
              f"prepare_data.english_ratio={args.english_ratio}"]
    instantiate(compose_config("train", recipe)[0].prepare_data)  # what train.py would make
    prepared = time.perf_counter()

    print(f"[2/5] training (experiment=demo, {args.max_steps} steps)", flush=True)
    run_dir = out / "run"
    run([python, "train.py", *recipe, f"trainer.max_steps={args.max_steps}", f"seed={args.train_seed}",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"],
        out / "train.log", training_status(out / "train.log", run_dir, args.max_steps))
    trained = time.perf_counter()
    curves = plot_curves(run_dir)

    print("[3/5] evaluating the held-out sets", flush=True)
    decode_path = out / "decode"
    run([python, "evaluate.py", f"run_dir={run_dir}", f"paths.data_dir={data_root}",
         f"test_data_dir={data_root / 'demo' / 'test'}",
         "testsets=[demo_test,demo_unseen_voices,demo_test_ast]", f"decode_path={decode_path}",
         f"average={args.average}",
         "decoding.num_beams=4", "decoding.batch_size=32", "decoding.max_new_tokens=48",
         "device=cpu", f"hydra.run.dir={out / 'evaluate'}"], out / "evaluate.log",
        progress_status(out / "evaluate.log", "evaluating"))
    evaluated = time.perf_counter()

    print("[4/5] transcribing a fresh sentence with mooer-transcribe", flush=True)
    wav, reference = fresh_utterance(data_root / "demo", out / "fresh", args.seed + 99)
    command = [str(Path(python).with_name("mooer-transcribe")), "--wav_path", str(wav),
               "--task", "asr_ast", "--format", "text", "--run_dir", str(run_dir),
               "--device", "cpu", "--num_beams", "1", "--", f"paths.data_dir={data_root}"]
    run(command, out / "transcribe.log")
    transcript = [line for line in (out / "transcribe.log").read_text().splitlines()
                  if line.startswith(wav.stem + "\t")]

    print("[5/5] summary\n", flush=True)
    results = {r["name"]: r for r in json.loads((decode_path / "summary.json").read_text())}
    rows = [
        ("held-out ASR CER (unseen sentences)", f"{results['demo_test']['value']:.2f} %"),
        ("ASR CER, unseen voices", f"{results['demo_unseen_voices']['value']:.2f} %"),
        ("held-out AST BLEU (chrF)", f"{results['demo_test_ast']['value']:.1f} "
                                     f"({results['demo_test_ast']['chrf']:.1f})"),
        ("data preparation time", f"{prepared - started:.0f} s"),
        ("training time", f"{trained - prepared:.0f} s"),
        ("evaluation time", f"{evaluated - trained:.0f} s"),
        ("total time", f"{time.perf_counter() - started:.0f} s"),
        ("fresh sentence", reference),
        ("mooer-transcribe said", " | ".join(transcript[0].split("\t")[1:]) if transcript else
         "(nothing)"),
        ("checkpoint", str(run_dir / "checkpoints" / "last.ckpt")),
        ("logs and curves", f"{run_dir} ({curves.name if curves else 'no curves'})"),
        ("decoded text and wer files", str(decode_path)),
    ]
    width = max(len(name) for name, _ in rows)
    table = "\n".join(f"| {name:<{width}} | {value} |" for name, value in rows)
    print(table)
    (out / "summary.md").write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
