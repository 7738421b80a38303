"""Error rates with alignments (MooER's compute-wer.py, char mode) and BLEU/chrF.

Tokens: every CJK character is one token and every run of other letters/digits is one word, so
the same alignment gives CER on Chinese, WER on English and MER on mixed text. Both sides get the
same normalization: `▁` to space, upper case, punctuation removed.

    mooer-score ref_text hyp_text [--out wer] [--bleu]
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mooer.data.text import read_table

PUNCTUATION = set("!,?.;:\"'、。！，；？：「」︰『』《》（）()[]")


def tokenize(text: str) -> list[str]:
    """CJK characters one by one, other words whole (MooER's `--char=1` tokenization)."""
    text = text.replace("▁", " ").upper()
    tokens, word = [], []
    for char in text:
        category = unicodedata.category(char)
        if char.isspace() or category in ("Zs", "Cn") or char in PUNCTUATION:
            if word:
                tokens.append("".join(word))
                word = []
        elif category == "Lo":  # CJK and other letters without case
            if word:
                tokens.append("".join(word))
                word = []
            tokens.append(char)
        else:
            word.append(char)
    if word:
        tokens.append("".join(word))
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


def score(refs: dict[str, str], hyps: dict[str, str]) -> Score:
    """Align every reference; an utterance without a hypothesis counts as all deletions."""
    total = Alignment([], [])
    result = Score(total)
    for key, ref in refs.items():
        if key not in hyps:
            result.missing.append(key)
        a = align(tokenize(ref), tokenize(hyps.get(key, "")))
        result.utterances[key] = a
        for name in ("correct", "substitutions", "deletions", "insertions"):
            setattr(total, name, getattr(total, name) + getattr(a, name))
    result.extra = sorted(set(hyps) - set(refs))
    return result


def format_wer(result: Score, duplicates: Iterable[str] = ()) -> str:
    """The `wer` file: per-utterance alignments, then `Overall -> x.xx % N=.. C=.. S=.. D=.. I=..`,
    then the keys left out of the score (missing or extra hypotheses, uttids decoded twice)."""
    lines = []
    for key, a in result.utterances.items():
        lines += ["", f"utt: {key}", f"WER: {_rate(a):4.2f} % {_counts(a)}"]
        widths = [max(_width(r), _width(h)) for r, h in zip(a.ref, a.hyp, strict=True)]
        lines.append("lab: " + " ".join(r + " " * (w - _width(r))
                                        for r, w in zip(a.ref, widths, strict=True)))
        lines.append("rec: " + " ".join(h + " " * (w - _width(h))
                                        for h, w in zip(a.hyp, widths, strict=True)))
    lines += ["", "=" * 75, ""]
    lines.append(f"Overall -> {result.error_rate:4.2f} % {_counts(result.total)}")
    if result.missing:
        lines.append(f"Missing hypotheses (scored as deletions): {len(result.missing)}: "
                     + " ".join(result.missing))
    if result.extra:
        lines.append(f"Hypotheses without a reference (not scored): {len(result.extra)}: "
                     + " ".join(result.extra))
    duplicates = sorted(duplicates)
    if duplicates:
        lines.append(f"Uttids decoded more than once (the last hypothesis kept): "
                     f"{len(duplicates)}: " + " ".join(duplicates))
    return "\n".join(lines) + "\n"


def bleu_chrf(refs: dict[str, str], hyps: dict[str, str], tokenize_as: str = "13a"
              ) -> tuple[float, float]:
    """Corpus BLEU and chrF (sacrebleu) over the references; missing hypotheses are empty."""
    import sacrebleu

    keys = list(refs)
    references = [[refs[k].replace("▁", " ") for k in keys]]
    hypotheses = [hyps.get(k, "").replace("▁", " ") for k in keys]
    bleu = sacrebleu.corpus_bleu(hypotheses, references, tokenize=tokenize_as)
    chrf = sacrebleu.corpus_chrf(hypotheses, references)
    return bleu.score, chrf.score


def _files(*paths: Path) -> tuple[Path, ...]:
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} {'is a directory' if path.is_dir() else 'does not exist'}"
                                    ": give a Kaldi text file (uttid text per line)")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mooer-score", description=__doc__.split("\n")[0])
    parser.add_argument("ref", type=Path, help="Kaldi text with references")
    parser.add_argument("hyp", type=Path, help="Kaldi text (or uttid<TAB>text) with hypotheses")
    parser.add_argument("--out", type=Path, default=None, help="write the wer file here")
    parser.add_argument("--bleu", action="store_true", help="also print BLEU and chrF")
    args = parser.parse_args(argv)
    try:
        refs, hyps = (dict(read_table(path)) for path in _files(args.ref, args.hyp))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not refs:
        print(f"error: {args.ref} holds no references: nothing to score", file=sys.stderr)
        return 2
    result = score(refs, hyps)
    report = format_wer(result)
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
