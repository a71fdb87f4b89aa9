"""Stitching: overlapping tile contributions become one seamless probability raster, core by core.

For each output core, the contributions of the tiles whose blend windows cover it (the tile itself and up
to eight neighbours) are summed and divided by their summed weight. Pixels no contribution covers with a
positive weight are invalid input and become nodata. Class indexes are the argmax of the probabilities.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipeline.predict import TileContribution
from tiles.blend import blend_window
from tiles.grid import PixelWindow, Tile, TileGrid

__all__ = ["Stitcher", "stitch", "classify", "encode_proba", "CLASS_NODATA", "PROBA_UINT8_NODATA", "PROBA_UINT8_SCALE"]

CLASS_NODATA = 255
PROBA_UINT8_NODATA = 255
PROBA_UINT8_SCALE = 254  # probability p is stored as round(p * 254); 255 is nodata


def stitch(core: PixelWindow, contributions: Iterable[TileContribution | None],
           num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``contributions`` over ``core``: float32 probabilities ``(classes, rows, cols)`` (NaN where
    invalid) and the bool valid mask."""
    acc = np.zeros((num_classes, core.height, core.width), dtype=np.float32)
    wsum = np.zeros((core.height, core.width), dtype=np.float32)
    for item in contributions:
        if item is not None:
            _accumulate(acc, wsum, core, item)
    return _normalize(acc, wsum)


def _accumulate(acc: np.ndarray, wsum: np.ndarray, core: PixelWindow, item: TileContribution) -> None:
    overlap = item.window.intersection(core)
    if overlap is None:
        return
    src_r, src_c = overlap.relative_to(item.window)
    dst_r, dst_c = overlap.relative_to(core)
    acc[:, dst_r, dst_c] += item.weighted[:, src_r, src_c]
    wsum[dst_r, dst_c] += item.weight[src_r, src_c]


def _normalize(acc: np.ndarray, wsum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    valid = wsum > 0
    proba = np.full_like(acc, np.nan)
    np.divide(acc, wsum, out=proba, where=valid)
    return proba, valid


def classify(proba: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 class index per pixel (argmax), :data:`CLASS_NODATA` where invalid."""
    classes = np.argmax(np.where(valid, proba, 0.0), axis=0).astype(np.uint8)
    classes[~valid] = CLASS_NODATA
    return classes


def encode_proba(proba: np.ndarray, valid: np.ndarray, dtype: str) -> np.ndarray:
    """Probabilities as stored: float32 with NaN nodata, or uint8 ``round(p * 254)`` with 255 nodata."""
    if dtype == "float32":
        return proba.astype(np.float32, copy=False)
    if dtype == "uint8":
        out = np.rint(np.where(valid, proba, 0.0) * PROBA_UINT8_SCALE).astype(np.uint8)
        out[:, ~valid] = PROBA_UINT8_NODATA
        return out
    raise ValueError(f"probability dtype {dtype!r}: choose uint8 or float32")


class Stitcher:
    """Streaming stitcher: feed it tile contributions in any order; it returns each core's blended
    probabilities as soon as every tile that covers that core has arrived, and then forgets that core.

    Memory is one accumulator per core that has some but not all of its contributions: with tiles arriving
    in roughly row-major order, about one row of cores plus the tiles in flight.
    """

    def __init__(self, grid: TileGrid, overlap: int, num_classes: int) -> None:
        self.grid = grid
        self.overlap = overlap
        self.num_classes = num_classes
        self._remaining: dict[tuple[int, int], int] = {}
        self._acc: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def covered_cores(self, tile: Tile) -> list[Tile]:
        """The cores that ``tile``'s blend window reaches (itself and, with overlap, its neighbours)."""
        window = blend_window(tile, self.grid, self.overlap)
        return [n for n in self.grid.neighbours(tile) if window.intersection(n.core_window) is not None]

    def _expected(self, core: Tile) -> int:
        return sum(1 for n in self.grid.neighbours(core) if core in self.covered_cores(n))

    def add(self, tile: Tile, contribution: TileContribution | None) -> list[tuple[Tile, np.ndarray, np.ndarray]]:
        """Add ``tile``'s contribution (None for a skipped tile); return the cores completed by it."""
        done = []
        for core in self.covered_cores(tile):
            key = core.index
            if key not in self._remaining:
                self._remaining[key] = self._expected(core)
            if contribution is not None:
                if key not in self._acc:
                    shape = (core.core_window.height, core.core_window.width)
                    self._acc[key] = (np.zeros((self.num_classes, *shape), np.float32), np.zeros(shape, np.float32))
                _accumulate(*self._acc[key], core.core_window, contribution)
            self._remaining[key] -= 1
            if self._remaining[key] == 0:
                del self._remaining[key]
                acc = self._acc.pop(key, None)
                if acc is None:
                    shape = (core.core_window.height, core.core_window.width)
                    acc = (np.zeros((self.num_classes, *shape), np.float32), np.zeros(shape, np.float32))
                done.append((core, *_normalize(*acc)))
        return done

    @property
    def pending(self) -> int:
        """Cores with some contributions but not yet complete."""
        return len(self._remaining)
