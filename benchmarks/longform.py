"""An hour-long recording through mooer-transcribe: silero-vad segments, decoding, joining.

    make demo                                  # trains demo_out/run once
    python benchmarks/longform.py              # builds a 1-hour recording from the demo's held-out
                                               # sentences and transcribes it with that run

The recording is the demo's test utterances (unseen sentences, then unseen voices), repeated
until `--minutes`, with 0.3-1.5 s silences between them. Prints one table: segments, wall time,
real-time factor (VAD and decoding together), peak memory, and the CER of the joined transcript
against the joined reference, beside the CER of the same utterances decoded one by one (the
baseline: what segmentation costs in accuracy), and beside the joined one-by-one transcripts of
the recording's utterances in its order, scored against the joined reference as the long one is
(the same sentences as often as the recording holds them, joined the same way).
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from demo_model import add_demo_arguments, demo_kaldi

from mooer.data.audio import read_audio, resample, to_mono
from mooer.data.text import read_table
from mooer.evaluation.scoring import score
from mooer.inference.formats import join_texts
from mooer.inference.segment import SAMPLE_RATE


def build_recording(sets: list[Path], minutes: float, out: Path, seed: int = 0
                    ) -> tuple[str, list[tuple[str, str]]]:
    """A long recording of the sets' utterances with silences; returns the joined reference and
    the (uttid, path) of the utterances it holds, in order."""
    rng = random.Random(seed)
    rows = [row for directory in sets for row in read_table(directory / "wav.scp")]
    texts = {k: v for directory in sets for k, v in read_table(directory / "text")}
    pieces, used, total = [], [], 0
    while total < minutes * 60 * SAMPLE_RATE:
        for key, path in rows:
            samples, rate = read_audio(path)
            wave = resample(to_mono(samples), rate, SAMPLE_RATE)
            gap = np.zeros(int(rng.uniform(0.3, 1.5) * SAMPLE_RATE), np.float32)
            pieces += [wave, gap]
            used.append((key, path))
            total += len(wave) + len(gap)
            if total >= minutes * 60 * SAMPLE_RATE:
                break
    sf.write(out, np.concatenate(pieces), SAMPLE_RATE, subtype="PCM_16")
    return join_texts([texts[k] for k, _ in used]), used


def transcribed(argv: list[str]) -> list[str]:
    """The lines mooer-transcribe prints for `argv` (run as its own process, so that its peak
    memory is its own)."""
    result = subprocess.run([sys.executable, "-m", "mooer.inference.transcribe", *argv],
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_demo_arguments(parser)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the recording's order of gaps")
    parser.add_argument("--min_silence_ms", type=int, default=None,
                        help="mooer-transcribe's --min_silence_ms (default: its own)")
    parser.add_argument("--keep", type=Path,
                        help="write the long transcript's rows, the utterances' order and the "
                             "one-by-one transcripts here (to read the errors)")
    args = parser.parse_args()
    test = demo_kaldi(args, "test")
    model = ["--run_dir", str(args.run_dir), "--device", "cpu", "--precision", "fp32",
             "--num_beams", str(args.num_beams), "--batch_size", str(args.batch_size),
             "--max_new_tokens", "48", "--", f"paths.data_dir={args.data_dir}"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        long_path = work / "hour.wav"
        reference, used = build_recording([test], args.minutes, long_path, args.seed)
        seconds = sf.info(long_path).duration
        started = time.perf_counter()
        vad = [] if args.min_silence_ms is None else ["--min_silence_ms", str(args.min_silence_ms)]
        rows = transcribed(["--wav_path", str(long_path), "--format", "tsv", *vad, *model])[1:]
        elapsed = time.perf_counter() - started
        hypothesis = join_texts([row.split("\t")[3] for row in rows])
        long_cer = score({"hour": reference}, {"hour": hypothesis}).error_rate
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # the long run
        scp = work / "one_by_one.scp"
        unique = dict(used)
        scp.write_text("".join(f"{k} {p}\n" for k, p in unique.items()), encoding="utf-8")
        hyps = dict(line.split("\t", 1)
                    for line in transcribed(["--wav_scp", str(scp), "--format", "text", *model]))
        refs = {k: v for k, v in read_table(test / "text") if k in unique}
        short_cer = score(refs, hyps).error_rate
        in_order = join_texts([hyps.get(k, "") for k, _ in used])
        joined_short_cer = score({"hour": reference}, {"hour": in_order}).error_rate
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / "long.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
            (args.keep / "used.txt").write_text("".join(f"{k}\n" for k, _ in used))
            (args.keep / "one_by_one.txt").write_text(
                "".join(f"{k}\t{v}\n" for k, v in hyps.items()), encoding="utf-8")
    print(f"\n{seconds / 60:.1f} min recording ({len(used)} utterances of the demo's held-out "
          f"sentences, 0.3-1.5 s gaps), demo model {args.run_dir}, beam {args.num_beams}, "
          f"batch {args.batch_size}, CPU\n")
    print("| measure | value |\n|---|---|")
    print(f"| segments (silero-vad, at most 30 s) | {len(rows)} |")
    print(f"| wall time (start-up, VAD and decoding) | {elapsed:.0f} s |")
    print(f"| real-time factor | {elapsed / seconds:.3f} |")
    print(f"| peak memory (mooer-transcribe process RSS) | {peak:.2f} GiB |")
    print(f"| CER, joined transcript vs joined reference | {long_cer:.2f} % |")
    print(f"| CER, the same {len(unique)} utterances one by one (baseline) | {short_cer:.2f} % |")
    print(f"| CER, the {len(used)} utterances one by one, joined in the recording's order | "
          f"{joined_short_cer:.2f} % |")
    print(f"| joined / one by one joined | {long_cer / max(joined_short_cer, 1e-9):.2f}x |")


if __name__ == "__main__":
    main()
