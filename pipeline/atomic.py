"""Atomic outputs: every product is written beside its final path and renamed into place on success.

A run killed at any moment leaves either the previous complete file or the new complete file at the final
path, never a partial one; the temporary file of a failed write is removed. The new file is flushed to
disk (fsync) before the rename and the folder after it, so a crash of the machine cannot publish an empty
or partial file either.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import OutputError

__all__ = ["atomic_path", "temp_path_for", "remove_with_sidecars", "fsync_path", "free_bytes", "is_disk_full",
           "sweep_stale_temps", "output_folder", "output_subfolder", "removed_if_left_empty", "TEMP_MARKER"]

TEMP_MARKER = ".sw-tmp-"


# This host and process, in every temporary name: a later run can then tell a leftover of a process that
# died (same host, process gone) from the file of a run still going, here or on another machine.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_OWNER = re.compile(re.escape(TEMP_MARKER) + r"([0-9a-f]{6})-(\d+)-")


def temp_path_for(final: Path) -> Path:
    """A unique temporary path in the same folder as ``final`` (same filesystem, so rename is atomic).

    The suffix is kept so that drivers chosen by extension still recognise the file.
    """
    return final.with_name(f"{final.stem}{TEMP_MARKER}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}{final.suffix}")


def sweep_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporary files in ``folder`` (not below it) that a killed run of this host left: those
    whose process is gone. Files of live processes, and of other hosts sharing the folder, stay."""
    removed = []
    for leftover in folder.glob(f"*{TEMP_MARKER}*"):
        owner = _OWNER.search(leftover.name)
        if owner is None or owner.group(1) != _HOST or not leftover.is_file() or _alive(int(owner.group(2))):
            continue
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
            removed.append(leftover)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def output_folder(folder: str | os.PathLike[str]) -> Path:
    """``folder``, created if needed, or an OutputError saying why it cannot be written (read-only, a path
    under a regular file, no permission), instead of the OS's traceback."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise OutputError(f"output folder {folder}: a file is in the way ({err.strerror}); choose another "
                          "folder") from err
    except OSError as err:
        raise OutputError(f"output folder {folder}: cannot be created ({err.strerror or err}); check the path "
                          "and its permissions") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder}: not writable; check its permissions or choose another")
    return folder


def output_subfolder(out_dir: Path, relative: Path) -> Path:
    """``out_dir / relative``, made by :func:`output_folder`, after checking that writing there stays inside
    ``out_dir``: no part below ``out_dir`` may be a symbolic link (``out/2009 -> /elsewhere`` would send
    products out of it)."""
    folder = out_dir
    for part in relative.parts:
        if part in ("", ".", ".."):
            raise OutputError(f"output folder {out_dir / relative}: not a plain relative name")
        folder = folder / part
        if folder.is_symlink():
            raise OutputError(f"output folder {folder}: is a symbolic link; scenewatch writes only inside "
                              f"{out_dir}, so remove the link or choose another output folder")
    output_folder(folder)
    if not folder.resolve().is_relative_to(out_dir.resolve()):
        raise OutputError(f"output folder {folder}: resolves outside {out_dir}")
    return folder


@contextlib.contextmanager
def removed_if_left_empty(folder: Path) -> Iterator[None]:
    """Remove ``folder`` (and the parents this call created) if the block fails and leaves them empty."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for path in missing:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


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
