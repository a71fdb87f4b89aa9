"""One run per output folder at a time: an OS-level lock file that dies with the process holding it.

``fcntl.flock`` on ``<out>/.scenewatch.lock``: the kernel releases it when the holder exits, however it
exits (kill -9 included), so a crashed run never leaves a stale lock for the next night's run to trip on.
The file records the holder's pid and start time for the message the second run prints.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import ScenewatchError

__all__ = ["JobLockedError", "job_lock", "LOCK_NAME", "is_locked"]

LOCK_NAME = ".scenewatch.lock"


class JobLockedError(ScenewatchError, BlockingIOError):
    """Another run of a job holds the output folder's lock."""

    exit_code = 4


@contextlib.contextmanager
def job_lock(out_dir: Path, job: str) -> Iterator[Path]:
    """Hold the output folder's lock for the block; raise JobLockedError at once if another process has it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by worker processes (O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise JobLockedError(
                f"job {job}: output folder {out_dir} is locked by a run still in progress ({holder}); "
                f"wait for it to finish or check `scenewatch status`"
            ) from err
        os.ftruncate(fd, 0)
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()}, started {started}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def is_locked(out_dir: Path) -> bool:
    """Whether a run holds ``out_dir``'s lock now (for `scenewatch status`)."""
    path = out_dir / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
