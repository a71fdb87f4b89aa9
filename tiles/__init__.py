"""Tiling: grids, windows, halos and blending weights. Pure geometry and numpy; no file I/O, no models."""

from tiles.blend import BLEND_METHODS, BlendMethod, blend_weights, blend_window
from tiles.grid import PixelWindow, Tile, TileGrid, aligned_tile_size, plan_tiles

__all__ = [
    "BLEND_METHODS",
    "BlendMethod",
    "PixelWindow",
    "Tile",
    "TileGrid",
    "aligned_tile_size",
    "blend_weights",
    "blend_window",
    "plan_tiles",
]
