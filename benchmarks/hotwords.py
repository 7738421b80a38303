"""Hotwords on the demo model: B-WER, U-WER, MER and decoding time, without a list, with each
utterance's true rare words among distractors, and with distractors alone.

    python benchmarks/hotwords.py                     # after `make demo` (demo_out/)
    python benchmarks/hotwords.py --run_dir demo_seeds/seed_42/run \\
        --data_dir demo_seeds/seed_42/data [--scores default 1 2] [--checks default none] \\
        [--rewrites default none]

The held-out sentences (`demo/kaldi/test`, beam 4 by default) are decoded one utterance at a
time (each has its own list; the same for the baseline), each under every condition in turn,
so that a busy machine slows all conditions alike (`--repeats R`: R times in turn, each
condition's fastest decoding of the utterance counted). An English
word is rare when the training transcripts hold it at most `--rare` times; an utterance's list
is its own rare words plus `--distractors` other rare words of the training vocabulary (English
words, and Mandarin words of two characters, as rare, that its reference does not hold;
`--lexicon FILE`: Mandarin words, such as names, whose rare ones an utterance's reference holds
are its true words too, and distractors of the others). With
distractors alone, the list has no true word: what biasing costs where it cannot help. B-WER
counts errors on each utterance's true rare words, U-WER on every other token (Le et al.,
2021); "inserted" is the share of utterances whose hypothesis holds a list word that neither
its reference nor its hypothesis without a list holds (what the list put there).

Each list is decoded checked (the decoders' default on a model with a CTC head: only the words
the CTC head hears are biased, at 1.5) and unchecked (every word, at 1.0), each with and without
rewriting after decoding (the decoders' default on a model with a CTC head: the words it hears
tried in the answer, kept where the model scores them higher, `mooer.inference.rewrite`), or as
`--checks`, `--rewrites` and `--scores` say. Lists are shuffled (a list's order tells nothing).

With `--batch_size N` the set is decoded as evaluate.py decodes it with `hotwords=FILE`: in
batches of N, with one list for every utterance (the set's true rare words together, plus the
first utterance's distractors that no reference of the set holds; those alone for "distractors
only"), each condition in turn over the whole set, `--rounds` times (the seconds are the
fastest round's, the ratio to no list the median of the rounds' own ratios); "inserted" then
counts any list word, another utterance's true word too.

`--breakdown` also prints where the host's time of the hotwords goes in each condition, in ms
an utterance: spotting, rewriting (its candidates, their CTC pass, the answers' alignment, the
decoder passes) and the beam's bonus, each part's function timed where decoding calls it.

Trained biasing (`--trained_run_dir`, a run trained with `task/context=hotwords`, which is
shown the list as well) is measured in the same table, on the same utterances and
lists: with no list, with the list in the prompt alone (score 0), and in the prompt as well as
biased at decoding (the decoders' default).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import random
import re
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from demo_model import add_demo_arguments, demo_kaldi, demo_recognizer
from tqdm import tqdm

from mooer.data.context import context_words
from mooer.data.hotword_list import threshold_or_off
from mooer.data.text import read_table
from mooer.evaluation.scoring import biased_score, score
from mooer.inference import decode as decode_module
from mooer.inference import rewrite as rewrite_module
from mooer.inference.hotwords import (
    CHECK_THRESHOLD,
    CHECKED_SCORE,
    DEFAULT_SCORE,
    REWRITE_THRESHOLD,
    ContextGraph,
    HotwordBias,
)

WORD = re.compile(r"[a-z']+")


def vocabulary(texts: list[str]) -> Counter:
    """English words (lower-cased) and two-character Mandarin words (every adjacent pair) of
    `texts`: the words trained biasing draws its lists from (`mooer.data.context`)."""
    return Counter(w.lower() for text in texts for w in context_words(text))


def holds(text: str, word: str) -> bool:
    """Whether `text` holds `word` (an English word as a whole word)."""
    return word in text.lower().split() if word.isascii() else word in text


def lists(tests: dict[str, str], counts: Counter, rare: int, distractors: int, seed: int,
          lexicon: dict[str, int] | None = None
          ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per utterance: its true rare English words, and `distractors` rare words (English words
    and two-character Mandarin words as rare in training) it does not hold, as biasing lists
    are built in the literature (Le et al. draw distractors from the rare-word list). With a
    `lexicon` (Mandarin words and how often training holds each), its rare words that the
    reference holds are true words too, and the others distractors: Mandarin has no spaces to
    find an utterance's words by."""
    rng = random.Random(seed)
    rare_lexicon = {w for w, n in (lexicon or {}).items() if n <= rare}
    words = sorted({w for w, n in counts.items() if n <= rare} | rare_lexicon)
    true, other = {}, {}
    for key, text in tests.items():
        held = vocabulary([text])
        true[key] = sorted({w for w in WORD.findall(text.lower()) if counts[w] <= rare}
                           | {w for w in rare_lexicon if w in text})
        pool = [w for w in words if w not in held and w not in text]
        other[key] = rng.sample(pool, min(distractors, len(pool)))
    return true, other


Lists = dict[str, list[str]]
# (method, list name, score label, (score, decoding options), each utterance's list or None)
Condition = tuple[str, str, str, tuple[float | None, dict], Lists | None]


def threshold(text: str, default: float) -> float | None:
    """A --checks or --rewrites value: 'default', 'none' or 'off', or nats."""
    return default if text == "default" else threshold_or_off(text)


def decode_time_conditions(args: argparse.Namespace, true: Lists, other: Lists
                           ) -> list[Condition]:
    """No list, then each list at each check, rewriting and score of `args`."""
    conditions: list[Condition] = [("decode-time", "no list", "-", (None, {}), None)]
    for check_text in args.checks:
        check = threshold(check_text, CHECK_THRESHOLD)
        for rewrite_text in args.rewrites:
            rewrite = threshold(rewrite_text, REWRITE_THRESHOLD)
            for score_text in args.scores:
                value = None if score_text == "default" else float(score_text)
                shown = value if value is not None else (CHECKED_SCORE if check is not None
                                                         else DEFAULT_SCORE)
                label = (f"{shown:g}, " + ("unchecked" if check is None
                                           else f"checked at {check:g}")
                         + ("" if rewrite is None else f", rewritten at {rewrite:g}"))
                options = {"hotword_check": check, "hotword_rewrite": rewrite}
                conditions.append(("decode-time", f"true words + {args.distractors} distractors",
                                   label, (value, options), {k: true[k] + other[k] for k in true}))
                conditions.append(("decode-time", f"{args.distractors} distractors only", label,
                                   (value, options), other))
    return conditions


def trained_conditions(args: argparse.Namespace, true: Lists, other: Lists
                       ) -> list[Condition]:
    """The trained-biasing model with no list, each list in the prompt alone, and in the
    prompt and biased at decoding (the default score, check and rewriting)."""
    both = {k: true[k] + other[k] for k in true}
    conditions: list[Condition] = [("trained", "no list", "-", (None, {}), None)]
    for label, option in (("prompt only", (0.0, {"hotword_check": None})),
                          (f"prompt + {CHECKED_SCORE:g}, checked at {CHECK_THRESHOLD:g}, "
                           f"rewritten at {REWRITE_THRESHOLD:g}", (None, {}))):
        conditions.append(("trained", f"true words + {args.distractors} distractors", label,
                           option, both))
        conditions.append(("trained", f"{args.distractors} distractors only", label, option,
                           other))
    return conditions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_demo_arguments(parser)
    parser.add_argument("--scores", nargs="+", default=["default"],
                        help="bonuses per token to compare ('default': the decoders' own)")
    parser.add_argument("--checks", nargs="+", default=["default", "none"],
                        help="hotword_check thresholds to compare ('default': the decoders' "
                             "own; 'none': every listed word biased, unchecked)")
    parser.add_argument("--rewrites", nargs="+", default=["default", "none"],
                        help="hotword_rewrite thresholds to compare ('default': the decoders' "
                             "own; 'none': no rewriting after decoding)")
    parser.add_argument("--trained_run_dir", type=Path, default=None,
                        help="also a run trained with task/context=hotwords (trained biasing), "
                             "in the same table")
    parser.add_argument("--train_text", type=Path, nargs="*", default=[],
                        help="more transcripts (Kaldi text) the models trained on, counted with "
                             "the demo's: their rare words are distractors too (the names a "
                             "fine-tune heard)")
    parser.add_argument("--lexicon", type=Path, default=None,
                        help="Mandarin words, a line each (names, terms): where an utterance's "
                             "reference holds one that training holds at most --rare times, it "
                             "is one of its true words (English words are found by spaces)")
    parser.add_argument("--ctc_head", type=Path, default=None,
                        help="a CTC head trained apart (experiment=ctc_head's checkpoint) for a "
                             "model trained without one: its lists are then checked and "
                             "rewritten")
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--rare", type=int, default=40,
                        help="an English word (or one of --lexicon) is rare at most this many "
                             "times in training")
    parser.add_argument("--distractors", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None,
                        help="only N utterances (a seeded sample)")
    parser.add_argument("--large", type=int, default=5000,
                        help="also a list this long (made-up two-character Mandarin words, and "
                             "made-up English words past what the set's characters make), "
                             "for speed; 0: not")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5,
                        help="with --batch_size: decode the set this many times a condition")
    parser.add_argument("--repeats", type=int, default=1,
                        help="one at a time: decode each utterance this many times a condition "
                             "(in turn) and count its fastest (steadier ratios)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="decode in batches of N with one list for the whole set (as "
                             "evaluate.py's hotwords=), not one utterance at a time")
    parser.add_argument("--breakdown", action="store_true",
                        help="also print where the host's time of the hotwords goes in each "
                             "condition (spotting, rewriting and its parts, the beam's bonus), "
                             "in ms an utterance")
    parser.add_argument("--hypotheses", type=Path, default=None,
                        help="also write each condition's hypotheses (Kaldi text, one file a "
                             "row of the table, numbered as its rows) and the utterances whose "
                             "list word was counted as inserted, to this directory")
    parser.add_argument("--set", default="test",
                        help="the Kaldi set under <data_dir>/demo/kaldi decoded (test: the "
                             "held-out sentences; unseen_voices: voices training never heard; "
                             "names_test, names_dev: sentences with rare proper names, made with "
                             "`python -m mooer.demo.corpus --kinds name`; made_up_names_test: "
                             "names no model heard, `--kinds made_up_name`; zh_names_test: "
                             "Mandarin names, `--kinds zh_name`, with --lexicon)")
    args = parser.parse_args()
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds: at least 1")
    kaldi = demo_kaldi(args)
    trained = [t for path in [kaldi / "train" / "text", *args.train_text]
               for _, t in read_table(path)]
    counts = vocabulary(trained)
    lexicon = None
    if args.lexicon:
        words = [line.strip() for line in args.lexicon.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        lexicon = {w: sum(text.count(w) for text in trained) for w in words}
    tests = dict(read_table(kaldi / args.set / "text"))
    if args.limit:  # a seeded sample, in the file's order
        chosen = set(random.Random(args.seed).sample(sorted(tests), args.limit))
        tests = {k: v for k, v in tests.items() if k in chosen}
    audio = dict(read_table(kaldi / args.set / "wav.scp"))
    true, other = lists(tests, counts, args.rare, args.distractors, args.seed, lexicon)
    listed_true, listed_other = true, other
    if args.batch_size:  # one list for the whole set
        first = next(iter(tests))
        union = sorted({w for words in true.values() for w in words})
        listed_true = {key: union for key in tests}
        kept = [w for w in other[first] if not any(holds(text, w) for text in tests.values())]
        listed_other = {key: kept for key in tests}
    decoding = {"num_beams": args.num_beams, "max_new_tokens": 48}
    recognizers = {"decode-time": demo_recognizer(
        args, args.batch_size or 1, decoding,
        *([f"model.ctc_head={args.ctc_head}"] if args.ctc_head else []))}
    tokenizer = recognizers["decode-time"].model.tokenizer
    torch.set_grad_enabled(False)

    conditions = decode_time_conditions(args, listed_true, listed_other)
    if args.large:
        chars = sorted({c for text in tests.values() for c in text if "\u4e00" <= c <= "\u9fff"}
                       or {c for word in counts for c in word if "\u4e00" <= c <= "\u9fff"})
        rng = random.Random(args.seed + 1)
        made_up = {rng.choice(chars) + rng.choice(chars) for _ in range(4 * args.large)}
        large = sorted(made_up - set(counts))[: args.large]
        # past what the set's Han characters make: made-up English words of 2 to 4 syllables
        syllables = [a + b for a in ("k", "l", "m", "r", "st", "v", "dr", "p", "qu", "z", "b",
                                     "t", "gr", "f", "h", "j", "w", "n")
                     for b in ("a", "o", "i", "en", "el", "in", "or", "is", "un")]
        english = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
                          for _ in range(2 * (args.large - len(large)))} - set(counts))
        large += english[: args.large - len(large)]
        started = time.perf_counter()
        ContextGraph.build([(w, None) for w in large], tokenizer)
        conditions.append(("decode-time", f"true words + {len(large)} made-up words (graph "
                           f"built in {time.perf_counter() - started:.2f} s)", conditions[1][2],
                           conditions[1][3], {k: listed_true[k] + large for k in tests}))
    if args.trained_run_dir:
        recognizers["trained"] = demo_recognizer(argparse.Namespace(**{
            **vars(args), "run_dir": args.trained_run_dir}), args.batch_size or 1, decoding)
        if not recognizers["trained"].prompt.context.applies("asr"):
            raise SystemExit(f"{args.trained_run_dir} was not trained with a hotword list in "
                             "its instruction (task/context=hotwords)")
        conditions += trained_conditions(args, listed_true, listed_other)

    def shuffled(key: str, words: list[str]) -> list[str]:
        """A list's order tells nothing: the same list in the same order in every condition."""
        return random.Random(f"{args.seed}:{key}").sample(words, len(words))
    hypotheses: list[dict[str, str]] = [{} for _ in conditions]
    breakdown = Breakdown() if args.breakdown else None
    seconds = [0.0] * len(conditions)
    ratios: list[float | None] = [None] * len(conditions)  # None: from the seconds
    if args.batch_size:
        decode_whole_set(args, kaldi / args.set, tests, recognizers, conditions, tokenizer,
                         hypotheses, seconds, ratios, breakdown)
    else:
        decode_one_by_one(args, tests, audio, recognizers, conditions, tokenizer, shuffled,
                          hypotheses, seconds, breakdown)
    report(args, tests, true, conditions, hypotheses, seconds, ratios)
    if breakdown is not None:
        breakdown.report(conditions)


class Breakdown:
    """Where the host's time of the hotwords goes (`--breakdown`): each part's function timed
    for the run, where decoding looks it up, and its seconds counted to the condition being
    decoded. The parts are nested as the calls are: rewriting holds its four parts (and a
    little more: the words to try, the beam's hypotheses read as text)."""

    PARTS = (("spotting (frame summaries and the search)", decode_module, "hearing"),
             ("rewriting", decode_module, "rewrite"),
             ("- candidates (placed, written, tokenized)", rewrite_module, "proposals"),
             ("- their CTC pass", rewrite_module, "scored_on"),
             ("- the answers' alignment", rewrite_module, "viterbi_batch"),
             ("- the decoder passes", rewrite_module, "score_options"),
             ("the beam's bonus", HotwordBias, "__call__"))

    def __init__(self) -> None:
        self.condition: int | None = None  # None: a warm-up, not counted
        self.seconds: Counter = Counter()  # (condition, part): seconds
        self.utterances: Counter = Counter()
        for part, owner, name in self.PARTS:
            setattr(owner, name, self.timed(part, getattr(owner, name)))

    def timed(self, part: str, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                if self.condition is not None:
                    self.seconds[self.condition, part] += time.perf_counter() - started
        return timed

    @staticmethod
    @contextlib.contextmanager
    def of(breakdown: Breakdown | None, condition: int, utterances: int):
        """Count what runs inside to `condition` (`utterances` decoded)."""
        if breakdown is None:
            yield
            return
        breakdown.condition = condition
        try:
            yield
        finally:
            breakdown.condition = None
            breakdown.utterances[condition] += utterances

    def report(self, conditions: list[Condition]) -> None:
        shown = [c for c, condition in enumerate(conditions) if condition[4] is not None]
        print("\nwhere the host's time of the hotwords goes, ms an utterance (--breakdown):\n")
        print("| part | " + " | ".join(f"{conditions[c][1]}, {conditions[c][2]}" for c in shown)
              + " |\n|---|" + "---|" * len(shown))
        for part, _, _ in self.PARTS:
            print(f"| {part} | " + " | ".join(
                f"{1000 * self.seconds[c, part] / max(self.utterances[c], 1):.2f}"
                for c in shown) + " |")


def decode_whole_set(args: argparse.Namespace, source: Path, tests: dict[str, str],
                     recognizers: dict, conditions: list[Condition], tokenizer,
                     hypotheses: list[dict[str, str]], seconds: list[float],
                     ratios: list[float | None], breakdown: Breakdown | None = None) -> None:
    """The set in batches under every condition in turn (one list for all), `--rounds` times
    after a warm-up, each round in another order; each condition's seconds are its fastest
    round's (the one a busy machine disturbed least), and its ratio to no list the median of
    the rounds' own ratios (a round's conditions run minutes apart at most, so a slow spell of
    the machine weighs on both sides of a ratio)."""
    first = next(iter(tests))
    graphs = [None if words_of is None else
              ContextGraph.build([(w, None) for w in words_of[first]], tokenizer, value)
              for _, _, _, (value, _), words_of in conditions]
    keys = frozenset(tests)
    for recognizer in recognizers.values():  # warm-up
        recognizer.decode(source, "asr", progress=False, keys=frozenset([first]))
    rounds: list[list[float]] = [[] for _ in conditions]
    for turn in tqdm(range(args.rounds), desc="rounds"):
        order = list(range(len(conditions)))
        for c in order[turn:] + order[:turn]:
            method, _, _, (_, options), _ = conditions[c]
            with Breakdown.of(breakdown, c, len(keys)):
                started = time.perf_counter()
                decoded = recognizers[method].decode(source, "asr", progress=False, keys=keys,
                                                     hotwords=graphs[c], **options)
                rounds[c].append(time.perf_counter() - started)
            hypotheses[c].update(decoded.hypotheses)
    baseline = baseline_of(conditions)
    for c, taken in enumerate(rounds):
        seconds[c] = min(taken)
        base = baseline[conditions[c][0]]
        ratios[c] = statistics.median(t / b for t, b in zip(taken, rounds[base], strict=True))


def decode_one_by_one(args: argparse.Namespace, tests: dict[str, str], audio: dict[str, str],
                      recognizers: dict, conditions: list[Condition], tokenizer, shuffled,
                      hypotheses: list[dict[str, str]], seconds: list[float],
                      breakdown: Breakdown | None = None) -> None:
    """Each utterance under every condition in turn, with its own list (a busy machine slows
    all conditions alike)."""
    with tempfile.TemporaryDirectory() as work:
        for index, key in enumerate(tqdm(tests, desc="utterances", unit="utt")):
            one = Path(work) / key
            one.mkdir()
            (one / "wav.scp").write_text(f"{key} {audio[key]}\n", encoding="utf-8")
            if index == 0:  # warm-up
                for recognizer in recognizers.values():
                    recognizer.decode(one, "asr", progress=False)
            graphs = [ContextGraph.build([(w, None) for w in shuffled(key, words_of[key])],
                                         tokenizer, value) if words_of else None
                      for _, _, _, (value, _), words_of in conditions]
            fastest = [math.inf] * len(conditions)
            # each utterance under every condition in turn, --repeats times: a busy machine
            # slows all alike, and each condition's fastest decoding of it counts
            for _ in range(args.repeats):
                for c, (method, _, _, (_, options), _) in enumerate(conditions):
                    with Breakdown.of(breakdown, c, 1):
                        started = time.perf_counter()
                        decoded = recognizers[method].decode(one, "asr", progress=False,
                                                             hotwords=graphs[c], **options)
                        fastest[c] = min(fastest[c], time.perf_counter() - started)
                    if hypotheses[c].get(key, decoded.hypotheses[key]) != decoded.hypotheses[key]:
                        raise SystemExit(f"{key} decoded two ways under one condition: "
                                         f"{hypotheses[c][key]!r}, {decoded.hypotheses[key]!r}")
                    hypotheses[c].update(decoded.hypotheses)
            for c, taken in enumerate(fastest):
                seconds[c] += taken


def baseline_of(conditions: list[Condition]) -> dict[str, int]:
    """Each method's condition without a list (what its times are compared with)."""
    return {method: next(c for c, condition in enumerate(conditions)
                         if condition[0] == method and condition[4] is None)
            for method in dict.fromkeys(condition[0] for condition in conditions)}


def report(args: argparse.Namespace, tests: dict[str, str], true: Lists,
           conditions: list[Condition], hypotheses: list[dict[str, str]], seconds: list[float],
           ratios: list[float | None]) -> None:
    """The table: each condition's B-WER, U-WER, MER, insertions and time (and its ratio to
    no list: `ratios` where given, else from the seconds)."""
    baseline = baseline_of(conditions)
    with_words = sum(1 for k in tests if true[k])
    print(f"\n{len(tests)} utterances of {args.set} ({with_words} with a rare "
          f"{'word' if args.lexicon else 'English word'}; "
          f"{sum(len(v) for v in true.values())} rare words), beam {args.num_beams}, "
          f"{f'batches of {args.batch_size}, one list' if args.batch_size else 'one at a time'}"
          f"{f', the fastest of {args.repeats}' if args.repeats > 1 and not args.batch_size else ''}, "
          f"{args.run_dir}"
          f"{f' and (trained) {args.trained_run_dir}' if args.trained_run_dir else ''}, "
          f"CPU {torch.get_num_threads()} threads\n")
    print("| biasing | list | score | B-WER | U-WER | MER | inserted | decoding s | "
          "vs no list |\n|---|---|---|---|---|---|---|---|---|")
    for c, (method, name, label, _, listed) in enumerate(conditions):
        hyps, plain = hypotheses[c], hypotheses[baseline[method]]
        result = score(tests, hyps)
        biased = biased_score(result, true)
        inserted_in = [] if listed is None else [
            key for key, hyp in hyps.items()
            if any(holds(hyp, w) and not holds(tests[key], w) and not holds(plain.get(key, ""), w)
                   for w in listed[key])]
        inserted = len(inserted_in)
        if args.hypotheses is not None:
            args.hypotheses.mkdir(parents=True, exist_ok=True)
            slug = re.sub(r"[^a-z0-9]+", "_", f"{method} {name} {label}".lower()).strip("_")
            (args.hypotheses / f"{c:02d}.{slug}.txt").write_text(
                "".join(f"{key} {hyps[key]}\n" for key in sorted(hyps)), encoding="utf-8")
            (args.hypotheses / f"{c:02d}.{slug}.inserted").write_text("".join(
                f"{key}\tref: {tests[key]}\tno list: {plain.get(key, '')}\thyp: {hyps[key]}\n"
                for key in sorted(inserted_in)), encoding="utf-8")
        print(f"| {method} | {name} | {label} | {biased.b_wer:.2f} % | {biased.u_wer:.2f} % | "
              f"{result.error_rate:.2f} % | "
              f"{'-' if listed is None else f'{100 * inserted / len(tests):.1f} %'} | "
              f"{seconds[c]:.1f} | "
              f"{ratios[c] or seconds[c] / seconds[baseline[method]]:.2f}x |")

if __name__ == "__main__":
    main()
