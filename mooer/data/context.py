"""Trained biasing: a hotword list shown to the LLM (`conf/task/context`).

A task whose `context.text` is set shows the LLM a list of biasing words, e.g. "Hotwords:
olivia, seventeenth, 台灯. ", before the audio (`position: before_audio`: the audio, the
instruction and the answer stay as near one another as without a list) or after the
instruction (`in_instruction`). In
training each utterance's list is drawn (`ContextSampler`): its own rare words (each kept with
probability `keep`) among up to `distractors` other rare words of the training vocabulary,
shuffled; with probability `empty` no list at all, so a model trained so still transcribes
without one. A word is rare when the training transcripts (`vocabulary`, Kaldi text files) hold
it at most `rare` times (SLAM-LLM's contextual ASR and Fun-ASR draw their lists alike). In
decoding the list is the user's (`--hotwords`, the page, the API), the same list that
decode-time biasing (`mooer.inference.hotwords`) uses; with no list the prompt is the plain
instruction, token for token.

Words are Latin words as they stand and, in Chinese text, every two adjacent characters
(`context_words`): the units hotword lists and B-WER are counted in (benchmarks/hotwords.py).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from mooer.data.text import WORD_JOINER, read_table

LATIN_WORD = re.compile(r"[A-Za-z][A-Za-z']*")
CJK_RUN = re.compile(r"[\u4e00-\u9fff]+")


def context_words(text: str) -> list[str]:
    """The words of a transcript a hotword list is drawn from: Latin words, and each pair of
    adjacent Chinese characters (Chinese text has no spaces to find words by)."""
    text = text.replace(WORD_JOINER, " ")
    words = LATIN_WORD.findall(text)
    for run in CJK_RUN.findall(text):
        words.extend(run[i:i + 2] for i in range(len(run) - 1))
    return words


def word_counts(paths: Iterable[str | Path]) -> Counter:
    """How often each word (`context_words`, Latin words lower-cased) occurs in Kaldi text
    files (`uttid transcript` a line)."""
    counts: Counter = Counter()
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"task.context.vocabulary: {path} not found (the training "
                                    "transcripts, Kaldi text: `uttid transcript` a line)")
        for _, text in read_table(path):
            counts.update(w.lower() for w in context_words(text))
    return counts


def check_sampling(rare: int, keep: float, distractors: int, empty: float) -> None:
    """Refuse draw settings that mean nothing, naming them."""
    if not 0 <= keep <= 1 or not 0 <= empty <= 1:
        raise ValueError(f"task.context: keep and empty are probabilities, got keep={keep}, "
                         f"empty={empty}")
    if rare < 1 or distractors < 0:
        raise ValueError(f"task.context: rare must be at least 1 and distractors at least 0, "
                         f"got rare={rare}, distractors={distractors}")


class ContextSampler:
    """Draws a training utterance's hotword list: its rare words (each kept with `keep`) and
    0 to `distractors` rare words it does not hold, shuffled; no list with probability
    `empty`."""

    def __init__(self, counts: Mapping[str, int], rare: int = 40, keep: float = 0.9,
                 distractors: int = 100, empty: float = 0.2) -> None:
        check_sampling(rare, keep, distractors, empty)
        self.counts, self.rare, self.keep = dict(counts), rare, keep
        self.distractors, self.empty = distractors, empty
        self.pool = sorted(w for w, n in self.counts.items() if n <= rare)
        if distractors and not self.pool:
            raise ValueError(f"task.context: the vocabulary has no word seen at most {rare} "
                             "times to draw distractors from")

    def draw(self, transcript: str, rng: random.Random) -> list[str]:
        if rng.random() < self.empty:
            return []
        words = context_words(transcript)
        held = {w.lower() for w in words}
        own = [w for w in dict.fromkeys(words) if self.counts.get(w.lower(), 0) <= self.rare]
        listed = [w for w in own if rng.random() < self.keep]
        wanted = min(rng.randint(0, self.distractors), len(self.pool))
        # drawn with room for the utterance's own words, which are not distractors
        drawn = rng.sample(self.pool, min(len(self.pool), wanted + len(held)))
        listed += [w for w in drawn if w not in held and w not in transcript][:wanted]
        rng.shuffle(listed)
        return listed


POSITIONS = ("before_audio", "in_instruction")


class ContextFormat:
    """`conf/task/context`: how a hotword list is shown to the LLM (`text`, with one `{}` for
    the words joined by `separator`; null: never), where (`position`: before the audio slots,
    or after the instruction), for which `tasks`, at most `max_words` of it, and how training
    draws lists (`ContextSampler`: `vocabulary`, `rare`, `keep`, `distractors`, `empty`)."""

    def __init__(self, text: str | None = None, separator: str = ", ",
                 position: str = "before_audio", tasks: Sequence[str] = ("asr",),
                 max_words: int = 200, vocabulary: str | Sequence[str] | None = None,
                 rare: int = 40, keep: float = 0.9, distractors: int = 100,
                 empty: float = 0.2) -> None:
        if text is not None and text.count("{}") != 1:
            raise ValueError(f"task.context.text needs exactly one {{}} for the words, got "
                             f"{text!r}")
        if max_words < 1:
            raise ValueError(f"task.context.max_words must be at least 1, got {max_words}")
        if position not in POSITIONS:
            raise ValueError(f"task.context.position is one of {', '.join(POSITIONS)}, got "
                             f"{position!r}")
        self.text, self.separator, self.tasks = text, separator, tuple(tasks)
        self.position = position
        self.max_words = max_words
        self.vocabulary = ([vocabulary] if isinstance(vocabulary, str)
                           else list(vocabulary or []))
        check_sampling(rare, keep, distractors, empty)  # now, not at the first batch
        self.rare, self.keep, self.distractors, self.empty = rare, keep, distractors, empty
        self._sampler: ContextSampler | None = None

    @property
    def enabled(self) -> bool:
        return self.text is not None

    def applies(self, task: str) -> bool:
        return self.enabled and task in self.tasks

    def shown(self, words: Sequence[str]) -> str:
        """The list of `words` (the first `max_words`) as the LLM reads it; '' without words."""
        if not words or self.text is None:
            return ""
        return self.text.format(self.separator.join(words[:self.max_words]))

    def sampler(self) -> ContextSampler:
        """The training draw, its vocabulary read once."""
        if self._sampler is None:
            if not self.vocabulary:
                raise ValueError("task.context.vocabulary is not set: give the training "
                                 "transcripts (Kaldi text files) to find rare words in")
            self._sampler = ContextSampler(word_counts(self.vocabulary), self.rare, self.keep,
                                           self.distractors, self.empty)
        return self._sampler
