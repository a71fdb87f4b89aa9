"""Blending weights: how overlapping tile predictions are averaged into one seamless raster.

Each tile contributes its prediction over its *blend window*: its core grown by ``overlap`` pixels
(``overlap <= halo``, so the contribution never reaches the outer ``halo - overlap`` pixels of the read
window, where a convolutional model sees zero padding instead of the scene). Across each core border the
weight ramps from 0 at ``overlap`` pixels outside the core to 1 at ``overlap`` pixels inside it:

    w(d) = 1/2 + 1/2 * sin(pi/2 * d / overlap)     for |d| < overlap, d = signed distance into the core

measured from the border line to the pixel centre. Since ``w(d) + w(-d) = 1`` the two tiles on either side
of a border sum to one, and with one ramp per axis (``w_row * w_col``) the four tiles meeting at a corner
do too: a partition of unity. The stitcher still divides by the summed weight, so a missing neighbour (a
skipped all-nodata tile) or a core thinner than ``2 * overlap`` stays exact. Inside its own core a tile's
weight is always above zero (at least 1/4), so every valid pixel is covered.

``overlap = 0`` (or method ``"none"``) is hard cropping: each pixel comes from the one tile whose core holds it.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

from tiles.grid import PixelWindow, Tile, TileGrid

__all__ = ["BlendMethod", "BLEND_METHODS", "blend_window", "blend_weights", "ramp"]

BlendMethod = Literal["cosine", "linear", "none"]
BLEND_METHODS: tuple[str, ...] = ("cosine", "linear", "none")


def ramp(distance: np.ndarray, overlap: int, method: BlendMethod) -> np.ndarray:
    """Weight for pixels at signed ``distance`` (pixels, positive inside the core) from a shared border."""
    if method == "none" or overlap == 0:
        return (distance > 0).astype(np.float32)
    t = np.clip(distance / overlap, -1.0, 1.0)
    if method == "cosine":
        return (0.5 + 0.5 * np.sin(0.5 * np.pi * t)).astype(np.float32)
    if method == "linear":
        return (0.5 + 0.5 * t).astype(np.float32)
    raise ValueError(f"unknown blend method {method!r}; choose one of {', '.join(BLEND_METHODS)}")


def blend_window(tile: Tile, grid: TileGrid, overlap: int) -> PixelWindow:
    """The pixels a tile contributes to: its core grown by ``overlap``, clipped to the scene."""
    if overlap > grid.halo:
        raise ValueError(f"blend overlap {overlap} px is larger than the halo {grid.halo} px")
    return tile.core_window.expand(overlap, grid.bounds)


def _axis_weights(length: int, core_start: int, core_stop: int, lo_open: bool, hi_open: bool,
                  overlap: int, method: BlendMethod) -> np.ndarray:
    """Weights along one axis of a window ``length`` pixels long whose core spans ``core_start`` to
    ``core_stop``, both relative to the window's first pixel (integer offsets: the same float64 distances
    as in scene coordinates)."""
    centres = np.arange(length, dtype=np.float64) + 0.5
    w = np.ones(length, dtype=np.float32)
    if lo_open:
        w *= ramp(centres - core_start, overlap, method)
    if hi_open:
        w *= ramp(core_stop - centres, overlap, method)
    return w


@functools.lru_cache(maxsize=32)
def _weights(rows: tuple[int, int, int, bool, bool], cols: tuple[int, int, int, bool, bool], overlap: int,
             method: BlendMethod) -> np.ndarray:
    out = np.outer(_axis_weights(*rows, overlap, method), _axis_weights(*cols, overlap, method))
    out.flags.writeable = False  # shared by every tile of the same shape and borders
    return out


def blend_weights(tile: Tile, grid: TileGrid, overlap: int, method: BlendMethod = "cosine") -> np.ndarray:
    """The weight of ``tile``'s prediction over its :func:`blend_window`, float32 of that window's shape,
    read-only: the tiles of a grid have a handful of shapes and borders (inside, along each edge, at each
    corner), and each gets one array, made once per process.

    Borders on the scene edge get no ramp (nothing lies beyond them).
    """
    if method == "none":
        overlap = 0
    window = blend_window(tile, grid, overlap)
    core = tile.core_window
    rows = (window.height, core.row_off - window.row_off, core.row_end - window.row_off, core.row_off > 0,
            core.row_end < grid.height)
    cols = (window.width, core.col_off - window.col_off, core.col_end - window.col_off, core.col_off > 0,
            core.col_end < grid.width)
    return _weights(rows, cols, overlap, method)
