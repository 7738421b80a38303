"""Hotword lists: a word or phrase a line, optionally `word<TAB>weight` (the bonus per token).
Read without torch, so that mooer-score can score against a list; the biasing itself is
`mooer.inference.hotwords`."""

from __future__ import annotations

import math
import re
from pathlib import Path

MAX_HOTWORDS = 100_000
# bonus per hotword token, in log-probability (nats), unless the list or the caller gives one:
# CHECKED_SCORE where the words are first checked against the audio on the CTC head (only those
# it hears are biased: `mooer.inference.hotwords.ContextGraph.checked`), DEFAULT_SCORE where
# nothing checks them (benchmarks/hotwords.py measured both)
DEFAULT_SCORE = 1.0
CHECKED_SCORE = 1.5
CHECK_THRESHOLD = -1.0  # how far (nats) the CTC head's best path may be from spelling a word
# rewriting after decoding (`mooer.inference.rewrite`): a listed word the CTC head hears within
# REWRITE_THRESHOLD nats is tried in the answer; a candidate is scored by the decoder plus
# REWRITE_WEIGHT times the CTC log-likelihood plus REWRITE_SHARE of the word's bonus; the
# decoder scores at most REWRITE_TOP candidates an utterance (benchmarks/hotwords.py)
REWRITE_THRESHOLD = -8.0
REWRITE_WEIGHT = 0.3
REWRITE_SHARE = 1 / 3
REWRITE_TOP = 2
# the bonus goes only to a word that may be a respelling of the words it replaces (letters in
# common at least this share: difflib's ratio; Han: as many characters); another word must win
# by the model's own score alone, over the answer and over the beam's other hypotheses
RESPELLING = 0.5
# a candidate the decoder finds more than this many nats less likely than the answer is not
# written, however well it fits the audio (`i meet home` for `i meet marcus`): the audio may
# overturn the decoder's preference between words it finds plausible there, not make it write
# one it does not (the words kept lost at most 2.2 nats, those dropped 3.3 to 7.1:
# benchmarks/hotwords.py on the names sets)
REWRITE_DROP = 3.0


def threshold_or_off(text: str) -> float | None:
    """A command line's threshold in nats, or 'off' (also 'none', 'null'): None."""
    if text.strip().lower() in ("off", "none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number of nats or 'off', got {text!r}") from None


class HotwordError(ValueError):
    """A hotword list that cannot be used, naming the line."""


def parse_hotwords(text: str, source: str = "hotwords") -> list[tuple[str, float | None]]:
    """(word, weight or None) of a hotword list: a word or phrase a line, optionally followed by
    a tab and its weight (the bonus per token, instead of the default); blank lines and lines
    starting with `#` are skipped. A bad line is an error naming `source` and the line."""
    words: list[tuple[str, float | None]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        line = line.strip(" ")
        fields = line.split("\t")
        if len(fields) > 2:
            raise HotwordError(f"{source}, line {number}: expected `word` or `word<TAB>weight`, "
                               f"got {len(fields)} tab-separated fields: {line!r}")
        word = " ".join(fields[0].split())
        weight: float | None = None
        if len(fields) == 2:
            try:
                weight = float(fields[1])
            except ValueError:
                raise HotwordError(f"{source}, line {number}: the weight {fields[1]!r} of "
                                   f"{word!r} is not a number") from None
            if not math.isfinite(weight) or weight < 0:
                raise HotwordError(f"{source}, line {number}: the weight of {word!r} must be "
                                   f"a number of at least 0, got {fields[1]}")
        if not word:
            raise HotwordError(f"{source}, line {number}: a weight without a word")
        words.append((word, weight))
    if len(words) > MAX_HOTWORDS:
        raise HotwordError(f"{source}: {len(words)} hotwords, more than {MAX_HOTWORDS}")
    return words


def check_score(score: float | None) -> float | None:
    """The bonus per hotword token: a number of at least 0 (None: the default)."""
    if score is None:
        return None
    if not math.isfinite(score) or score < 0:
        raise HotwordError(f"the hotword score must be a number of at least 0, got {score}")
    return score


def read_hotwords(path: str | Path) -> list[tuple[str, float | None]]:
    """The hotword list in a UTF-8 file (see `parse_hotwords`)."""
    path = Path(path)
    if not path.is_file():
        raise HotwordError(f"hotword list {path} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not a word
    except UnicodeDecodeError as err:
        raise HotwordError(f"hotword list {path} is not UTF-8 text ({err})") from None
    return parse_hotwords(text, str(path))


def split_prompt(prompt: str) -> list[tuple[str, float | None]]:
    """Hotwords from a free-text prompt (OpenAI's `prompt` field): separated by newlines or
    commas (ASCII or CJK)."""
    return [(word, None) for word in (" ".join(p.split()) for p in re.split(r"[\n,，、;；]", prompt))
            if word]
