"""Ordered map over worker processes, or in-process when one worker is asked for."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


@contextlib.contextmanager
def parallel_map(fn: Callable[[T], R], jobs: Iterable[T], workers: int, chunksize: int = 1
                 ) -> Iterator[Iterator[R]]:
    """Yield an iterator of fn(job) in job order, computed by `workers` forked processes."""
    if workers <= 1:
        yield map(fn, jobs)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield pool.imap(fn, jobs, chunksize=chunksize)
