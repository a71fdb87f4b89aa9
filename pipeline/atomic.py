"""Atomic outputs: every product is written beside its final path and renamed into place on success.

A run killed at any moment leaves either the previous complete file or the new complete file at the final
path, never a partial one; the temporary file of a failed write is removed. The new file is flushed to
disk (fsync) before the rename and the folder after it, so a crash of the machine cannot publish an empty
or partial file either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "temp_path_for", "remove_with_sidecars", "fsync_path", "free_bytes", "is_disk_full", "TEMP_MARKER"]

TEMP_MARKER = ".sw-tmp-"


def temp_path_for(final: Path) -> Path:
    """A unique temporary path in the same folder as ``final`` (same filesystem, so rename is atomic).

    The suffix is kept so that drivers chosen by extension still recognise the file.
    """
    return final.with_name(f"{final.stem}{TEMP_MARKER}{uuid.uuid4().hex[:12]}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``final``, on error it is deleted.

    Sidecar files a driver creates next to the temporary file (``.aux.xml``, ``.ovr``) are removed too.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent)
    finally:
        remove_with_sidecars(tmp)


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk; a path that is not there is left alone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the rename is still atomic
        pass
    finally:
        os.close(fd)


def is_disk_full(err: BaseException) -> bool:
    """Whether an error (or one it was raised from) says the file system is full."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
                text in str(err) for text in ("No space left", "disk is full", "Disk quota exceeded")):
            return True
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return False


def free_bytes(folder: Path) -> int | None:
    """Bytes free to this user in ``folder``'s file system (None when it cannot be told)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def remove_with_sidecars(path: Path) -> None:
    """Delete ``path`` and the files a driver made beside it (``<name>.aux.xml``, ``<name>.ovr``...), if any."""
    for leftover in path.parent.glob(path.name + "*"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
