"""Hotwords: decode-time contextual biasing that works on any checkpoint.

A hotword list (one word or phrase a line, optionally `word<TAB>weight`) is tokenized with the
model's tokenizer into a prefix tree with Aho-Corasick fail links (a context graph, as in
icefall's ContextGraph and WeNet's context biasing). During decoding, each hypothesis carries a
state in the tree; a token that extends a hotword prefix earns the word's weight (per token),
and when the partial match fails (another token, or the end of the answer), the bonus it earned
is taken back, so a partial match gains nothing. A completed hotword keeps its bonus. The bonus
is added to the log-probabilities of beam search (greedy decoding is beam 1), through a
transformers logits processor, so the model's own scores decide between hotwords as between
any tokens.

    graph = ContextGraph.build(read_hotwords("names.txt"), tokenizer, score=1.0)
    recognizer.decode(..., hotwords=graph)       # or mooer-transcribe --hotwords names.txt
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mooer.data.hotword_list import (
    CHECK_THRESHOLD,
    CHECKED_SCORE,
    DEFAULT_SCORE,
    REWRITE_THRESHOLD,
    check_score,
)
from mooer.inference.align import ctc_chain
from mooer.inference.posteriors import Posteriors

__all__ = ["CHECKED_SCORE", "CHECK_THRESHOLD", "DEFAULT_SCORE", "REWRITE_THRESHOLD", "ROOT",
           "ContextGraph", "HotwordBias", "Spotting", "device_frame_summaries", "encode_all",
           "frame_summaries", "frame_summary", "spot", "spot_rows", "spot_stretches",
           "token_variants", "variants_of"]


def token_variants(word: str, tokenizer) -> list[list[int]]:
    """The token sequences `word` can take in a transcript: as it stands, in upper and in lower
    case (training text is often case-normalized, and a list need not know how), each also
    after a space (a byte-level BPE spells a word inside a sentence with its leading space)."""
    return variants_of([word], tokenizer)[0]


def variants_of(words: Sequence[str], tokenizer) -> list[list[list[int]]]:
    """`token_variants` of each word (by `encode_all`)."""
    texts = [[text for form in dict.fromkeys((word, word.upper(), word.lower()))
              for text in (form, " " + form)] for word in words]
    encoded = iter(encode_all(tokenizer, [text for forms in texts for text in forms]))
    found = []
    for forms in texts:
        variants: list[list[int]] = []
        for ids in (list(next(encoded)) for _ in forms):
            if ids and ids not in variants:
                variants.append(ids)
        found.append(variants)
    return found


def encode_all(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """The token ids of each text, without special tokens (what the tokenizer's `encode`
    gives): straight from a fast tokenizer's Rust core where it has one, one text at a time
    (transformers' own `encode` costs as much again a call; the core's batch call, threaded,
    is no faster on a list's short texts, and three times slower at ten thousand of them on
    two cores)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [backend.encode(text, add_special_tokens=False).ids for text in texts]
    return [list(tokenizer.encode(text, add_special_tokens=False)) for text in texts]


@dataclass(frozen=True)
class Transition:
    """The bonus of each token from a state, as a sparse row: `default` (the bonus taken back)
    for every token, plus `value_list` for `token_list` (what they earn beyond the default)."""

    default: float
    token_list: tuple[int, ...]
    value_list: tuple[float, ...]


@dataclass(frozen=True)
class Spotting:
    """What `ContextGraph.spotted` found: each token sequence's score (-inf: not heard), and
    the first and last frame of its best stretch."""

    scores: np.ndarray
    first: np.ndarray
    last: np.ndarray


State = tuple[int, float]  # (node, the score banked on its path by completed hotwords)
ROOT: State = (0, 0.0)


@dataclass(eq=False)  # compared (and hashed) by identity: the server builds one a list
class ContextGraph:
    """A prefix tree of hotword token sequences with Aho-Corasick fail links. Node 0 is the root;
    `score[n]` is the bonus a path earns up to node n."""

    children: list[dict[int, int]] = field(default_factory=lambda: [{}])
    score: list[float] = field(default_factory=lambda: [0.0])
    end: list[bool] = field(default_factory=lambda: [False])
    fail: list[int] = field(default_factory=lambda: [0])
    # each word, its weight (None: the graph's score) and token sequences, and the score asked
    # (None: the default), to build the sub-graph of the words the audio holds (`checked`)
    entries: list[tuple[str, float | None, list[list[int]]]] = field(default_factory=list)
    asked: float | None = None
    _rows: dict[State, Transition] = field(default_factory=dict, repr=False)
    _next: dict[tuple[State, int], State] = field(default_factory=dict, repr=False)
    _kept: dict[tuple[int, ...], ContextGraph] = field(default_factory=dict, repr=False)
    _flat: tuple | None = field(default=None, repr=False)
    _forms: dict[int, str] = field(default_factory=dict, repr=False)
    # each state's tokens and their bonuses (`transition`) as tensors, a device and dtype
    _tensors: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict,
                                                                      repr=False)

    @classmethod
    def build(cls, words: Iterable[tuple[str, float | None]], tokenizer,
              score: float | None = None) -> ContextGraph:
        """The graph of `words` ((word, weight or None)) tokenized by `tokenizer`; a word's
        tokens each earn its weight, or `score` (None: DEFAULT_SCORE, and CHECKED_SCORE in
        the graphs `checked` makes)."""
        check_score(score)
        graph = cls(asked=score)
        listed = list(words)
        for (word, weight), variants in zip(listed, variants_of([word for word, _ in listed],
                                                                tokenizer), strict=True):
            graph.entries.append((word, weight, variants))
        graph._fill(DEFAULT_SCORE if score is None else score)
        graph._flatten()  # what spotting reads, once a list (not in the first utterance's time)
        return graph

    def _fill(self, score: float) -> None:
        for _, weight, variants in self.entries:
            for ids in variants:
                self.add(ids, score if weight is None else weight)
        self.link()
        self._flat = None
        self._forms.clear()

    def checked(self, log_probs: np.ndarray, blank: int,
                threshold: float = CHECK_THRESHOLD) -> ContextGraph | None:
        """The graph of the words the audio holds: those whose tokens the CTC head's
        log-posteriors of the utterance [T, V] spell somewhere within `threshold` nats of its
        best path (`spot`), with CHECKED_SCORE for the default bonus; None when none is.
        A word the model does not hear is not biased, so a long list costs little where it
        cannot help (benchmarks/hotwords.py)."""
        return self.cut(self.spotted(log_probs, blank, threshold), threshold)

    def cut(self, spotted: Spotting, threshold: float) -> ContextGraph | None:
        """`checked` from what `spotted` found (searched down to `threshold` or below)."""
        kept = tuple(sorted({entry for entry, _ in self.heard(spotted, threshold)}))
        if not kept:
            return None
        graph = self._kept.get(kept)
        if graph is None:
            graph = ContextGraph(asked=self.asked)
            graph.entries = [self.entries[i] for i in kept]
            graph._fill(self.default_score)
            self._kept[kept] = graph
        return graph

    @property
    def default_score(self) -> float:
        """The bonus per token of a word without its own weight, once checked."""
        return CHECKED_SCORE if self.asked is None else self.asked

    @property
    def sequences(self) -> list[list[int]]:
        """Every word's token sequences (`token_variants`), in `entries`' order."""
        return self._flatten()[0]

    def _flatten(self) -> tuple:
        if self._flat is None:  # every variant's tokens in one array, once a graph
            sequences = [ids for _, _, variants in self.entries for ids in variants]
            owners = np.array([i for i, (_, _, variants) in enumerate(self.entries)
                               for _ in variants], dtype=np.int64)
            starts = np.cumsum([0] + [len(ids) for ids in sequences[:-1]], dtype=np.int64)
            flat = np.array([t for ids in sequences for t in ids], dtype=np.int64)
            self._flat = (sequences, owners, starts, flat)
        return self._flat

    def _audible(self, peaks: np.ndarray, floor: float) -> np.ndarray:
        """Which sequences' tokens' best scores on any frame (`peaks` [V], each <= 0) add up to
        at least `floor` (those a spotting at `floor` may find): asked only of the sequences
        whose first token reaches it alone, a few of a long list."""
        sequences, _, starts, flat = self._flatten()
        possible = np.zeros(len(sequences), dtype=bool)
        maybe = np.nonzero(peaks[flat[starts]] >= floor)[0]
        if len(maybe):
            sizes = np.diff(np.append(starts, len(flat)))[maybe]
            begins = np.cumsum(sizes) - sizes  # each one's first place among their tokens
            places = (np.arange(int(sizes.sum())) - np.repeat(begins, sizes)
                      + np.repeat(starts[maybe], sizes))
            possible[maybe[np.add.reduceat(peaks[flat[places]], begins) >= floor]] = True
        return possible

    def spotted(self, log_probs: np.ndarray, blank: int, floor: float) -> Spotting:
        """How well, and where, the CTC head's log-posteriors of the utterance [T, V] spell
        each of `sequences` (`spot_stretches`: 0 its best path does, below 0 by how many nats
        it would have to change); -inf where it cannot reach `floor` (not searched: a long
        list is mostly such words)."""
        return self.spotted_rows([log_probs], blank, floor)[0]

    def spotted_rows(self, rows: Sequence[np.ndarray], blank: int, floor: float,
                     summaries: Sequence[tuple[np.ndarray, np.ndarray]] | None = None
                     ) -> list[Spotting]:
        """`spotted` on several utterances' log-posteriors ([T, V] each) at once.
        `summaries`: each row's `frame_summary` where the caller has it (computed where the
        posteriors are, on the accelerator: two passes over [T, V] fewer here)."""
        if summaries is None:
            summaries = [frame_summary(log_probs) for log_probs in rows]
        return self._spotted(summaries, floor, lambda sequences: (rows, sequences, blank))

    def spotted_on(self, posteriors: Posteriors, rows: Sequence[int], floor: float,
                   summaries: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Spotting]:
        """`spotted_rows` of a batch's `rows` (`summaries`: theirs, `frame_summaries`),
        reading only the columns of the sequences searched (`Posteriors.rows`: on an
        accelerator, only those come to the host)."""
        def read(sequences: list[list[int]]) -> tuple[list[np.ndarray], list[list[int]], int]:
            found, renumbered = posteriors.rows(rows, sequences)
            return [log_probs.numpy() for log_probs in found], renumbered, found[0].shape[-1] - 1
        return self._spotted(summaries, floor, read)

    def _spotted(self, summaries: Sequence[tuple[np.ndarray, np.ndarray]], floor: float,
                 read: Callable[[list[list[int]]], tuple[Sequence[np.ndarray], list[list[int]],
                                                         int]]) -> list[Spotting]:
        """`spotted_rows` of the rows whose `frame_summary` are `summaries`, their
        log-posteriors given by `read` for the sequences searched: each row's [T, K] in which
        those have columns, the sequences numbered as those columns, and the blank's."""
        sequences = self.sequences
        found = [Spotting(np.full(len(sequences), -np.inf),
                          np.full(len(sequences), -1, dtype=np.int64),
                          np.full(len(sequences), -1, dtype=np.int64)) for _ in summaries]
        if not sequences:
            return found
        # a path's score is a sum of frames' scores under their best (each <= 0), and each of
        # a sequence's tokens takes a frame of its own: it cannot score above the sum of its
        # tokens' best scores on any frame, and is not searched where that is below `floor`
        possible, tops = [], []  # each frame's best score, once a row
        for top, peaks in summaries:
            tops.append(top[:, None])
            possible.append(self._audible(peaks, floor) if top.shape[0]
                            else np.zeros(len(sequences), dtype=bool))
        searched = np.nonzero(np.any(possible, axis=0))[0]  # for any utterance: once for all
        if not len(searched):
            return found
        rows, renumbered, blank = read([sequences[j] for j in searched])
        scores, first, last = spot_rows(rows, renumbered, blank, tops)
        for r, spotting in enumerate(found):
            mine = possible[r][searched]
            where = searched[mine]
            spotting.scores[where] = scores[r, mine]
            spotting.first[where], spotting.last[where] = first[r, mine], last[r, mine]
        return found

    def form(self, sequence: int, tokenizer) -> str:
        """A token sequence (an index into `sequences`) as text, without the spaces around it
        (cached: rewriting asks for the same few words utterance after utterance)."""
        found = self._forms.get(sequence)
        if found is None:
            found = self._forms[sequence] = tokenizer.decode(self.sequences[sequence]).strip()
        return found

    def heard(self, spotted: Spotting, threshold: float) -> list[tuple[int, int]]:
        """(entry, its best sequence) of each word one of whose token sequences scores at
        least `threshold` in `spotted`, in `entries`' order."""
        _, owners, _, _ = self._flatten()
        scores = spotted.scores
        best: dict[int, int] = {}
        for j in np.nonzero(scores >= threshold)[0]:
            entry = int(owners[j])
            if entry not in best or scores[j] > scores[best[entry]]:
                best[entry] = int(j)
        return sorted(best.items())

    def add(self, ids: Sequence[int], weight: float) -> None:
        node = 0
        for token in ids:
            child = self.children[node].get(token)
            if child is None:
                child = len(self.children)
                self.children[node][token] = child
                self.children.append({})
                self.score.append(self.score[node] + weight)
                self.end.append(False)
                self.fail.append(0)
            elif self.score[child] < self.score[node] + weight:  # shared prefix: the larger
                self._raise(child, self.score[node] + weight - self.score[child])
            node = child
        self.end[node] = True

    def _raise(self, node: int, by: float) -> None:
        """Raise a node's score and its subtree's by `by` (a heavier word shares its prefix)."""
        stack = [node]
        while stack:
            n = stack.pop()
            self.score[n] += by
            stack.extend(self.children[n].values())

    def link(self) -> None:
        """Aho-Corasick fail links, breadth first: a node's fail is the longest proper suffix of
        its path that is a path from the root."""
        queue = deque(self.children[0].values())
        for child in queue:
            self.fail[child] = 0
        while queue:
            node = queue.popleft()
            for token, child in self.children[node].items():
                f = self.fail[node]
                while f and token not in self.children[f]:
                    f = self.fail[f]
                target = self.children[f].get(token, 0)
                self.fail[child] = target if target != child else 0
                queue.append(child)
        self._rows.clear()
        self._next.clear()
        self._tensors.clear()

    @property
    def words(self) -> list[str]:
        """The listed words, in order."""
        return [word for word, _, _ in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def biases(self) -> bool:
        """Whether any token earns a bonus (a list at score 0 only names words: for a prompt
        that lists them, `mooer.data.context`)."""
        return any(score > 0 for score in self.score)

    def step(self, state: State, token: int) -> tuple[State, float]:
        """The state after `token` and the bonus it earns (negative: a partial match taken
        back)."""
        node, banked = state
        if token in self.children[node]:
            new, base = self.children[node][token], banked
        else:
            f, new = self.fail[node], 0
            while True:
                if token in self.children[f]:
                    new = self.children[f][token]
                    break
                if f == 0:
                    break
                f = self.fail[f]
            base = 0.0
        bonus = (self.score[new] - base) - (self.score[node] - banked)
        if self.end[new]:
            base = self.score[new]  # a completed hotword keeps its bonus
        return (new, base), bonus

    def next_state(self, state: State, token: int) -> State:
        key = (state, token)
        found = self._next.get(key)
        if found is None:
            found = self._next[key] = self.step(state, token)[0]
        return found

    def transition(self, state: State) -> Transition:
        """The bonus of every token from `state`, as a sparse row (cached)."""
        row = self._rows.get(state)
        if row is None:
            node, banked = state
            pending = self.score[node] - banked
            chain = [node]
            while chain[-1] != 0:
                chain.append(self.fail[chain[-1]])
            values: dict[int, float] = {}
            for at in reversed(chain):  # the deepest node that has the token decides
                for token in self.children[at]:
                    values[token] = self.step(state, token)[1]
            row = Transition(-pending, tuple(values), tuple(v + pending for v in values.values()))
            self._rows[state] = row
        return row

    def bonus_tensors(self, state: State, device: torch.device, dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """`transition(state)`'s tokens (long) and what they earn beyond its default (in
        `dtype`, rounded from float32), on `device` (cached: a list's root state has a token for
        every word's first, and every utterance's every step starts there)."""
        key = (state, device, dtype)
        found = self._tensors.get(key)
        if found is None:
            row = self.transition(state)
            found = self._tensors[key] = (
                torch.tensor(row.token_list, dtype=torch.long, device=device),
                torch.tensor(row.value_list, dtype=torch.float32, device=device).to(dtype))
        return found


def frame_summary(log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of one utterance's CTC log-posteriors [T, V]: each frame's best score [T], and each
    class's best score on any frame less that frame's best [V] (<= 0: what spotting bounds a
    sequence by, `ContextGraph._audible`)."""
    top = log_probs.max(1)
    return top, ((log_probs - top[:, None]).max(0) if log_probs.shape[0]
                 else np.full(log_probs.shape[1], -np.inf, dtype=log_probs.dtype))


def frame_summaries(log_probs: torch.Tensor, lengths: Sequence[int]
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """`frame_summary` of each utterance of a batch's CTC log-posteriors [B, T, V] (its first
    `lengths[b]` frames), computed where they are: on an accelerator, where a pass over a 151k
    vocabulary is cheap (on the host two of them cost more than the decoding's other CPU
    work), then brought to the host, [T] and [V] a row, not [T, V]; on a CPU by numpy
    (`frame_summary`: torch there takes twice as long)."""
    if log_probs.device.type == "cpu":
        return [frame_summary(log_probs[row, :frames].numpy())
                for row, frames in enumerate(lengths)]
    return device_frame_summaries(log_probs, lengths)


def device_frame_summaries(log_probs: torch.Tensor, lengths: Sequence[int]
                           ) -> list[tuple[np.ndarray, np.ndarray]]:
    """`frame_summaries` computed by torch where the tensor is, then brought to the host (what
    it does on an accelerator): a row at a time there (a [T, V] difference at a time, not the
    batch's), and to the host in two copies for the batch, not two a row."""
    tops, peaks = [], []
    for row, frames in enumerate(lengths):
        posteriors = log_probs[row, :int(frames)]
        top = posteriors.amax(-1)
        tops.append(top)
        peaks.append((posteriors - top[:, None]).amax(0) if frames
                     else posteriors.new_full((posteriors.shape[-1],), -math.inf))
    if not tops:
        return []
    every_top = torch.cat(tops).cpu().numpy()
    every_peak = torch.stack(peaks).cpu().numpy()
    ends = np.cumsum([int(n) for n in lengths])
    return [(every_top[end - int(n):end], every_peak[row])
            for row, (n, end) in enumerate(zip(lengths, ends, strict=True))]


def spot(log_probs: np.ndarray, sequences: Sequence[Sequence[int]], blank: int) -> np.ndarray:
    """How well CTC log-posteriors [T, V] hold each token sequence anywhere (keyword spotting):
    the best score of a path that spells it (blanks around and between its tokens, a blank
    between repeats) over some stretch of frames, less that of the best labels of the same
    frames. 0: those frames' best labels spell it; below 0: by how many nats they would have
    to change. Every sequence's states side by side, one pass over the frames."""
    return spot_stretches(log_probs, sequences, blank)[0]


def spot_stretches(log_probs: np.ndarray, sequences: Sequence[Sequence[int]], blank: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`spot`, and where: the first and last frame of each sequence's best stretch (its first
    and last token's; of equally good stretches, the shortest; -1 where none)."""
    found, first, last = spot_rows([log_probs], sequences, blank)
    return found[0], first[0], last[0]


def spot_rows(rows: Sequence[np.ndarray], sequences: Sequence[Sequence[int]], blank: int,
              tops: Sequence[np.ndarray] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`spot_stretches` of the same sequences on several utterances' log-posteriors ([T, V]
    each, T their own) at once: each result [utterances, sequences], every row as alone.
    `tops`: each row's best score a frame ([T, 1]), where the caller has them already."""
    count, size_rows = len(sequences), len(rows)
    found = np.full((size_rows, count), -np.inf)
    first = np.full((size_rows, count), -1, dtype=np.int64)
    last = np.full((size_rows, count), -1, dtype=np.int64)
    lengths = np.array([row.shape[0] for row in rows], dtype=np.int64)
    if not count or not size_rows or not lengths.max():
        return found, first, last
    states: list[int] = []
    enter, step, jump, ends = [], [], [], []  # masks over states; each sequence's last token
    for ids in sequences:
        if not ids:
            raise ValueError("spot: an empty token sequence")
        chain, skips = ctc_chain(ids, blank)
        base = len(states)
        states += chain
        enter += [True, True] + [False] * (len(chain) - 2)
        step += [False] + [True] * (len(chain) - 1)
        jump += skips
        ends.append(base + len(chain) - 2)
    size, frames = len(states), int(lengths.max())
    # the sequences' states' scores under each frame's best label (<= 0; the best 0): only
    # their columns, not the whole vocabulary's; frames past an utterance's end are never read
    emit = np.zeros((frames, size_rows, size), dtype=rows[0].dtype)  # [T, B, S]
    for r, row in enumerate(rows):
        if row.shape[0]:
            emit[:row.shape[0], r] = row[:, states] - (
                row.max(1, keepdims=True) if tops is None else tops[r])
    last_token = np.array(ends)
    # the four ways into a state at a frame, in the order that settles ties (argmax: the
    # first): entering anew (of equal paths, the one that starts latest: leading blanks are
    # not part of the word), from the state before, from the one before that, staying; and
    # where each way's best path began. options[3] and began[3] are the scores and starts so far
    options = np.full((4, size_rows, size), -np.inf)
    options[0] = np.where(enter, 0.0, -np.inf)
    began = np.zeros((4, size_rows, size), dtype=np.int64)
    stepping = np.where(step, 0.0, -np.inf)[1:]  # -inf: not from there
    jumping = np.where(jump, 0.0, -np.inf)[2:]
    every_row, every_state = np.arange(size_rows)[:, None], np.arange(size)[None, :]
    # each frame's scores and starts of the sequences' last tokens, the best chosen after
    ended = np.empty((frames, size_rows, count))
    started = np.empty((frames, size_rows, count), dtype=np.int32)
    for t in range(frames):
        np.add(options[3, :, :-1], stepping, out=options[1, :, 1:])
        np.add(options[3, :, :-2], jumping, out=options[2, :, 2:])
        began[0] = t
        began[1, :, 1:], began[2, :, 2:] = began[3, :, :-1], began[3, :, :-2]
        choice = options.argmax(0)
        np.add(options.max(0), emit[t], out=options[3])
        began[3] = began[choice, every_row, every_state]
        ended[t], started[t] = options[3][:, last_token], began[3][:, last_token]
    # of equal scores, the earliest end (trailing blanks cost 0; argmax: the first); only an
    # utterance's own frames
    ended[np.arange(frames)[:, None] >= lengths[None, :]] = -np.inf
    at = ended.argmax(0)[None]  # [1, B, sequences]
    best = np.take_along_axis(ended, at, 0)[0]
    reached = best > -np.inf
    return (np.where(reached, best, found),
            np.where(reached, np.take_along_axis(started, at, 0)[0], first),
            np.where(reached, at[0], last))


# a state whose tokens that earn more, times its rows, are this many: HotwordBias adds them
# from tensors its graph keeps (one addition; Python lists of them cost more past about this)
MANY_TOKENS = 128


class HotwordBias:
    """A transformers logits processor adding a context graph's bonus to each hypothesis'
    next-token scores. One per `generate` call: it follows each row's generated tokens.
    `graph` is one graph for every utterance of the batch, or a list of one per utterance (None:
    that one unbiased), so that requests with different lists decode in one batch; beam search's
    rows are the utterances' beams in order."""

    def __init__(self, graph: ContextGraph | Sequence[ContextGraph | None]) -> None:
        self.graphs: list[ContextGraph | None] = (
            [graph] if isinstance(graph, ContextGraph) else list(graph))
        self.states: dict[tuple[int, tuple[int, ...]], State] = {}
        # the last step's groups of rows by state, and its additions (`_additions`): the next
        # step most often has the same (every beam at the root until a hotword begins)
        self._layout: tuple = ()
        self._additions: tuple = ()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        rows = input_ids.tolist()
        per = max(1, len(rows) // len(self.graphs))  # rows an utterance: its beams
        states: dict[tuple[int, tuple[int, ...]], State] = {}
        groups: dict[tuple[int, State], list[int]] = {}
        for r, row in enumerate(rows):
            which = min(r // per, len(self.graphs) - 1)
            graph = self.graphs[which]
            if graph is None:
                continue
            prefix = tuple(row)
            state = states.get((which, prefix))
            if state is None:
                parent = self.states.get((which, prefix[:-1])) if prefix else ROOT
                if parent is None:  # not generated by the previous step: walk from the root
                    parent = ROOT
                    for token in prefix[:-1]:
                        parent = graph.next_state(parent, token)
                state = graph.next_state(parent, prefix[-1]) if prefix else ROOT
                states[(which, prefix)] = state
            groups.setdefault((which, state), []).append(r)
        self.states = states
        layout = (scores.device, scores.dtype,
                  *((key, tuple(members)) for key, members in groups.items()))
        if layout != self._layout:
            self._layout, self._additions = layout, self._additions_of(groups, scores)
        taken, put, many = self._additions
        if taken is not None:
            scores[taken[0]] += taken[1][:, None]
        if put is not None:
            scores.index_put_(put[:2], put[2], accumulate=True)
        for members, tokens, values in many:
            scores[members[:, None], tokens] += values
        return scores

    def _additions_of(self, groups: dict[tuple[int, State], list[int]], scores: torch.Tensor
                      ) -> tuple:
        """What every group's bonus adds to `scores` (rows, tokens and values as tensors where
        the scores are): the defaults (a partial match taken back) on their rows in one
        addition, then the tokens that earn more, those of states with a few on a few rows in
        one addition for the batch, those of a state with many (a long list's root state, at
        every step) in one addition for its rows, from tensors its graph keeps."""
        taken: list[int] = []  # rows with a default, and it
        back: list[float] = []
        rows_of: list[int] = []  # (row, token, value) of every token of the few
        tokens_of: list[int] = []
        values_of: list[float] = []
        many: dict[tuple[int, State], tuple[ContextGraph, list[int]]] = {}  # a graph's rows
        for (which, state), members in groups.items():
            graph = self.graphs[which]
            assert graph is not None
            row = graph.transition(state)
            if row.default:
                taken += members
                back += [row.default] * len(members)
            if len(row.token_list) * len(members) >= MANY_TOKENS:
                many.setdefault((id(graph), state), (graph, []))[1].extend(members)
            elif row.token_list:
                for member in members:
                    rows_of += [member] * len(row.token_list)
                    tokens_of += row.token_list
                    values_of += row.value_list
        device = scores.device
        return ((torch.tensor(taken, device=device),
                 torch.tensor(back, device=device, dtype=scores.dtype)) if taken else None,
                (torch.tensor(rows_of, device=device), torch.tensor(tokens_of, device=device),
                 torch.tensor(values_of, device=device, dtype=torch.float32).to(scores.dtype))
                if rows_of else None,
                [(torch.tensor(members, device=device),
                  *graph.bonus_tensors(state, device, scores.dtype))
                 for (_, state), (graph, members) in many.items()])
