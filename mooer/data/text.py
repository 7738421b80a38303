"""Transcript normalization and Kaldi-style table files (`uttid<space>value` per line)."""

from __future__ import annotations

import re
from pathlib import Path

BOM = "\ufeff"
WORD_JOINER = "▁"  # U+2581, what MooER puts between two Latin words
NORMALIZERS = ("none", "mooer", "llm")
_LATIN_GAP = re.compile(r"(?<=[A-Z]) (?=[A-Z])")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WHITESPACE = re.compile(r"\s+")


def normalize_mooer(text: str) -> str:
    """MooER's ASR normalization (its data_package.sh under LC_ALL=C), reproduced exactly.

    ASCII letters are upper-cased, a single space between two Latin letters becomes '▁', every
    other space is removed (tabs are kept, as `tr -d " "` does) and the first BOM is dropped.
    """
    text = text.translate(_ASCII_UPPER)
    text = _LATIN_GAP.sub(WORD_JOINER, text).replace(" ", "")
    return text.replace(BOM, "", 1)


def normalize_llm(text: str) -> str:
    """Light normalization for LLM-era labels: keep case and punctuation, drop BOMs, fold spaces."""
    return _WHITESPACE.sub(" ", text.replace(BOM, "")).strip()


def normalize(text: str, mode: str) -> str:
    """Apply the normalization named `mode` ('none', 'mooer' or 'llm')."""
    if mode == "mooer":
        return normalize_mooer(text)
    if mode == "llm":
        return normalize_llm(text)
    if mode == "none":
        return text
    raise ValueError(f"unknown text normalization {mode!r}; choose one of {', '.join(NORMALIZERS)}")


def one_line(text: str) -> str:
    """Text made safe for a Kaldi table line: newlines, tabs and runs of spaces become one space."""
    return " ".join(text.split())


def split_line(line: str) -> tuple[str, str]:
    """Split a Kaldi table line into (key, value); the value may be empty."""
    parts = line.strip().split(maxsplit=1)
    if not parts:
        return "", ""
    return parts[0].lstrip(BOM), parts[1] if len(parts) > 1 else ""


def read_table(path: str | Path, bad_lines: list[tuple[str, str]] | None = None
               ) -> list[tuple[str, str]]:
    """Read a Kaldi table (wav.scp, text, utt2spk...) as (key, value) pairs in file order.

    Blank lines are skipped; a line that is not UTF-8 raises a ValueError naming it, or with
    `bad_lines` is left out and listed there as (`<file name>:<line>`, reason).
    """
    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                reason = f"{path}:{number} is not UTF-8 ({err}); re-encode the file"
                if bad_lines is None:
                    raise ValueError(reason) from err
                bad_lines.append((f"{Path(path).name}:{number}", f"line is not UTF-8: {reason}"))
                continue
            key, value = split_line(line)
            if key:
                rows.append((key, value))
    return rows
