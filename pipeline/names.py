"""Safe output names: scene and STAC ids never become paths as they are."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

__all__ = ["safe_name", "scene_id", "unique_names"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(raw: str, max_length: int = 100) -> str:
    """A file-name-safe form of ``raw`` that cannot escape a folder and keeps distinct ids distinct.

    Letters, digits, ``.``, ``_`` and ``-`` are kept (accents are folded to ASCII); anything else becomes
    ``_``; leading dots and dashes are dropped so that ``..``, hidden names and names that read as options
(``-rf``, for GDAL's layer rules and every command line) cannot arise. When anything had to change,
    a short hash of the raw id is appended, so ``a/b`` and ``a_b`` never collide.
    """
    folded = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("_", folded).lstrip(".-").strip("_") or "scene"
    cleaned = cleaned[:max_length]
    if cleaned != raw:
        digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:8]
        cleaned = f"{cleaned}-{digest}"
    return cleaned


def scene_id(path: str | Path) -> str:
    """The id of a scene file (or STAC item): its name without the raster (or .json) extension, made safe."""
    name = Path(path).name
    for ext in (".tiff", ".tif", ".vrt", ".jp2", ".img", ".json"):  # .json: a STAC item
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return safe_name(name)


def unique_names(raws: Sequence[str], keys: Sequence[str] | None = None) -> list[str]:
    """Safe names for ``raws`` that are distinct even on a case-insensitive file system.

    Each raw id becomes :func:`safe_name` of itself; names that would still clash (``a/x`` and ``b/x`` both
    named ``x``, or ``X`` and ``x``) get a short hash of their ``keys`` entry (e.g. the full path, default:
    the raw id) appended, so the result is stable from run to run whatever else is in the list.
    """
    keys = list(raws) if keys is None else list(keys)
    if len(keys) != len(raws):
        raise ValueError("unique_names: raws and keys differ in length")
    if len(set(keys)) != len(keys):
        raise ValueError("unique_names: keys must be distinct")
    names = [safe_name(r) for r in raws]
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.lower(), []).append(i)
    for members in groups.values():
        if len(members) > 1:
            for i in members:
                digest = hashlib.sha256(keys[i].encode("utf-8")).hexdigest()[:8]
                names[i] = f"{names[i]}-{digest}"
    return names
