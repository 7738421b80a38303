"""Decoding on several processes: each rank takes a share of the utterances dealt by duration,
rank 0 gathers every share and writes the outputs once, as one process would have.

Started by torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT), or by `launch_ranks`, which starts the other ranks of a command itself
(`evaluate.py devices=N`, `mooer-transcribe --devices N`). A rank that fails takes the others
down with its error: its share comes back as the error, which rank 0 raises; a rank that dies
is noticed by the launcher, which stops the rest.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)
Item = TypeVar("Item")


@dataclass(frozen=True)
class Rank:
    """This process's place among the decoding processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def many(self) -> bool:
        return self.world_size > 1


def current_rank() -> Rank:
    """The rank a launcher gave this process (RANK, WORLD_SIZE, LOCAL_RANK), or the only one."""
    return Rank(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))


def rank_device(device: torch.device, rank: Rank) -> torch.device:
    """Each rank on its own accelerator (cuda:LOCAL_RANK, musa:LOCAL_RANK); the CPU is shared."""
    if rank.many and device.type in ("cuda", "musa") and device.index is None:
        return torch.device(device.type, rank.local_rank)
    return device


def join(rank: Rank, device: torch.device) -> None:
    """Join the ranks' process group (gloo: decoding exchanges only Python objects)."""
    if rank.many and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", rank=rank.rank, world_size=rank.world_size,
                                             timeout=datetime.timedelta(minutes=30))


def deal_by_duration(items: Sequence[tuple[Item, float]], world_size: int) -> list[list[Item]]:
    """Each rank's share: the longest item first to the rank with the least audio so far (the
    shares end within one item of each other); each share in the items' own order."""
    shares: list[list[int]] = [[] for _ in range(world_size)]
    totals = [0.0] * world_size
    for index in sorted(range(len(items)), key=lambda i: -items[i][1]):
        lightest = min(range(world_size), key=lambda r: (totals[r], r))
        shares[lightest].append(index)
        totals[lightest] += items[index][1]
    return [[items[i][0] for i in sorted(share)] for share in shares]


@dataclass
class Failed:
    """A rank's share that failed: its error, for rank 0 to raise."""

    rank: int
    error: str


class RankFailed(RuntimeError):
    """A decoding rank failed: every rank stops with its error."""


def gather(rank: Rank, share: Any) -> list[Any] | None:
    """Every rank's share on rank 0 (None elsewhere). A Failed share stops every rank with
    RankFailed naming the rank and its error (rank 0 tells the others)."""
    if not rank.many:
        if isinstance(share, Failed):
            raise RankFailed(share.error)
        return [share]
    shares: list[Any] | None = [None] * rank.world_size if rank.is_first else None
    torch.distributed.gather_object(share, shares, dst=0)
    verdict: list[Any] = [None]
    if rank.is_first and shares is not None:
        failed = [s for s in shares if isinstance(s, Failed)]
        if failed:
            verdict[0] = "; ".join(f"rank {f.rank} failed: {f.error}" for f in failed)
    torch.distributed.broadcast_object_list(verdict, src=0)
    if verdict[0]:
        raise RankFailed(verdict[0])
    return shares


def attempt(rank: Rank, work: Any, *args: Any, **kwargs: Any) -> Any:
    """`work(*args, **kwargs)`, or a Failed share with its error (when there are other ranks to
    tell; a single process raises as usual)."""
    if not rank.many:
        return work(*args, **kwargs)
    try:
        return work(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - handed to rank 0, raised on every rank
        log.exception("rank %d failed", rank.rank)
        return Failed(rank.rank, f"{type(err).__name__}: {err}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(count: int, command: Sequence[str], extra: Sequence[str] = ()) -> int:
    """Run `command` as `count` ranks on this machine (this process waits for them): each gets
    RANK, WORLD_SIZE, LOCAL_RANK and a shared MASTER_ADDR/PORT, and `extra` arguments
    (`{rank}` in them replaced). When one fails, the others are stopped; the exit status is the
    first failure's (0 when all succeed)."""
    port = str(free_port())
    processes = []
    for rank in range(count):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(count),
               "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(count),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        args = [*command, *(part.replace("{rank}", str(rank)) for part in extra)]
        processes.append(subprocess.Popen(args, env=env))
    status = 0
    stop = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)  # stopped: stop the ranks too
    try:
        while any(p.poll() is None for p in processes):
            failed = [p.returncode for p in processes if p.returncode not in (None, 0)]
            if failed and not status:
                status = failed[0]
                log.error("a decoding rank failed (exit %d): stopping the others", status)
                _stop(processes)
            time.sleep(0.2)
    finally:
        _stop(processes)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, stop)
    return status or next((p.returncode for p in processes if p.returncode), 0)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop(processes: Sequence[subprocess.Popen], grace_s: float = 10.0) -> None:
    """Terminate the ranks still running; kill those that outlive `grace_s`."""
    running = [p for p in processes if p.poll() is None]
    for p in running:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def relaunch(count: int, extra: Sequence[str] = ()) -> int:
    """This very command (`sys.argv`) as `count` ranks."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    prefix = [sys.executable, "-m", spec.name] if spec else [sys.executable, sys.argv[0]]
    return launch_ranks(count, [*prefix, *sys.argv[1:]], extra)
