"""A Recognizer: a model loaded once, with everything it decodes with (prompt format, frontend,
device, dtype, batch size, generation options), for `evaluate.py`, `mooer-transcribe` and
`mooer-serve` alike.

    recognizer = Recognizer.from_config(apply_run_dir(cfg), device="cuda", tasks=["asr"])
    decoded = recognizer.decode("data/test/data.list", "asr")          # a data.list or Kaldi dir
    long = recognizer.decode_long([("meeting", "meeting.flac")], ["asr", "ast"], max_segment_s=30)
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from mooer.config import as_dict
from mooer.data.features import Frontend
from mooer.data.loader import EpochDataLoader
from mooer.data.prompts import PromptFormat
from mooer.devices import resolve_device
from mooer.inference.align import WORD, whole_characters
from mooer.inference.decode import Decoded, decode, decoding_loader
from mooer.inference.distributed import current_rank, rank_device
from mooer.inference.formats import Segment
from mooer.inference.guard import Guard
from mooer.inference.hotwords import ContextGraph
from mooer.inference.loading import load_for_decoding
from mooer.inference.longform import Prepared, collect, prepare
from mooer.inference.segment import MIN_SILENCE_MS
from mooer.models.speech_llm import SpeechLLM

log = logging.getLogger(__name__)

MIN_AUDIO_SECONDS = 0.1  # shorter audio gives the encoder no frame to attend to
UNCHECKED = ("this model has no CTC head: every listed hotword is biased unchecked and not "
             "rewritten, so words the audio does not hold can be put in (keep the list short), "
             "and a list gains less; a head trained apart checks and rewrites them "
             "(python train.py experiment=ctc_head init_from=..., then --ctc_head, or "
             "model.ctc_head= in evaluate.py: docs/decoding.md)")


def prompt_for(cfg: DictConfig, tasks: Sequence[str] = ()) -> PromptFormat:
    """The config's prompt format (`conf/task`, or a run's own), refusing any of `tasks` it has
    no instruction for (before a model is loaded)."""
    prompt = instantiate(cfg.task)
    for task in tasks:
        prompt.require(task)
    return prompt


@dataclass
class LongDecoded:
    """Recordings decoded in segments: each recording's segments in time order, each task's
    `Decoded` (timing), and what could not be decoded (too short, no speech found)."""

    recordings: dict[str, list[Segment]]
    runs: list[Decoded]
    prepared: Prepared

    @property
    def undecoded(self) -> list[str]:
        """Recordings that had segments none of which came back decoded."""
        return [name for name in self.prepared.names if name not in self.recordings]


@dataclass
class Recognizer:
    """A loaded model and what it decodes with; `decoding` holds generate's options (num_beams,
    max_new_tokens, ...), which a call may override."""

    model: SpeechLLM
    prompt: PromptFormat
    frontend: Frontend
    device: torch.device
    dtype: torch.dtype
    batch_size: int = 8
    decoding: dict[str, Any] = field(default_factory=dict)
    hotwords: ContextGraph | None = None  # biases transcripts (ASR), not translations
    guard: Guard = field(default_factory=Guard)  # hallucinated answers decoded again, marked
    timestamps: bool = False  # word times and confidence of transcripts (the CTC head's)
    _told_unchecked: bool = field(default=False, init=False, repr=False)  # UNCHECKED logged once

    @classmethod
    def from_config(cls, cfg: DictConfig, device: str = "auto", precision: str = "bf16",
                    batch_size: int = 8, decoding: dict[str, Any] | None = None,
                    tasks: Sequence[str] = (), prompt: PromptFormat | None = None) -> Recognizer:
        """The model of an evaluate config (with a run dir applied: `loading.apply_run_dir`),
        loaded with its weights on `device`; `tasks` are checked against the prompt format
        first (or give the `prompt` already checked)."""
        prompt = prompt or prompt_for(cfg, tasks)
        torch_device = rank_device(resolve_device(device), current_rank())  # a GPU a rank
        model, dtype = load_for_decoding(cfg, torch_device, precision)
        try:
            guard = Guard(**as_dict(cfg.guard)) if cfg.get("guard") is not None else Guard()
        except TypeError as err:  # a misspelt key
            raise ValueError(f"guard: {err}; it takes "
                             f"{', '.join(Guard.__dataclass_fields__)}") from None
        return cls(model, prompt, instantiate(cfg.encoder.frontend), torch_device, dtype,
                   batch_size, dict(decoding or {}), guard=guard)

    @property
    def tasks(self) -> list[str]:
        """The tasks the prompt format has an instruction for, of asr and ast."""
        return [task for task in ("asr", "ast") if task in self.prompt.instructions]

    def loader(self, source: str | Path, task: str, keys: frozenset[str] | None = None,
               hotwords: ContextGraph | dict[str, ContextGraph] | None = None
               ) -> EpochDataLoader:
        """Prompt-only batches of a data.list or Kaldi dir, asking `task` (only `keys`; with
        `hotwords` listed in the prompt where the prompt format has a place for them)."""
        return decoding_loader(source, self.model, self.frontend, self.prompt, task,
                               self.batch_size, keys=keys, hotwords=hotwords)

    def decode(self, source: str | Path, task: str, total: int | None = None,
               desc: str = "decoding", progress: bool = True,
               keys: frozenset[str] | None = None, **options: Any) -> Decoded:
        """Every utterance of a data.list or Kaldi dir (or those in `keys`), in batches
        (`options` override the generation options; `hotwords`, a ContextGraph, biases an ASR
        decode and is left out of an AST one)."""
        graph = options.pop("hotwords", self.hotwords)
        if task == "asr" and graph:
            options["hotwords"] = graph
            if not self.model.has_ctc_head and not self._told_unchecked:
                log.warning(UNCHECKED)
                self._told_unchecked = True
        if options.pop("timestamps", self.timestamps) and task == "asr":
            options["timestamps"] = True
        decoding = {**self.decoding, **options}
        decoded = decode(self.model, self.loader(source, task, keys, options.get("hotwords")),
                         decoding, self.device, self.dtype, total=total, desc=desc,
                         progress=progress)
        return self.guarded(decoded, source, task, decoding, desc)

    def guarded(self, decoded: Decoded, source: str | Path, task: str,
                decoding: dict[str, Any], desc: str = "decoding") -> Decoded:
        """`decoded` with the answers the guard flags decoded again (beam search and a
        repetition penalty); those still flagged are kept, named in `flagged` with why."""
        instructions = [self.prompt.instructions[task]] if task in self.prompt.instructions \
            else []

        def flags(run: Decoded, keys) -> dict[str, str]:
            found = {}
            for key in keys:
                reason = self.guard.check(run.tokens.get(key, []), run.hypotheses[key],
                                          run.durations.get(key, 0.0), instructions)
                if reason:
                    found[key] = reason
            return found

        bad = flags(decoded, decoded.hypotheses) if self.guard.enabled else {}
        if not bad:
            return decoded
        retry = {**decoding, "num_beams": max(self.guard.retry_beams,
                                              int(decoding.get("num_beams", 1))),
                 "repetition_penalty": self.guard.retry_repetition_penalty}
        again = decode(self.model, self.loader(source, task, frozenset(bad),
                                               decoding.get("hotwords")),
                       retry, self.device, self.dtype, progress=False)
        for key in again.hypotheses:
            decoded.hypotheses[key] = again.hypotheses[key]
            decoded.tokens[key] = again.tokens[key]
            if key in again.words:
                decoded.words[key] = again.words[key]
            if key in again.token_log_probs:
                decoded.token_log_probs[key] = again.token_log_probs[key]
        decoded.retried = sorted(bad)
        decoded.flagged = flags(decoded, bad)
        for key, reason in decoded.flagged.items():
            if reason in ("loop", "over-long"):  # cut what ran on; it stays marked
                kept = whole_characters(self.guard.trim(decoded.tokens[key],
                                                        decoded.durations.get(key, 0.0)),
                                        self.model.tokenizer)
                decoded.tokens[key] = kept
                decoded.hypotheses[key] = self.model.tokenizer.decode(kept,
                                                                      skip_special_tokens=True)
                if key in decoded.words:  # the words the cut text still holds
                    count = len(WORD.findall(decoded.hypotheses[key]))
                    decoded.words[key] = decoded.words[key][:count]
        decoded.elapsed += again.elapsed
        log.warning("%s: %d answers flagged (%s) and decoded again; %d still flagged%s", desc,
                    len(bad), ", ".join(f"{r}: {n}" for r, n in sorted(
                        Counter(bad.values()).items())), len(decoded.flagged),
                    f": {' '.join(sorted(decoded.flagged)[:10])}" if decoded.flagged else "")
        return decoded

    def decode_prepared(self, prepared: Prepared, tasks: Sequence[str],
                        progress: bool | None = True, **options: Any) -> LongDecoded:
        """Every segment of prepared recordings for each task, gathered per recording; a
        progress bar each task (`progress=None`: only when there are more segments than a
        batch)."""
        if progress is None:
            progress = len(prepared.spans) > self.batch_size
        runs = [self.decode(prepared.directory, task, total=len(prepared.spans), desc=task,
                            progress=progress, **options) for task in tasks]
        return LongDecoded(collect(prepared, [run.hypotheses for run in runs],
                                   [run.flagged for run in runs],
                                   runs[list(tasks).index("asr")].words if "asr" in tasks
                                   else None), runs, prepared)

    def decode_long(self, recordings: Sequence[tuple[str, str]], tasks: Sequence[str],
                    max_segment_s: float = 30.0, min_silence_ms: int = MIN_SILENCE_MS,
                    progress: bool | None = True, **options: Any) -> LongDecoded:
        """(name, path) recordings of any length: each cut where silero-vad finds speech into
        segments of at most `max_segment_s`, decoded, gathered per recording with their times."""
        with tempfile.TemporaryDirectory(prefix="mooer-segments-") as work:
            prepared = prepare(recordings, Path(work), max_segment_s, MIN_AUDIO_SECONDS,
                               min_silence_ms)
            return self.decode_prepared(prepared, tasks, progress, **options)
