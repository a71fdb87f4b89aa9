"""Seeded synthetic scenes for benchmarks, generated window by window (never a whole scene in memory).

Four uint16 bands (red, green, blue, nir), DEFLATE, 512 px internal tiles. Texture: a few low-frequency
sinusoids that make vegetation patches of tens to hundreds of pixels (so objects cross tile borders), plus
per-pixel noise so compression behaves like real imagery.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

__all__ = ["make_scene"]


def _field(rows: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(rows.shape, dtype=np.float32)
    for _ in range(5):
        fr, fc = rng.uniform(0.002, 0.02, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        out += np.sin(rows * fr * 2 * np.pi + cols * fc * 2 * np.pi + phase, dtype=np.float32)
    return out / 5.0


def make_scene(path: str | Path, size: int, seed: int = 0, block: int = 512) -> Path:
    """Write a ``size x size`` 4-band uint16 scene at ``path`` unless it already exists."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.tif")
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint16",
               "crs": "EPSG:32633", "transform": from_origin(500000.0, 5000000.0, 10.0, 10.0), "nodata": 0,
               "tiled": True, "blockxsize": block, "blockysize": block, "compress": "deflate",
               "bigtiff": "if_safer"}
    rng = np.random.default_rng(seed)
    with rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, size, block):
            for c0 in range(0, size, block):
                h, w = min(block, size - r0), min(block, size - c0)
                rows, cols = np.mgrid[r0 : r0 + h, c0 : c0 + w].astype(np.float32)
                veg = _field(rows, cols, seed) > 0.1
                noise = rng.normal(0, 60, (4, h, w)).astype(np.float32)
                base = 800 + 300 * _field(rows, cols, seed + 1)
                red = np.where(veg, 400, 1400) + base * 0.2
                nir = np.where(veg, 3200, 1800) + base * 0.3
                bands = np.stack([red, base + 200, base, nir]) + noise
                dst.write(np.clip(bands, 1, 65535).astype(np.uint16), window=Window(c0, r0, w, h))
        for i, name in enumerate(("red", "green", "blue", "nir"), start=1):
            dst.set_band_description(i, name)
    tmp.rename(path)
    return path
