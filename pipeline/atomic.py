"""Atomic outputs: every product is written beside its final path and renamed into place on success.

A run killed at any moment leaves either the previous complete file or the new complete file at the final
path, never a partial one; the temporary file of a failed write is removed.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "temp_path_for", "remove_with_sidecars", "TEMP_MARKER"]

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
        os.replace(tmp, final)
    finally:
        remove_with_sidecars(tmp)


def remove_with_sidecars(path: Path) -> None:
    """Delete ``path`` and the files a driver made beside it (``<name>.aux.xml``, ``<name>.ovr``...), if any."""
    for leftover in path.parent.glob(path.name + "*"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
