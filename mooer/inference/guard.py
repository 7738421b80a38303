"""A hallucination guard: answers an LLM decoder gives noise, music or silence are caught, decoded
again, and marked if they still fail.

An answer is flagged when it is
- over-long: more tokens than `max_tokens_per_s` per second of audio (at least `min_tokens`);
- a loop: some `ngram` of tokens occurs more than `max_ngram_repeats` times;
- the instruction: it repeats the prompt's instruction (a model asked about audio it cannot
  hear may answer with the question), or it starts as a refusal (`I'm sorry`, `抱歉`, ...).

A flagged utterance is decoded again with beam search (`retry_beams`) and a repetition penalty
(`retry_repetition_penalty`); an answer that still fails is kept and marked with its reason, cut
first if it is over-long or loops (to the cap, and before the repeat that makes the loop).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

REFUSALS = ("i'm sorry", "i am sorry", "sorry, i", "i cannot", "i can't", "as an ai",
            "抱歉", "对不起，我", "我无法", "我不能")
TAG = re.compile(r"<\|[^|]*\|>|<[^<>\s]{1,20}>")


def _plain(text: str) -> str:
    """Text without special-token tags, spaces or case, to compare answers with instructions."""
    return re.sub(r"\s+", "", TAG.sub("", text)).lower()


@dataclass(frozen=True)
class Guard:
    """What counts as a hallucinated answer, and how a flagged one is decoded again."""

    enabled: bool = True
    max_tokens_per_s: float = 15.0
    min_tokens: int = 12
    ngram: int = 4
    max_ngram_repeats: int = 3
    retry_beams: int = 4
    retry_repetition_penalty: float = 1.3

    def cap(self, seconds: float) -> int:
        """The most tokens an answer about `seconds` of audio may hold."""
        return max(self.min_tokens, int(self.max_tokens_per_s * seconds))

    def check(self, token_ids: Sequence[int], text: str, seconds: float,
              instructions: Sequence[str] = ()) -> str | None:
        """Why the answer is flagged (`over-long`, `loop`, `instruction`, `refusal`), or None."""
        if not self.enabled:
            return None
        if len(token_ids) > self.cap(seconds):
            return "over-long"
        grams = Counter(tuple(token_ids[i:i + self.ngram])
                        for i in range(len(token_ids) - self.ngram + 1))
        if grams and max(grams.values()) > self.max_ngram_repeats:
            return "loop"
        plain = _plain(text)
        for instruction in instructions:
            wanted = _plain(instruction)
            # the instruction itself, or most of it (a word of it is a fair transcript)
            if len(wanted) >= 4 and (wanted in plain
                                     or 2 * len(plain) >= len(wanted) and plain in wanted):
                return "instruction"
        if text.strip().lower().startswith(REFUSALS):
            return "refusal"
        return None

    def trim(self, token_ids: Sequence[int], seconds: float) -> list[int]:
        """An over-long or looping answer cut: to the cap, and before the first n-gram that
        would occur more than `max_ngram_repeats` times."""
        kept = list(token_ids[:self.cap(seconds)])
        seen: Counter = Counter()
        for i in range(len(kept) - self.ngram + 1):
            gram = tuple(kept[i:i + self.ngram])
            seen[gram] += 1
            if seen[gram] > self.max_ngram_repeats:
                return kept[:i]
        return kept
