"""Batched decoding of a data.list or a Kaldi dir into `uttid -> text`, with timing."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mooer.data.collate import move_batch
from mooer.data.features import Frontend
from mooer.data.hotword_list import REWRITE_THRESHOLD
from mooer.data.loader import EpochDataLoader, PipelineOptions, ShardDataset, model_slots
from mooer.data.prompts import PromptBuilder, PromptFormat
from mooer.data.text import WORD_JOINER
from mooer.inference.align import Word, align_words, viterbi_batch
from mooer.inference.hotwords import (
    CHECK_THRESHOLD,
    ContextGraph,
    HotwordBias,
    Spotting,
    frame_summaries,
)
from mooer.inference.posteriors import Posteriors
from mooer.inference.rewrite import rewrite
from mooer.models.speech_llm import Generated, SpeechLLM

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    """Hypotheses of one set and what they cost."""

    hypotheses: dict[str, str]
    references: dict[str, str]  # the transcripts the data carried
    audio_seconds: float
    elapsed: float
    duplicates: list[str] = field(default_factory=list)  # uttids the data held more than once
    tokens: dict[str, list[int]] = field(default_factory=dict)  # each answer's token ids
    durations: dict[str, float] = field(default_factory=dict)  # each utterance's audio seconds
    words: dict[str, list[Word]] = field(default_factory=dict)  # with timestamps: word times
    retried: list[str] = field(default_factory=list)  # flagged by the guard, decoded again
    flagged: dict[str, str] = field(default_factory=dict)  # still flagged after that: why
    # with token_log_probs: each answer token's log-probability under the decoder
    token_log_probs: dict[str, list[float]] = field(default_factory=dict)

    @property
    def rtf(self) -> float:
        return self.elapsed / self.audio_seconds if self.audio_seconds else 0.0

    @property
    def utterances_per_second(self) -> float:
        return len(self.hypotheses) / self.elapsed if self.elapsed else 0.0


def decoding_loader(source: str | Path, model: SpeechLLM, frontend: Frontend, prompt: PromptFormat,
                    task: str, batch_size: int, num_workers: int = 0,
                    keys: frozenset[str] | None = None,
                    hotwords: ContextGraph | dict[str, ContextGraph] | None = None
                    ) -> EpochDataLoader:
    """Prompt-only batches of a data.list or Kaldi dir for `model` (its tokenizer and slot
    arithmetic), asking `task` in `prompt`'s words, sorted by length to pad little; only the
    utterances in `keys` when given (a decoding rank's share). Where the prompt format shows
    hotwords (trained biasing), it shows the words of `hotwords` (one graph, or one an uttid)."""
    listed = (None if hotwords is None or not prompt.context.applies(task)
              else {key: graph.words for key, graph in hotwords.items()}
              if isinstance(hotwords, dict) else hotwords.words)
    builder = PromptBuilder(model.tokenizer, prompt, task=task, hotwords=listed)
    options = PipelineOptions(training=False, inference=True, batch_size=batch_size,
                              sort_buffer=batch_size * 16, min_length=0, max_length=10**9,
                              keys=keys)
    dataset = ShardDataset(source, frontend, builder, model_slots(model), options)
    return EpochDataLoader(dataset, num_workers=num_workers, name=str(source), distributed=False)


def decode(model: SpeechLLM, loader: EpochDataLoader, decoding: dict[str, Any],
           device: torch.device, dtype: torch.dtype, total: int | None = None,
           desc: str = "decoding", progress: bool = True) -> Decoded:
    """Generate every utterance of `loader`; a progress bar counts utterances (unless not
    `progress`). `decoding` holds generate's options and, under `hotwords`, a ContextGraph to
    bias towards (`mooer.inference.hotwords`), or a mapping of uttid to its own graph (an
    utterance without one is decoded unbiased, in the same batches)."""
    hypotheses: dict[str, str] = {}
    references: dict[str, str] = {}
    tokens: dict[str, list[int]] = {}
    durations: dict[str, float] = {}
    seconds, duplicates, seen = 0.0, [], set()
    decoding = dict(decoding)
    graph = decoding.pop("hotwords", None)  # a ContextGraph (or one an uttid): a fresh
    # processor a batch
    # with a CTC head, only the listed words it hears are biased (None: all of them)
    check = decoding.pop("hotword_check", CHECK_THRESHOLD)
    # with a CTC head, the listed words it hears within this many nats are tried in the answer
    # after decoding, and kept where the model prefers them (None: not)
    rewriting = decoding.pop("hotword_rewrite", REWRITE_THRESHOLD)
    timestamps = decoding.pop("timestamps", False)  # word times by CTC forced alignment
    scored = decoding.pop("token_log_probs", False)  # the decoder's posteriors of the answers
    log_probs: dict[str, list[float]] = {}
    words: dict[str, list[Word]] = {}
    started = time.perf_counter()
    with tqdm(total=total, desc=desc, unit="utt", disable=not progress) as bar:
        for batch in loader:
            for key in batch["keys"]:
                if key in seen:
                    duplicates.append(key)
                seen.add(key)
            graphs = ([graph.get(key) for key in batch["keys"]] if isinstance(graph, dict)
                      else [graph] * len(batch["keys"]) if graph else [])
            moved = move_batch(batch, device, dtype)
            generated, encoded, ctc = generate_batch(model, moved, graphs, decoding, check,
                                                     rewriting, timestamps, scored)
            hypotheses.update(zip(batch["keys"], generated.texts, strict=True))
            references.update(zip(batch["keys"], batch["targets"], strict=True))
            tokens.update(zip(batch["keys"], generated.token_ids, strict=True))
            durations.update(zip(batch["keys"], batch["audio_durations"], strict=True))
            if timestamps:
                words.update(word_times(model, moved, generated.texts, ctc))
            if scored:
                log_probs.update(zip(batch["keys"], model.answer_log_probs(
                    moved, generated.token_ids, encoded), strict=True))
            seconds += batch["audio_seconds"]
            bar.update(len(batch["keys"]))
    if duplicates:
        log.warning("%s: %d uttids came more than once (the last hypothesis is kept): %s", desc,
                    len(duplicates), " ".join(sorted(set(duplicates))[:10]))
    return Decoded(hypotheses, references, seconds, time.perf_counter() - started, duplicates,
                   tokens, durations, words, token_log_probs=log_probs)


def generate_batch(model: SpeechLLM, moved: dict[str, Any], graphs: list[ContextGraph | None],
                   decoding: dict[str, Any], check: float | None = CHECK_THRESHOLD,
                   rewriting: float | None = REWRITE_THRESHOLD, timestamps: bool = False,
                   scored: bool = False) -> tuple[Generated, tuple | None, Posteriors | None]:
    """One batch's answers (on its device), biased towards each row's graph (`graphs`: one a
    row, or none for the batch): with a CTC head, checked at `check` and rewritten at
    `rewriting` (`decode`); with the encoder's output where it was computed (for the
    hotwords, or asked: `timestamps`, `scored`), and the CTC head's posteriors where they are
    read after the decoding (rewriting, `timestamps`), kept where the head computed them (the
    host reads them by columns: `Posteriors`)."""
    # a list at score 0 biases nothing here (a prompt may still list it)
    graphs = [g if g is not None and g.biases else None for g in graphs]
    floor = min((t for t in (check, rewriting) if t is not None), default=None)
    listening = any(graphs) and floor is not None and model.has_ctc_head
    # the encoder pass, shared with the alignment, the scoring and the hotwords' check
    # and rewriting, and the CTC head's posteriors, shared by all of them but scoring
    encoded = model.encode(moved) if timestamps or scored or listening else None
    head = model.ctc_log_probs(moved, encoded) if timestamps or listening else None
    # read on the host by the columns asked for (on an accelerator, only those come over: at
    # a 151k vocabulary, 16 utterances of 170 frames are 1.65 GB, a few thousand columns read)
    ctc = None if head is None else Posteriors(*head)
    del head
    listed, spotted = graphs, []
    if listening and ctc is not None and floor is not None:
        spotted = hearing(ctc, graphs, floor)
        if check is not None:
            graphs = [None if g is None or found is None else g.cut(found, check)
                      for g, found in zip(graphs, spotted, strict=True)]
    options = decoding if not any(graphs) else {
        **decoding, "logits_processor": [*decoding.get("logits_processor", []),
                                         HotwordBias(graphs)]}
    rewriting_now = bool(spotted) and rewriting is not None
    if not (rewriting_now or timestamps):  # read no more: their memory is free during the beam
        ctc = None
    # the beam's other hypotheses: a listed word must beat them too (rewriting)
    # and their prompts' keys and values, to score the candidates without the prompts again
    generated = model.generate(moved, encoded=encoded, others=rewriting_now,
                               keep_prompt=rewriting_now, **options)
    if rewriting_now and rewriting is not None and encoded is not None and ctc is not None:
        generated = rewritten(generated, rewrite(
            model, moved, encoded, ctc, generated.texts, generated.token_ids, listed,
            spotted, rewriting, generated.others, generated.prompt_cache))
    return generated, encoded, ctc


def hearing(ctc: Posteriors | tuple[torch.Tensor, torch.Tensor],
            graphs: list[ContextGraph | None], floor: float) -> list[Spotting | None]:
    """How well the CTC head's log-posteriors of each utterance of the batch spell each token
    sequence of its graph (`ContextGraph.spotted`, searched down to `floor`)."""
    posteriors = Posteriors.of(ctc)
    # each frame's best score and each class's best, where the posteriors are (on a 151k
    # vocabulary, 16 utterances of 10 s: 0.36 s of a CPU), for the rows with a graph: two
    # passes over [T, V], and then only the columns of the sequences searched come to the host
    summaries = frame_summaries(posteriors.log_probs, [
        n if g is not None else 0 for n, g in zip(posteriors.frames, graphs, strict=True)])
    found: list[Spotting | None] = [None] * len(graphs)
    shared: dict[int, list[int]] = {}  # the rows of each graph (a list for a whole set: one)
    for row, g in enumerate(graphs):
        if g is not None:
            shared.setdefault(id(g), []).append(row)
    for rows in shared.values():
        graph = graphs[rows[0]]
        assert graph is not None
        spotted = graph.spotted_on(posteriors, rows, floor, [summaries[row] for row in rows])
        for row, spotting in zip(rows, spotted, strict=True):
            found[row] = spotting
    return found


def rewritten(generated: Generated, answers: list[tuple[str, list[int]] | None]) -> Generated:
    """`generated` with the answers `rewrite` rewrote (text and token ids; None: as they
    were)."""
    if all(answer is None for answer in answers):
        return generated
    return Generated(
        [old if new is None else new[1] for old, new in zip(generated.token_ids, answers,
                                                            strict=True)],
        [old if new is None else new[0] for old, new in zip(generated.texts, answers,
                                                            strict=True)])


def word_times(model: SpeechLLM, batch: dict[str, Any], texts: list[str],
               ctc: Posteriors | tuple[torch.Tensor, torch.Tensor] | None
               ) -> dict[str, list[Word]]:
    """Each utterance's words with times and confidence, by forced alignment of its text on the
    CTC head's log-posteriors and frames of the batch (`ctc`: `SpeechLLM.ctc_log_probs`, or
    those as `Posteriors`; None for a model without a head) (`mooer.inference.align`); an
    utterance that cannot be aligned gets none."""
    if ctc is None:
        raise ValueError("word times need the encoder's CTC head, which this model has not: "
                         "train one (experiment=ctc_head) and load it (model.ctc_head=)")
    posteriors = Posteriors.of(ctc)
    tokens = [model.tokenizer(text.replace(WORD_JOINER, " "))["input_ids"] if text else []
              for text in texts]
    # the answers' tokens' columns and the blank's, on the host (`Posteriors.columns`)
    log_probs, columns = posteriors.columns(tokens)
    blank = log_probs.shape[-1] - 1
    frames = posteriors.frames
    paths = viterbi_batch(log_probs, frames, columns, blank)  # the batch's alignments at once
    result = {}
    for row, key in enumerate(batch["keys"]):
        spans = paths[row]
        result[key] = [] if spans is None else align_words(
            log_probs[row, :frames[row]], tokens[row], model.tokenizer, blank,
            batch["audio_durations"][row] / max(frames[row], 1), spans, columns[row]) or []
    return result
