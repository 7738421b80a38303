"""Writing files safely: a directory checked writable before long work starts, and the one
atomic write every writer uses (shards, shard lists, checkpoints): write `<path>.partial`, then
swap it in, so a kill or a full disk never leaves a half-written file under the final name."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def writable_dir(directory: str | Path, what: str) -> Path:
    """`directory`, made and checked writable (a file created and removed in it), or ValueError
    naming `what` it is for and why it cannot be written."""
    directory = Path(directory).resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".mooer-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write to {what} {directory}: {err.strerror or err}") from err
    return directory


def partial_path(path: str | Path) -> str:
    """Where a file (or directory) is written before `swap_in` moves it to `path`."""
    return f"{path}{PARTIAL_SUFFIX}"


def swap_in(partial: str | Path, path: str | Path) -> None:
    """Put a completely written file or directory under its final name: atomically over an old
    file; an old directory is moved aside first and removed after."""
    if not os.path.isdir(partial):
        os.replace(partial, path)
        return
    old = f"{path}.old"
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(partial, path)
    shutil.rmtree(old, ignore_errors=True)


def is_disk_full(err: OSError) -> bool:
    """Whether a write failed for want of space (or past a file size limit)."""
    return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full_message(path: str | Path, needed: int | None, err: OSError) -> str:
    """What to tell when a write to `path` ran out of space: what failed, how much it needed and
    how much the disk has."""
    try:
        free = shutil.disk_usage(Path(path).parent).free
        room = f"{free / 2**20:,.1f} MB free there"
    except OSError:
        room = "free space unknown"
    wanted = f"about {needed / 2**20:,.1f} MB needed, " if needed else ""
    return (f"could not write {path}: {err.strerror or err} ({wanted}{room}); the previous file "
            "under that name, if any, is untouched: free space and run again")
