"""Word times and confidence by forced alignment of the final transcript on the encoder's CTC
head (a model trained with `encoder.ctc_weight` > 0 has one: the demo's does).

The transcript's tokens (the tokenizer the CTC head was trained on: the LLM's) are aligned by
Viterbi over the CTC posteriors, on the usual topology (a blank between tokens, repeats need a
blank between them); each token gets the frames from its first to its last emission. A word is
a run of Latin letters and digits (with `'`), or a single CJK character. A CTC head emits a token
a little after it begins and its posteriors are peaky, so a word starts LEAD frames before its
first token's first emission (never before the previous word ends) and ends up to TAIL frames
after its last token's last emission (never after the next word starts): on the demo model this
took the median start error against espeak-ng's word events from 61 to 27 ms on the utterances
that chose them, 26 ms on others (`benchmarks/timestamps.py`). Its confidence is the geometric
mean, over its tokens, of each token's highest CTC posterior on its frames: in [0, 1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

LEAD, TAIL = 1, 2  # frames: see align_words
HAN = "\u3400-\u9fff\uf900-\ufaff"  # a character class's Han ideographs: a word each
WORD = re.compile(f"[{HAN}]|[A-Za-z0-9']+(?:[-.][A-Za-z0-9']+)*")
INCOMPLETE = "\ufffd"  # what a byte-level tokenizer decodes a character cut short to


@dataclass
class Word:
    """A word of a transcript: its text, start and end in seconds, and confidence in [0, 1]."""

    text: str
    start: float
    end: float
    confidence: float

    def shifted(self, offset: float) -> Word:
        return Word(self.text, round(self.start + offset, 3), round(self.end + offset, 3),
                    self.confidence)

    def as_dict(self) -> dict:
        return {"word": self.text, "start": self.start, "end": self.end,
                "confidence": round(self.confidence, 4)}


def ctc_chain(tokens: Sequence[int], blank: int) -> tuple[list[int], list[bool]]:
    """The CTC states of `tokens` (blank, t1, blank, ..., tn, blank) and, for each, whether a
    path may reach it skipping the blank before it (a token unlike the one two states back:
    repeats need a blank between them)."""
    chain = [blank]
    for token in tokens:
        chain += [token, blank]
    return chain, [s % 2 == 1 and s >= 3 and chain[s] != chain[s - 2]
                   for s in range(len(chain))]


def viterbi(log_probs: torch.Tensor, tokens: Sequence[int], blank: int
            ) -> list[tuple[int, int]] | None:
    """The most likely CTC path of `tokens` through `log_probs` [T, V]: each token's (first,
    last) frame; None when the frames are too few for the tokens."""
    return viterbi_batch(log_probs[None], [log_probs.shape[0]], [tokens], blank)[0]


def viterbi_batch(log_probs: torch.Tensor, lengths: Sequence[int],
                  token_lists: Sequence[Sequence[int]], blank: int
                  ) -> list[list[tuple[int, int]] | None]:
    """`viterbi` of each utterance of a batch at once: `log_probs` [B, T, V] (utterance b's
    first `lengths[b]` frames), `token_lists[b]` its tokens. One pass over the frames for the
    whole batch (the states of every utterance side by side), then each path traced back."""
    count = len(token_lists)
    sizes = np.array([2 * len(tokens) + 1 for tokens in token_lists])  # blank, t1, blank, ...
    width = int(sizes.max()) if count else 1
    states = np.full((count, width), blank, dtype=np.int64)
    skip = np.zeros((count, width), dtype=bool)  # a skip over a blank: unless tokens are equal
    possible = []
    for b, tokens in enumerate(token_lists):
        chain, skips = ctc_chain(tokens, blank)
        states[b, :len(chain)], skip[b, :len(chain)] = chain, skips
        repeats = sum(1 for x, y in zip(tokens, tokens[1:], strict=False) if x == y)
        possible.append(bool(tokens) and lengths[b] >= len(tokens) + repeats)
    frames = max([int(n) for n in lengths] or [0])
    # numpy: the arrays are small, and a torch op's overhead would dominate each frame
    emit = np.take_along_axis(log_probs[:, :frames].numpy(), states[:, None, :], axis=2)
    padding = (np.arange(width)[None, :] >= sizes[:, None])[:, None, :]
    emit[np.broadcast_to(padding, emit.shape)] = -np.inf  # [B, T, S]: padding unreachable
    # each state's ways in at a frame: staying (options[0], the scores so far), from the state
    # before, and over a blank from the one before that (-inf where that is not allowed)
    options = np.full((3, count, width), -np.inf)
    score = options[0]
    score[:, :2] = emit[:, 0, :2]
    skipping = np.where(skip[:, 2:], 0.0, -np.inf)
    back = np.zeros((frames, count, width), dtype=np.int8)  # the way chosen
    live = np.asarray(lengths)[:, None]
    shortest = min(int(n) for n in lengths) if count else 0
    for t in range(1, frames):
        options[1, :, 1:] = score[:, :-1]
        np.add(score[:, :-2], skipping, out=options[2, :, 2:])
        back[t] = options.argmax(0)  # of equal ways, the first
        best = options.max(0)  # the chosen way's score
        if t < shortest:  # no utterance's frames have ended yet (one alone: none until its own)
            np.add(best, emit[:, t], out=score)
        else:  # an utterance's path stops at its last frame: it stays there
            active = t < live
            back[t] *= active
            score[...] = np.where(active, best + emit[:, t], score)
    found: list[list[tuple[int, int]] | None] = []
    for b, tokens in enumerate(token_lists):
        if not tokens:
            found.append([])
            continue
        last = sizes[b] - 1
        end = last if score[b, last] >= score[b, last - 1] else last - 1
        if not possible[b] or not math.isfinite(float(score[b, end])):
            found.append(None)
            continue
        path = [int(end)]
        for t in range(int(lengths[b]) - 1, 0, -1):
            path.append(path[-1] - int(back[t, b, path[-1]]))
        path.reverse()
        spans: list[list[int]] = [[-1, -1] for _ in tokens]
        for t, state in enumerate(path):
            if state % 2 == 1:
                span = spans[state // 2]
                if span[0] < 0:
                    span[0] = t
                span[1] = t
        found.append([(a, c) for a, c in spans])
    return found


def words_of(token_texts: Sequence[str]) -> list[tuple[str, list[int]]]:
    """The words of a text and, for each, the indices of the tokens that spell it
    (`token_texts`: each token's piece of the text, in order)."""
    return [(match.group(), tokens) for match, tokens in matched_words(token_texts)]


def matched_words(token_texts: Sequence[str], pattern: re.Pattern = WORD
                  ) -> list[tuple[re.Match, list[int]]]:
    """Each match of `pattern` (a word) in the text the tokens spell, and the indices of the
    tokens that spell it, in order. A token whose piece is '' (a byte of a character that a
    later token completes: `token_pieces`) spells the next character with that token."""
    owners: list[list[int]] = []  # the tokens that spelled each character
    waiting: list[int] = []
    for index, piece in enumerate(token_texts):
        if not piece:
            waiting.append(index)
            continue
        owners += [[*waiting, index]] + [[index]] * (len(piece) - 1)
        waiting = []
    return [(match, sorted({i for owner in owners[match.start():match.end()] for i in owner}))
            for match in pattern.finditer("".join(token_texts))]


def token_pieces(token_ids: Sequence[int], tokenizer) -> list[str]:
    """Each token's piece of the decoded text (what `words_of` groups into words). A byte-level
    tokenizer spells a character it has no token for in bytes (a rare Han character in 2 or 3
    tokens): the tokens before the one that completes it have the piece '' (their prefix
    decodes to U+FFFD), and the character is the piece of that last one."""
    pieces: list[str] = []
    decoded = ""
    for i in range(len(token_ids)):
        upto = tokenizer.decode(token_ids[:i + 1], skip_special_tokens=True)
        if i + 1 < len(token_ids):  # a character still in bytes is the next tokens' to finish
            upto = upto.rstrip(INCOMPLETE)
        pieces.append(upto[len(decoded):] if upto.startswith(decoded) else upto)
        decoded = upto
    return pieces


def whole_characters(token_ids: Sequence[int], tokenizer) -> list[int]:
    """`token_ids` without the trailing tokens of a character they leave unfinished: an answer
    cut (the guard's `trim`) inside a character a byte-level tokenizer spells in bytes would
    end in U+FFFD."""
    ids = list(token_ids)
    for _ in range(3):  # a character is at most 4 bytes: at most 3 of them left behind
        if not ids or not tokenizer.decode(ids, skip_special_tokens=True).endswith(INCOMPLETE):
            break
        ids.pop()
    return ids


def align_words(log_probs: torch.Tensor, token_ids: Sequence[int], tokenizer, blank: int,
                frame_s: float, spans: list[tuple[int, int]] | None = None,
                columns: Sequence[int] | None = None) -> list[Word] | None:
    """Word times and confidence of a transcript (`token_ids`, as the CTC head's tokenizer
    spells it) on one utterance's CTC log-posteriors [T, V]; None if it cannot be aligned.
    `spans`: its tokens' Viterbi frames, when already found (`viterbi_batch`); `columns`: each
    token's column of `log_probs`, where they are not all V (`Posteriors.columns`)."""
    columns = token_ids if columns is None else columns
    spans = viterbi(log_probs, columns, blank) if spans is None else spans
    if spans is None:
        return None
    pieces = token_pieces(token_ids, tokenizer)
    posteriors = log_probs.numpy()
    confidence = [float(posteriors[a:b + 1, column].max()) for (a, b), column in
                  zip(spans, columns, strict=True)]
    words = [(text, tokens) for text, tokens in words_of(pieces) if tokens]
    firsts = [spans[tokens[0]][0] for _, tokens in words]
    found = []
    for i, (text, tokens) in enumerate(words):
        last = spans[tokens[-1]][1]
        # a CTC emission comes after the onset: a word starts LEAD frames before its first one
        # (not before the previous word's last); it ends up to TAIL frames after its last
        # emission, before the next word starts (benchmarks/timestamps.py measured both)
        before: int = spans[words[i - 1][1][-1]][1] + 1 if i else 0
        start: int = max(before, firsts[i] - LEAD)
        following: int = firsts[i + 1] - LEAD if i + 1 < len(words) else int(log_probs.shape[0])
        end: int = max(last + 1, min(last + 1 + TAIL, following))
        mean = sum(confidence[t] for t in tokens) / len(tokens)
        found.append(Word(text, round(start * frame_s, 3), round(end * frame_s, 3),
                          math.exp(mean)))
    return found
