"""Batching across requests: segments that several requests wait on are decoded together.

A server's requests each bring segments (a short recording is one; a long one is cut at pauses)
and the task, beam size and hotword list they ask for. One thread takes the waiting segments
that ask the same thing, up to `max_batch` of them, waiting at most `wait_s` after the first arrived for the
batch to fill, decodes them in one batch and hands each its text. Decoding a batch gives each
segment the text it gets alone (padding is masked), so an answer does not depend on what else
was in its batch.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from mooer.inference.hotwords import ContextGraph
from mooer.inference.recognizer import Recognizer

log = logging.getLogger(__name__)


class Abandoned(RuntimeError):
    """The request's client left before its segments' turn: they were not decoded."""


@dataclass
class Pending:
    """A segment waiting to be decoded: its audio file, what is asked, where the text goes."""

    path: str
    task: str
    num_beams: int
    result: Future = field(default_factory=Future)
    gone: Callable[[], bool] | None = None  # whether its client has left
    arrived: float = field(default_factory=time.monotonic)
    hotwords: ContextGraph | None = None  # the request's own list (batched with any other)
    timestamps: bool = False  # word times (transcripts; the CTC head's)

    @property
    def ask(self) -> tuple[str, int, bool]:
        """What segments decoded together share (each keeps its own hotword list)."""
        return self.task, self.num_beams, self.timestamps


class Batcher:
    """The one thread that decodes: waiting segments of the same task and beam size together."""

    def __init__(self, recognizer: Recognizer, max_batch: int = 8, wait_s: float = 0.01) -> None:
        self.recognizer, self.max_batch, self.wait_s = recognizer, max(1, max_batch), wait_s
        self.batches = 0  # decoded, for the health route and tests
        self._pending: deque[Pending] = deque()
        self._ready = threading.Condition()
        self._ids = itertools.count()
        threading.Thread(target=self._run, name="mooer-batcher", daemon=True).start()

    @property
    def pending(self) -> int:
        """Segments waiting to be decoded."""
        return len(self._pending)

    def submit(self, paths: list[str], task: str, num_beams: int,
               gone: Callable[[], bool] | None = None,
               hotwords: ContextGraph | None = None, timestamps: bool = False) -> list[Future]:
        """Queue one request's segments; each future gives (text, why the guard doubts it,
        word times) (or raises)."""
        items = [Pending(path, task, num_beams, gone=gone, hotwords=hotwords,
                         timestamps=timestamps) for path in paths]
        with self._ready:
            self._pending.extend(items)
            self._ready.notify()
        return [item.result for item in items]

    def _take(self) -> list[Pending]:
        """The next batch: the oldest segment and those asking the same, up to max_batch, once
        there are that many or the oldest has waited wait_s."""
        with self._ready:
            while True:
                while not self._pending:
                    self._ready.wait()
                first = self._pending[0]
                same = [p for p in self._pending if p.ask == first.ask][:self.max_batch]
                left = first.arrived + self.wait_s - time.monotonic()
                if len(same) >= self.max_batch or left <= 0:
                    for item in same:
                        self._pending.remove(item)
                    return same
                self._ready.wait(timeout=left)

    def _run(self) -> None:
        while True:
            batch = self._take()
            live = []
            for item in batch:
                if item.gone is not None and item.gone():
                    item.result.set_exception(Abandoned("the client left before its turn"))
                else:
                    live.append(item)
            if live:
                self._decode(live)

    def _decode(self, batch: list[Pending]) -> None:
        task, num_beams, timestamps = batch[0].ask
        try:
            with tempfile.TemporaryDirectory(prefix="mooer-batch-") as work:
                keys = [f"seg{next(self._ids):09d}" for _ in batch]
                (Path(work) / "wav.scp").write_text(
                    "".join(f"{key} {item.path}\n" for key, item in zip(keys, batch,
                                                                          strict=True)),
                    encoding="utf-8")
                lists = {key: item.hotwords for key, item in zip(keys, batch, strict=True)
                         if item.hotwords is not None}  # each segment's own
                decoded = self.recognizer.decode(work, task, progress=False,
                                                 num_beams=num_beams, hotwords=lists or None,
                                                 timestamps=timestamps)
            self.batches += 1
            for key, item in zip(keys, batch, strict=True):
                if key in decoded.hypotheses:  # its text, and why the guard still doubts it
                    item.result.set_result((decoded.hypotheses[key],
                                            decoded.flagged.get(key, ""),
                                            decoded.words.get(key, [])))
                else:
                    item.result.set_exception(ValueError("the segment could not be decoded"))
        except Exception as err:  # noqa: BLE001 - each waiting request gets the error
            log.exception("decoding a batch of %d segments failed", len(batch))
            for item in batch:
                if not item.result.done():
                    item.result.set_exception(err)
