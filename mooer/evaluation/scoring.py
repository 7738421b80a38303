"""Error rates with alignments, counted as MooER's `compute-wer.py --char=1` counts them, and
BLEU/chrF.

Tokens (`--char=1`, the default): each CJK (Unicode "Lo") character is a token; any other token
runs from its first character over the ASCII characters after it (`3.5`, `50%`, `IT'S`,
`HELLO;WORLD`, `WORLD.` stay whole; `café` gives `CAF` `É`); the punctuation `! , ?` and CJK
punctuation is dropped where a token would start; `<tags>` are removed; upper case. `--char=0`
splits on spaces. Two deliberate differences from compute-wer.py, printed with the score: `▁`
counts as a space (mooer's labels use spaces), and an utterance without hypothesis counts as
deletions (compute-wer.py leaves it out; its figure is printed beside ours then).

    mooer-score ref_text hyp_text [--out wer] [--bleu] [--char=1] [--v=1] [--cs=0] [--rt=1]
        [--ig=ignore_words] [--splitfile=file] [--padding-symbol=space|underline] [--maxw=N]
        [--cluster=file] [--concat-all=1] [--merge_en_single=1]
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mooer.data.hotword_list import read_hotwords
from mooer.data.text import WORD_JOINER, read_table

PUNCTUATION = frozenset("!,?、。！，；？：「」︰『』《》")  # compute-wer.py's list, and no more
SPACES = frozenset(" \t\r\n")


def characterize(text: str) -> list[str]:
    """compute-wer.py's `--char=1` split (before normalization)."""
    tokens, i = [], 0
    while i < len(text):
        char = text[i]
        category = unicodedata.category(char)
        if char in PUNCTUATION or category in ("Zs", "Cn") or char in SPACES:
            i += 1
        elif category == "Lo":
            tokens.append(char)
            i += 1
        else:  # over the ASCII that follows; `<unk><noise>` gives two tokens
            stop = ">" if char == "<" else " "
            j = i + 1
            while j < len(text) and ord(text[j]) < 128 and text[j] not in SPACES \
                    and text[j] != stop:
                j += 1
            if j < len(text) and text[j] == ">":
                j += 1
            tokens.append(text[i:j])
            i = j
    return tokens


def strip_tags(token: str) -> str:
    """The token without its `<...>` spans."""
    kept, i = [], 0
    while i < len(token):
        if token[i] == "<":
            while i < len(token) and token[i] != ">":
                i += 1
            i += 1
        else:
            kept.append(token[i])
            i += 1
    return "".join(kept)


@dataclass(frozen=True)
class Tokenization:
    """compute-wer.py's switches: --char, --cs, --rt, --ig and --splitfile."""

    char: bool = True
    case_sensitive: bool = False
    remove_tags: bool = True
    ignore: frozenset[str] = frozenset()
    split: Mapping[str, list[str]] = field(default_factory=dict)


def tokenize(text: str, how: Tokenization = Tokenization()) -> list[str]:
    """The tokens compute-wer.py scores (`▁` taken as a space)."""
    text = text.replace(WORD_JOINER, " ")
    tokens = []
    for token in characterize(text) if how.char else text.split():
        if not how.case_sensitive:
            token = token.upper()
        if token in how.ignore:
            continue
        if how.remove_tags:
            token = strip_tags(token)
        if token:
            tokens += how.split.get(token, [token])
    return tokens


@dataclass
class Alignment:
    """One utterance: aligned token pairs ('' marks a gap) and the error counts."""

    ref: list[str]
    hyp: list[str]
    correct: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def num_ref(self) -> int:
        return self.correct + self.substitutions + self.deletions


def align(ref: list[str], hyp: list[str]) -> Alignment:
    """Levenshtein alignment; ties prefer deletion, then insertion, then the diagonal (as
    MooER's compute-wer.py, so S/D/I splits match it)."""
    rows, cols = len(ref) + 1, len(hyp) + 1
    dist = [[0] * cols for _ in range(rows)]
    move = [[""] * cols for _ in range(rows)]
    for i in range(1, rows):
        dist[i][0], move[i][0] = i, "del"
    for j in range(1, cols):
        dist[0][j], move[0][j] = j, "ins"
    for i in range(1, rows):
        for j in range(1, cols):
            best, how = dist[i - 1][j] + 1, "del"
            if dist[i][j - 1] + 1 < best:
                best, how = dist[i][j - 1] + 1, "ins"
            same = ref[i - 1] == hyp[j - 1]
            if dist[i - 1][j - 1] + (0 if same else 1) < best:
                best, how = dist[i - 1][j - 1] + (0 if same else 1), "cor" if same else "sub"
            dist[i][j], move[i][j] = best, how
    result = Alignment([], [])
    i, j = rows - 1, cols - 1
    while i > 0 or j > 0:
        how = move[i][j]
        if how in ("cor", "sub"):
            result.ref.append(ref[i - 1])
            result.hyp.append(hyp[j - 1])
            if how == "cor":
                result.correct += 1
            else:
                result.substitutions += 1
            i, j = i - 1, j - 1
        elif how == "del":
            result.ref.append(ref[i - 1])
            result.hyp.append("")
            result.deletions += 1
            i -= 1
        else:
            result.ref.append("")
            result.hyp.append(hyp[j - 1])
            result.insertions += 1
            j -= 1
    result.ref.reverse()
    result.hyp.reverse()
    return result


def phrase_marks(tokens: Sequence[str], phrases: Iterable[Sequence[str]]) -> list[bool]:
    """For each token, whether it lies inside an occurrence of one of `phrases` (token
    sequences) in `tokens`."""
    starts: dict[str, list[tuple[str, ...]]] = {}
    for phrase in phrases:
        if phrase:
            starts.setdefault(phrase[0], []).append(tuple(phrase))
    marks = [False] * len(tokens)
    for i, token in enumerate(tokens):
        for phrase in starts.get(token, ()):
            if tuple(tokens[i:i + len(phrase)]) == phrase:
                marks[i:i + len(phrase)] = [True] * len(phrase)
    return marks


@dataclass
class Biased:
    """B-WER and U-WER counts (Le et al., 2021): errors on the reference tokens inside hotword
    occurrences (`biased`) and on all others (`unbiased`); an inserted token counts where the
    hypothesis has it (inside a hotword occurrence of the hypothesis, or not)."""

    biased: Alignment
    unbiased: Alignment

    @property
    def b_wer(self) -> float:
        return _rate(self.biased)

    @property
    def u_wer(self) -> float:
        return _rate(self.unbiased)

    def line(self) -> str:
        return (f"B-WER -> {self.b_wer:4.2f} % {_counts(self.biased)}\n"
                f"U-WER -> {self.u_wer:4.2f} % {_counts(self.unbiased)}")


def biased_score(result: Score, hotwords: Iterable[str] | Mapping[str, Iterable[str]],
                 how: Tokenization = Tokenization()) -> Biased:
    """B-WER and U-WER of a scored set, for one hotword list or a list per uttid (tokenized as
    the references are)."""
    def phrases(words: Iterable[str]) -> list[list[str]]:
        return [tokenize(word, how) for word in words]

    shared = None if isinstance(hotwords, Mapping) else phrases(hotwords)
    counts = Biased(Alignment([], []), Alignment([], []))
    for key, a in result.utterances.items():
        listed = shared if shared is not None else phrases(hotwords.get(key, ()))  # type: ignore[union-attr]
        ref_marks = iter(phrase_marks([t for t in a.ref if t], listed))
        hyp_marks = iter(phrase_marks([t for t in a.hyp if t], listed))
        for ref, hyp in zip(a.ref, a.hyp, strict=True):
            hyp_marked = next(hyp_marks) if hyp else False
            if ref:
                side = counts.biased if next(ref_marks) else counts.unbiased
                name = "deletions" if not hyp else "correct" if ref == hyp else "substitutions"
            else:
                side = counts.biased if hyp_marked else counts.unbiased
                name = "insertions"
            setattr(side, name, getattr(side, name) + 1)
    return counts


def _width(text: str) -> int:
    return sum(1 + (unicodedata.east_asian_width(c) in "AFW") for c in text)


def _counts(a: Alignment) -> str:
    return f"N={a.num_ref} C={a.correct} S={a.substitutions} D={a.deletions} I={a.insertions}"


def _rate(a: Alignment) -> float:
    return 100.0 * a.errors / a.num_ref if a.num_ref else 0.0


@dataclass
class Score:
    """Totals over a test set, the per-utterance alignments, the keys without hypothesis and
    the hypotheses without reference (not scored)."""

    total: Alignment
    utterances: dict[str, Alignment] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return _rate(self.total)

    def total_with_hypothesis(self) -> Alignment:
        """Totals over the utterances that have a hypothesis (compute-wer.py's figure)."""
        total = Alignment([], [])
        for key, a in self.utterances.items():
            if key not in self.missing:
                for name in ("correct", "substitutions", "deletions", "insertions"):
                    setattr(total, name, getattr(total, name) + getattr(a, name))
        return total


def score(refs: dict[str, str], hyps: dict[str, str], how: Tokenization = Tokenization()
          ) -> Score:
    """Align every reference; an utterance without a hypothesis counts as all deletions."""
    total = Alignment([], [])
    result = Score(total)
    for key, ref in refs.items():
        if key not in hyps:
            result.missing.append(key)
        a = align(tokenize(ref, how), tokenize(hyps.get(key, ""), how))
        result.utterances[key] = a
        for name in ("correct", "substitutions", "deletions", "insertions"):
            setattr(total, name, getattr(total, name) + getattr(a, name))
    result.extra = sorted(set(hyps) - set(refs))
    return result


CLASS_OF_NAME = (("DIGIT", "Number"), ("CJK UNIFIED IDEOGRAPH", "Mandarin"),
                 ("CJK COMPATIBILITY IDEOGRAPH", "Mandarin"), ("LATIN CAPITAL LETTER", "English"),
                 ("LATIN SMALL LETTER", "English"), ("HIRAGANA LETTER", "Japanese"))
NEUTRAL_NAMES = ("AMPERSAND", "APOSTROPHE", "COMMERCIAL AT", "DEGREE CELSIUS", "EQUALS SIGN",
                 "FULL STOP", "HYPHEN-MINUS", "LOW LINE", "NUMBER SIGN", "PLUS SIGN", "SEMICOLON")


def token_class(token: str) -> str:
    """compute-wer.py's default word cluster: Mandarin, English, Number, Japanese or Other (a
    token of one class, `& ' @ . - _ # + ;` aside)."""
    classes = []
    for char in token:
        name = unicodedata.name(char, "")
        if name.startswith(NEUTRAL_NAMES):
            continue
        found = next((cls for prefix, cls in CLASS_OF_NAME if name.startswith(prefix)), None)
        if found is None:
            return "Other"
        classes.append(found)
    return classes[0] if classes and len(set(classes)) == 1 else "Other"


def cluster_totals(result: Score, words: Iterable[str]) -> Alignment:
    """Counts over the given words: reference tokens for C/S/D, hypothesis tokens for I."""
    words, total = set(words), Alignment([], [])
    for a in result.utterances.values():
        for ref, hyp in zip(a.ref, a.hyp, strict=True):
            if ref in words:
                name = "deletions" if not hyp else "correct" if ref == hyp else "substitutions"
                setattr(total, name, getattr(total, name) + 1)
            elif not ref and hyp in words:
                total.insertions += 1
    return total


def format_wer(result: Score, duplicates: Iterable[str] = (), verbose: int = 1,
               padding: str = " ", max_words: int | None = None,
               clusters: Iterable[tuple[str, list[str]]] = (), under_totals: str = "") -> str:
    """The `wer` file: per-utterance alignments (verbose), then `Overall -> x.xx % N=.. C=.. S=..
    D=.. I=..` (and `under_totals`, lines of ours such as B-WER and U-WER), then the keys left
    out of the score (missing or extra hypotheses, uttids decoded twice), then (verbose) the rate
    of each default word class and of the `clusters`. As compute-wer.py writes it
    (`--padding-symbol`, `--maxw`, `--cluster`)."""
    lines = []
    for key, a in result.utterances.items() if verbose else ():
        lines += ["", f"utt: {key}", f"WER: {_rate(a):4.2f} % {_counts(a)}"]
        widths = [max(_width(r), _width(h)) for r, h in zip(a.ref, a.hyp, strict=True)]
        step = max_words or max(1, len(widths))
        for start in range(0, max(1, len(widths)), step):
            part = range(start, min(start + step, len(widths)))
            lines.append("lab: " + "".join(a.ref[i] + padding * (widths[i] - _width(a.ref[i])) + " "
                                           for i in part))
            lines.append("rec: " + "".join(a.hyp[i] + padding * (widths[i] - _width(a.hyp[i])) + " "
                                           for i in part))
    if verbose:
        lines += ["", "=" * 75, ""]
    lines.append(f"Overall -> {result.error_rate:4.2f} % {_counts(result.total)}")
    if under_totals:
        lines.append(under_totals)
    if result.missing:
        lines.append(f"Missing hypotheses (scored as deletions): {len(result.missing)}: "
                     + " ".join(result.missing))
        present = result.total_with_hypothesis()
        lines.append(f"compute-wer.py, which skips utterances without hypothesis: "
                     f"{_rate(present):4.2f} % {_counts(present)}")
    if result.extra:
        lines.append(f"Hypotheses without a reference (not scored): {len(result.extra)}: "
                     + " ".join(result.extra))
    duplicates = sorted(duplicates)
    if duplicates:
        lines.append(f"Uttids decoded more than once (the last hypothesis kept): "
                     f"{len(duplicates)}: " + " ".join(duplicates))
    if verbose:
        classes: dict[str, dict[str, None]] = {}  # in order of first appearance, as compute-wer
        for a in result.utterances.values():
            for token in [t for t in a.hyp if t] + [t for t in a.ref if t]:
                classes.setdefault(token_class(token), {})[token] = None
        named = [*((name, list(words)) for name, words in classes.items()), *clusters]
        for name, words in named:
            total = cluster_totals(result, words)
            lines.append(f"{name} -> {_rate(total):4.2f} % {_counts(total)}")
        lines += ["", "=" * 75]
    return "\n".join(lines) + "\n"


def bleu_chrf(refs: dict[str, str], hyps: dict[str, str], tokenize_as: str = "13a"
              ) -> tuple[float, float]:
    """Corpus BLEU and chrF (sacrebleu) over the references; missing hypotheses are empty."""
    import sacrebleu

    keys = list(refs)
    references = [[refs[k].replace(WORD_JOINER, " ") for k in keys]]
    hypotheses = [hyps.get(k, "").replace(WORD_JOINER, " ") for k in keys]
    bleu = sacrebleu.corpus_bleu(hypotheses, references, tokenize=tokenize_as)
    chrf = sacrebleu.corpus_chrf(hypotheses, references)
    return bleu.score, chrf.score


def _files(*paths: Path) -> tuple[Path, ...]:
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} {'is a directory' if path.is_dir() else 'does not exist'}"
                                    ": give a Kaldi text file (uttid text per line)")
    return paths


def _latin(char: str) -> bool:
    return "A" <= char <= "Z" or "a" <= char <= "z"


def merge_single_letters(text: str) -> str:
    """compute-wer.py's --merge_en_single: runs of one-letter English words are glued into one
    word (`G P U 三 个` -> `GPU三个`), a space kept between it and English letters before it;
    other words are glued to what precedes them unless both sides are English letters."""
    merged, letters = "", ""

    def flush() -> None:
        nonlocal merged, letters
        if letters:
            if len(merged) > 1 and _latin(merged[-1]) and _latin(merged[-2]):
                merged += " "
            elif len(merged) == 1 and _latin(merged[-1]):
                raise ValueError(f"cannot merge {text!r} (compute-wer.py fails on it too)")
            merged, letters = merged + letters, ""

    for word in text.split():
        if len(word) == 1 and _latin(word):
            letters += word
            continue
        if len(word) == 1 and not "\u4e00" <= word <= "\u9fa5":
            raise ValueError(f"cannot merge the one-character word {word!r} of {text!r}")
        if letters:
            flush()
            if _latin(word[0]) and not _latin(word[1]):
                merged, word = merged + word[0], word[1:]
            elif _latin(word[0]):
                word = " " + word
        elif _latin(word[0]) and merged and _latin(merged[-1]):
            word = " " + word
        merged += word
    flush()
    return merged


def concat_all(texts: dict[str, str]) -> dict[str, str]:
    """One utterance `concat`: the texts in the order of the number after their uttids' last
    `_` (recordings cut into `rec_1`, `rec_2`...)."""
    def number(key: str) -> int:
        tail = key.rsplit("_", 1)[-1]
        if not tail.isdigit():
            raise ValueError(f"uttid {key} does not end in _<number>")
        return int(tail)

    return {"concat": " ".join(texts[k] for k in sorted(texts, key=number))}


def read_clusters(path: Path) -> list[tuple[str, list[str]]]:
    """compute-wer.py's cluster file: `<Name>` opens a group of words, `</Name>` closes it."""
    clusters: list[tuple[str, list[str]]] = []
    name, words = "", list[str]()
    for token in path.read_text(encoding="utf-8-sig").split():
        if name and token == f"</{name}>":
            clusters.append((name, words))
            name, words = "", list[str]()
        elif not name and token.startswith("<") and token.endswith(">"):
            name, words = token[1:-1], []
        else:
            words.append(token)
    return clusters


def _switch(value: str) -> bool:
    return value.lower() not in ("0", "false")


def _words(path: Path | None) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()
            if line.strip()] if path else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mooer-score", description=__doc__.split("\n")[0])
    parser.add_argument("ref", type=Path, help="Kaldi text with references")
    parser.add_argument("hyp", type=Path, help="Kaldi text (or uttid<TAB>text) with hypotheses")
    parser.add_argument("--out", type=Path, default=None, help="write the wer file here")
    parser.add_argument("--bleu", action="store_true", help="also print BLEU and chrF")
    parser.add_argument("--char", type=_switch, default=True,
                        help="1 (default): CJK characters one by one, as compute-wer.py --char=1; "
                             "0: tokens split on spaces")
    parser.add_argument("--v", type=int, default=1, help="1: per-utterance alignments; 0: totals")
    parser.add_argument("--cs", type=_switch, default=False, help="case sensitive")
    parser.add_argument("--rt", type=_switch, default=True, help="remove <tags>")
    parser.add_argument("--ig", type=Path, help="file of words to ignore, one a line")
    parser.add_argument("--splitfile", type=Path, help="lines `word part part...`: split words")
    parser.add_argument("--padding-symbol", choices=["space", "underline"], default="space")
    parser.add_argument("--maxw", type=int, default=None, help="tokens per alignment line")
    parser.add_argument("--cluster", type=Path, help="file of `<Name> word word </Name>` groups: "
                                                      "an error rate for each")
    parser.add_argument("--concat-all", type=_switch, default=False,
                        help="score all utterances as one, in the order of their uttids' last "
                             "`_N` number")
    parser.add_argument("--hotwords", type=Path,
                        help="a hotword list (a word a line, optionally <TAB>weight): also "
                             "print B-WER (errors on its words) and U-WER (on all others)")
    parser.add_argument("--merge_en_single", type=_switch, default=False,
                        help="glue runs of one-letter English words (G P U -> GPU) first")
    args = parser.parse_args(argv)
    try:
        refs, hyps = (dict(read_table(path)) for path in _files(args.ref, args.hyp))
        ignore = _words(args.ig)
        split = {w.split()[0]: w.split()[1:] for w in _words(args.splitfile) if len(w.split()) > 1}
        hotwords = [word for word, _ in read_hotwords(args.hotwords)] if args.hotwords else []
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not refs:
        print(f"error: {args.ref} holds no references: nothing to score", file=sys.stderr)
        return 2
    ids_only = [key for key, text in refs.items() if not text.strip()]
    if len(ids_only) == len(refs):
        print(f"error: every line of {args.ref} holds only an id, no reference text: nothing to "
              "score (is it the right file?)", file=sys.stderr)
        return 2
    if ids_only:
        print(f"warning: {len(ids_only)} reference line(s) of {args.ref} hold only an id (scored "
              f"as empty references): {' '.join(ids_only[:10])}"
              f"{' ...' if len(ids_only) > 10 else ''}", file=sys.stderr)
    try:
        if args.concat_all:
            refs, hyps = concat_all(refs), concat_all(hyps)
        if args.merge_en_single:
            refs, hyps = ({k: merge_single_letters(v) for k, v in texts.items()}
                          for texts in (refs, hyps))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    clusters = read_clusters(args.cluster) if args.cluster else []
    if not args.cs:
        ignore = [w.upper() for w in ignore]
        split = {k.upper(): [p.upper() for p in v] for k, v in split.items()}
    how = Tokenization(args.char, args.cs, args.rt, frozenset(ignore), split)
    result = score(refs, hyps, how)
    biased = biased_score(result, hotwords, how).line() if hotwords else ""
    report = format_wer(result, verbose=args.v,
                        padding="_" if args.padding_symbol == "underline" else " ",
                        max_words=args.maxw,
                        clusters=[(n, [w if args.cs else w.upper() for w in ws])
                                  for n, ws in clusters], under_totals=biased)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
        print(report[report.index("Overall -> "):], end="")  # the totals and what was left out
    else:
        print(report, end="")
    if args.bleu:
        bleu, chrf = bleu_chrf(refs, hyps)
        print(f"BLEU {bleu:.2f} chrF {chrf:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
