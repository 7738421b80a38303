"""Word times and confidence against ground truth: espeak-ng's word events on fresh demo
utterances, decoded by a demo model with a CTC head.

    python benchmarks/timestamps.py --run_dir demo_seeds/seed_42/run \\
        --data_dir demo_seeds/seed_42/data [--num 200]

Utterances are drawn as the demo corpus draws them (its voices, rates and pitches; a seed the
demo did not use, so the voice and prosody are new, though a sentence may be one it trained on),
synthesized with espeak-ng's word events (each word's start in the audio), resampled to 16 kHz as
the corpus is, and transcribed with word times (`mooer.inference.align`). A reference word has a
true start when an event begins at it (espeak-ng's Mandarin events cover some characters
together: only the first has a time). Start errors are measured on the utterances transcribed
exactly (so each word has its reference word); the end of a word is compared with the next
event's start (a pause counts against it). Confidence: the AUROC of telling a wrong word (not
aligned to an equal reference word) from a right one, over every utterance, for the three
candidates: the CTC head's posteriors along the alignment (what `Word.confidence` holds), the
decoder's own token posteriors (teacher forced: `SpeechLLM.answer_log_probs`) and their
geometric mean.

`--ctc_head` aligns on a head trained apart (conf/experiment/ctc_head.yaml) instead of the
model's own: the recipe for checkpoints without one, measured against the head trained with
the model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from demo_model import add_demo_arguments, demo_recognizer, require_run

from mooer.data.audio import resample
from mooer.demo.corpus import SAMPLE_RATE, draw_specs
from mooer.demo.espeak import Espeak
from mooer.evaluation.scoring import align
from mooer.inference.align import WORD, token_pieces, words_of


def auroc(right: list[float], wrong: list[float]) -> float:
    """The chance that a right word's confidence exceeds a wrong one's (ties count half)."""
    if not right or not wrong:
        return float("nan")
    r, w = np.array(right)[:, None], np.array(wrong)[None, :]
    return float(((r > w).sum() + 0.5 * (r == w).sum()) / (r.size * w.size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_demo_arguments(parser)
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--worst", type=int, default=0,
                        help="also list the N words with the largest start errors")
    parser.add_argument("--ctc_head", type=Path,
                        help="a CTC head trained apart (experiment=ctc_head's checkpoint)")
    args = parser.parse_args()
    require_run(args)
    recognizer = demo_recognizer(args, 16, {"num_beams": args.num_beams, "max_new_tokens": 48},
                                 *([f"model.ctc_head={args.ctc_head}"] if args.ctc_head else []))
    if not recognizer.model.has_ctc_head:
        sys.exit("this model has no CTC head: word times need one")
    engine = Espeak.get()
    specs = draw_specs(args.num, seed=args.seed)
    truth: dict[str, list[tuple[int, float]]] = {}  # key -> (char offset, start s) per event
    durations = {}
    with tempfile.TemporaryDirectory() as work:
        lines = []
        for spec in specs:
            events: list = []
            samples = engine.synthesize(spec.text, spec.voice, spec.rate, spec.pitch,
                                        spec.pitch_range, words=events)
            audio = resample(samples.astype(np.float32) / 32768, engine.sample_rate, SAMPLE_RATE)
            path = Path(work) / f"{spec.uttid}.wav"
            sf.write(path, audio, SAMPLE_RATE)
            lines.append(f"{spec.uttid} {path}\n")
            truth[spec.uttid] = [(position - 1, ms / 1000) for position, _, ms in events]
            durations[spec.uttid] = len(audio) / SAMPLE_RATE
        (Path(work) / "wav.scp").write_text("".join(lines), encoding="utf-8")
        recognizer.decode(work, "asr", progress=False)  # warm-up
        plain = recognizer.decode(work, "asr", progress=False)
        decoded = recognizer.decode(work, "asr", timestamps=True, progress=False)
        scored = recognizer.decode(work, "asr", timestamps=True, token_log_probs=True,
                                   progress=False)
    starts, ends, exact = [], [], 0
    worst: list[tuple[float, str, str, float, float]] = []  # start error, utterance, word, times
    # confidence of each hypothesis word: (CTC, decoder), by whether it is right
    right: list[tuple[float, float]] = []
    wrong: list[tuple[float, float]] = []
    unmatched = 0  # utterances whose decoder tokens spell other words than the CTC alignment's
    for spec in specs:
        hyp = decoded.words.get(spec.uttid, [])
        ref = [(m.group().upper(), m.start()) for m in WORD.finditer(spec.text)]
        decoder = decoder_confidence(recognizer.model.tokenizer, scored.tokens[spec.uttid],
                                     scored.token_log_probs[spec.uttid])
        if [w for w, _ in decoder] != [w.text for w in scored.words.get(spec.uttid, [])]:
            unmatched += 1
            continue
        alignment = align([w for w, _ in ref], [w.text.upper() for w in hyp])
        it = iter(zip(scored.words.get(spec.uttid, []), decoder, strict=True))
        for r, h in zip(alignment.ref, alignment.hyp, strict=True):
            if h:
                word, (_, confidence) = next(it)
                (right if r == h else wrong).append((word.confidence, confidence))
        if [w.text.upper() for w in hyp] != [w for w, _ in ref]:
            continue
        exact += 1
        events = truth[spec.uttid]
        event_at = dict(events)
        following = {offset: (events[i + 1][1] if i + 1 < len(events)
                              else durations[spec.uttid])
                     for i, (offset, _) in enumerate(events)}
        for word, (_, offset) in zip(hyp, ref, strict=True):
            if offset in event_at:
                starts.append(word.start - event_at[offset])
                ends.append(word.end - following[offset])
                worst.append((abs(starts[-1]), spec.uttid, word.text, word.start,
                              event_at[offset]))
    start_abs, end_abs = np.abs(starts), np.abs(ends)
    print(f"\n{args.num} fresh utterances (espeak-ng, demo voices, seed {args.seed}), "
          f"{args.run_dir}, beam {args.num_beams}; {exact} transcribed exactly, "
          f"{len(starts)} words with a true start\n")
    print("| measure | value |\n|---|---|")
    print(f"| word start error, median | {1000 * np.median(start_abs):.0f} ms |")
    print(f"| word start error, p95 | {1000 * np.percentile(start_abs, 95):.0f} ms |")
    print(f"| word start, mean signed (CTC early < 0) | {1000 * np.mean(starts):+.0f} ms |")
    print(f"| word end against the next word's start, median | {1000 * np.median(end_abs):.0f} ms |")
    for name, pick in (("CTC posteriors (Word.confidence)", lambda c: c[0]),
                       ("decoder posteriors", lambda c: c[1]),
                       ("geometric mean of both", lambda c: (c[0] * c[1]) ** 0.5)):
        print(f"| confidence AUROC, wrong vs right words: {name} | "
              f"{auroc([pick(c) for c in right], [pick(c) for c in wrong]):.3f} "
              f"({len(wrong)} wrong of {len(right) + len(wrong)}) |")
    for error, uttid, text, start, true_start in sorted(worst, reverse=True)[:args.worst]:
        print(f"| start error {1000 * error:.0f} ms | {uttid} {text}: {start:.2f} s, "
              f"true {true_start:.2f} s |")
    if unmatched:
        print(f"| utterances left out of the AUROC (decoder tokens spell other words) | "
              f"{unmatched} |")
    print(f"| decoding time with word times / without (batch 16) | {decoded.elapsed:.1f} s / "
          f"{plain.elapsed:.1f} s = {decoded.elapsed / plain.elapsed:.2f}x |")
    print(f"| decoding time with word times and the decoder's posteriors / without | "
          f"{scored.elapsed:.1f} s / {plain.elapsed:.1f} s = "
          f"{scored.elapsed / plain.elapsed:.2f}x |")


def decoder_confidence(tokenizer, token_ids: list[int], log_probs: list[float]
                       ) -> list[tuple[str, float]]:
    """Each word of a generated answer with the decoder's confidence in it: the geometric mean
    of its tokens' posteriors, as the CTC confidence is of the head's."""
    return [(text, float(np.exp(np.mean([log_probs[t] for t in tokens]))))
            for text, tokens in words_of(token_pieces(token_ids, tokenizer)) if tokens]


if __name__ == "__main__":
    main()
