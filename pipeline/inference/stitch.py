"""Stitching: overlapping tile predictions become one seamless raster, core by core.

A tile's blend window (its core grown by the blend overlap) splits in two parts (see :func:`split_core`):

* the *interior*: pixels of its own core that no neighbour reaches. Their blended value is the tile's own
  prediction, so the worker that ran the model finishes them there (class index and stored probability);
* the *ring*: the rest of the blend window, which neighbours overlap. It travels as weighted probabilities
  and weights (:class:`BlendPart`), and :class:`Stitcher` sums the parts that cover each core and divides
  by the summed weight (:mod:`tiles.blend` makes the weights a partition of unity).

So only the thin ring crosses process boundaries as float32, and the task that writes a piece of the raster
(``workflows.scene._stitch_piece``, in a worker) only blends rings. Pixels without a positive summed weight
are invalid input and become nodata; class indexes are the argmax of the probabilities.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.products import CLASS_NODATA, PROBA_UINT8_NODATA, PROBA_UINT8_SCALE
from tiles.blend import blend_window
from tiles.grid import PixelWindow, Tile, TileGrid

__all__ = [
    "BlendPart",
    "TileContribution",
    "FinishedCore",
    "Stitcher",
    "split_core",
    "ring_windows",
    "blend_parts",
    "classify",
    "encode_proba",
    "decode_proba",
    "CLASS_NODATA",
    "PROBA_UINT8_NODATA",
    "PROBA_UINT8_SCALE",
]



@dataclass(frozen=True, slots=True)
class BlendPart:
    """Weighted probabilities over ``window``: ``weighted`` (classes, rows, cols) = weight x probability."""

    window: PixelWindow
    weighted: np.ndarray
    weight: np.ndarray


@dataclass(frozen=True, slots=True)
class TileContribution:
    """What a worker returns for one tile: its finished interior and its ring parts for the stitcher."""

    tile: Tile
    interior: PixelWindow | None
    classes: np.ndarray | None  # (rows, cols) uint8 over the interior
    proba: np.ndarray | None  # (classes, rows, cols) over the interior, stored dtype (uint8 or float32)
    parts: tuple[BlendPart, ...]


@dataclass(frozen=True, slots=True)
class FinishedCore:
    """A core ready to write: class indexes and stored probabilities over ``tile.core_window``."""

    tile: Tile
    classes: np.ndarray
    proba: np.ndarray


def split_core(tile: Tile, grid: TileGrid, overlap: int) -> PixelWindow | None:
    """The interior of ``tile``'s core: the core shrunk by ``overlap`` on every side that has a neighbour
    (None when nothing is left). Only this tile's prediction reaches those pixels."""
    core = tile.core_window
    top = overlap if core.row_off > 0 else 0
    bottom = overlap if core.row_end < grid.height else 0
    left = overlap if core.col_off > 0 else 0
    right = overlap if core.col_end < grid.width else 0
    height, width = core.height - top - bottom, core.width - left - right
    if height <= 0 or width <= 0:
        return None
    return PixelWindow(core.row_off + top, core.col_off + left, height, width)


def ring_windows(outer: PixelWindow, inner: PixelWindow | None) -> list[PixelWindow]:
    """``outer`` minus ``inner`` as at most four rectangles (full-width top and bottom, then sides)."""
    if inner is None:
        return [outer]
    parts = [
        PixelWindow(outer.row_off, outer.col_off, inner.row_off - outer.row_off, outer.width),
        PixelWindow(inner.row_end, outer.col_off, outer.row_end - inner.row_end, outer.width),
        PixelWindow(inner.row_off, outer.col_off, inner.height, inner.col_off - outer.col_off),
        PixelWindow(inner.row_off, inner.col_end, inner.height, outer.col_end - inner.col_end),
    ]
    return [p for p in parts if p.height > 0 and p.width > 0]


def blend_parts(window: PixelWindow, proba: np.ndarray, weight: np.ndarray,
                interior: PixelWindow | None) -> tuple[BlendPart, ...]:
    """The ring of a blend window as weighted parts; ``proba`` and ``weight`` cover ``window``."""
    parts = []
    for piece in ring_windows(window, interior):
        rows, cols = piece.relative_to(window)
        w = weight[rows, cols]
        parts.append(BlendPart(piece, proba[:, rows, cols] * w, w))
    return tuple(parts)


def classify(proba: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 class index per pixel (argmax), :data:`CLASS_NODATA` where invalid."""
    # class by class rather than np.argmax over the leading axis, which strides through memory and was
    # 100x slower for two classes (first maximum wins, as with argmax)
    if len(proba) == 2:
        classes = np.greater(proba[1], proba[0]).view(np.uint8)
    else:
        best = proba[0].copy()
        classes = np.zeros(proba.shape[1:], dtype=np.uint8)
        for c in range(1, len(proba)):
            higher = proba[c] > best
            np.copyto(classes, np.uint8(c), where=higher)
            np.copyto(best, proba[c], where=higher)
    classes[~valid] = CLASS_NODATA
    return classes


def encode_proba(proba: np.ndarray, valid: np.ndarray, dtype: str) -> np.ndarray:
    """Probabilities as stored: float32 with NaN nodata, or uint8 ``round(p * 254)`` with 255 nodata."""
    if dtype == "float32":
        out = proba.astype(np.float32, copy=True)
        out[:, ~valid] = np.nan
        return out
    if dtype == "uint8":
        scaled = np.multiply(proba, np.float32(PROBA_UINT8_SCALE), dtype=np.float32)
        out = np.rint(scaled, out=scaled).astype(np.uint8)
        if not valid.all():
            np.copyto(out, np.uint8(PROBA_UINT8_NODATA), where=~valid)
        return out
    raise ValueError(f"probability dtype {dtype!r}: choose uint8 or float32")


def decode_proba(stored: np.ndarray) -> np.ndarray:
    """float32 probabilities (NaN nodata) from either stored form."""
    if stored.dtype == np.uint8:
        out = stored.astype(np.float32) / PROBA_UINT8_SCALE
        out[stored == PROBA_UINT8_NODATA] = np.nan
        return out
    return stored.astype(np.float32, copy=False)


def _normalize(acc: np.ndarray, wsum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    valid = wsum > 0
    proba = np.zeros_like(acc)
    np.divide(acc, wsum, out=proba, where=valid)
    return proba, valid


def stitch(core: PixelWindow, parts: Iterable[BlendPart], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``parts`` over ``core``: float32 probabilities ``(classes, rows, cols)`` (0 where invalid) and
    the bool valid mask."""
    acc = np.zeros((num_classes, core.height, core.width), dtype=np.float32)
    wsum = np.zeros((core.height, core.width), dtype=np.float32)
    for part in parts:
        overlap = part.window.intersection(core)
        if overlap is None:
            continue
        src_r, src_c = overlap.relative_to(part.window)
        dst_r, dst_c = overlap.relative_to(core)
        acc[:, dst_r, dst_c] += part.weighted[:, src_r, src_c]
        wsum[dst_r, dst_c] += part.weight[src_r, src_c]
    return _normalize(acc, wsum)


@dataclass(slots=True)
class _PendingCore:
    remaining: int
    parts: list[BlendPart]
    own: TileContribution | None = None


class Stitcher:
    """Streaming stitcher: feed it tile contributions in any order; it returns each core, finished, as soon
    as every tile whose blend window reaches that core has arrived, and then forgets that core.

    It holds, per incomplete core, the ring parts that reach it and the core's finished interior: in a piece
    task (``workflows.scene``), the tiles around one piece.
    """

    def __init__(self, grid: TileGrid, overlap: int, num_classes: int, proba_dtype: str,
                 cores: Iterable[tuple[int, int]] | None = None) -> None:
        self.grid = grid
        self.overlap = overlap
        self.num_classes = num_classes
        self.proba_dtype = proba_dtype
        # only these cores (``Tile.index``) are followed and finished; None: every core. A piece task
        # finishes its own cores only: the tiles it adds reach as many cores again above and below it
        self._only = None if cores is None else frozenset(cores)
        self._pending: dict[tuple[int, int], _PendingCore] = {}
        self._covered: dict[tuple[int, int], list[Tile]] = {}

    def covered_cores(self, tile: Tile) -> list[Tile]:
        """The cores that ``tile``'s blend window reaches (itself and, with overlap, its neighbours)."""
        covered = self._covered.get(tile.index)
        if covered is None:
            window = blend_window(tile, self.grid, self.overlap)
            covered = [n for n in self.grid.neighbours(tile) if window.intersection(n.core_window) is not None]
            self._covered[tile.index] = covered
        return covered

    def _expected(self, core: Tile) -> int:
        """How many tiles reach ``core``: as many as the cores ``core``'s own blend window reaches (a blend
        window is its core grown by the overlap, so A's window meets B's core exactly when B's meets A's)."""
        return len(self.covered_cores(core))

    def add(self, tile: Tile, contribution: TileContribution | None) -> list[FinishedCore]:
        """Add ``tile``'s contribution (None for a tile with no valid pixel); return the cores it completes."""
        done = []
        for core in self.covered_cores(tile):
            if self._only is not None and core.index not in self._only:
                continue
            pending = self._pending.get(core.index)
            if pending is None:
                pending = self._pending[core.index] = _PendingCore(self._expected(core), [])
            if contribution is not None:
                pending.parts.extend(p for p in contribution.parts if p.window.intersection(core.core_window))
                if core.index == tile.index:
                    pending.own = contribution
            pending.remaining -= 1
            if pending.remaining == 0:
                del self._pending[core.index]
                done.append(self._finish(core, pending))
        return done

    def _finish(self, core: Tile, pending: _PendingCore) -> FinishedCore:
        window = core.core_window
        classes = np.full((window.height, window.width), CLASS_NODATA, dtype=np.uint8)
        nodata = np.nan if self.proba_dtype == "float32" else PROBA_UINT8_NODATA
        proba = np.full((self.num_classes, window.height, window.width), nodata, dtype=self.proba_dtype)
        own = pending.own
        interior = own.interior if own is not None else None
        if own is not None and interior is not None:
            assert own.classes is not None and own.proba is not None  # a contribution sets all three together
            rows, cols = interior.relative_to(window)
            classes[rows, cols] = own.classes
            proba[:, rows, cols] = own.proba
        for piece in ring_windows(window, interior):
            p, valid = stitch(piece, pending.parts, self.num_classes)
            rows, cols = piece.relative_to(window)
            classes[rows, cols] = classify(p, valid)
            proba[:, rows, cols] = encode_proba(p, valid, self.proba_dtype)
        return FinishedCore(core, classes, proba)

    @property
    def pending(self) -> int:
        """Cores with some contributions but not yet complete."""
        return len(self._pending)
