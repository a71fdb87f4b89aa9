"""Safe output names: scene and STAC ids never become paths as they are."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

__all__ = ["safe_name", "scene_id"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(raw: str, max_length: int = 100) -> str:
    """A file-name-safe form of ``raw`` that cannot escape a folder and keeps distinct ids distinct.

    Letters, digits, ``.``, ``_`` and ``-`` are kept (accents are folded to ASCII); anything else becomes
    ``_``; leading dots are dropped so that ``..`` and hidden names cannot arise. When anything had to change,
    a short hash of the raw id is appended, so ``a/b`` and ``a_b`` never collide.
    """
    folded = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("_", folded).lstrip(".").strip("_") or "scene"
    cleaned = cleaned[:max_length]
    if cleaned != raw:
        digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:8]
        cleaned = f"{cleaned}-{digest}"
    return cleaned


def scene_id(path: str | Path) -> str:
    """The id of a scene file: its name without the raster extension, made safe."""
    name = Path(path).name
    for ext in (".tiff", ".tif", ".vrt", ".jp2", ".img"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return safe_name(name)
