"""Tile grids: how a scene is cut into overlapping tiles.

A scene of ``height x width`` pixels is partitioned into *cores*: a regular grid of ``tile_size`` squares
(the last row and column are smaller when the scene is not a multiple of the tile size). Every pixel of the
scene lies in exactly one core. Each tile is read with a *halo* of ``halo`` pixels around its core, clipped
to the scene, so a model sees context past the core; the model input is therefore at most
``tile_size + 2 * halo`` pixels on a side.

Number of tiles: ``ceil(height / tile_size) * ceil(width / tile_size)``.

Nothing here opens a file: windows are plain values, converted to rasterio windows at the I/O edge.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["PixelWindow", "Tile", "TileGrid", "plan_tiles", "aligned_tile_size"]


@dataclass(frozen=True, slots=True)
class PixelWindow:
    """A rectangle of pixels: ``row_off``/``col_off`` of its top-left pixel, ``height``/``width`` in pixels."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def row_end(self) -> int:
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        return self.col_off + self.width

    @property
    def size(self) -> int:
        return self.height * self.width

    def intersection(self, other: PixelWindow) -> PixelWindow | None:
        """The overlap of two windows, or None when they do not overlap."""
        r0, c0 = max(self.row_off, other.row_off), max(self.col_off, other.col_off)
        r1, c1 = min(self.row_end, other.row_end), min(self.col_end, other.col_end)
        if r1 <= r0 or c1 <= c0:
            return None
        return PixelWindow(r0, c0, r1 - r0, c1 - c0)

    def relative_to(self, outer: PixelWindow) -> tuple[slice, slice]:
        """Row and column slices that cut this window out of an array covering ``outer``."""
        r, c = self.row_off - outer.row_off, self.col_off - outer.col_off
        if r < 0 or c < 0 or r + self.height > outer.height or c + self.width > outer.width:
            raise ValueError(f"{self} does not lie inside {outer}")
        return slice(r, r + self.height), slice(c, c + self.width)

    def expand(self, pixels: int, bounds: PixelWindow) -> PixelWindow:
        """This window grown by ``pixels`` on every side, clipped to ``bounds``."""
        grown = PixelWindow(
            self.row_off - pixels, self.col_off - pixels, self.height + 2 * pixels, self.width + 2 * pixels
        )
        clipped = grown.intersection(bounds)
        assert clipped is not None
        return clipped


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile of a grid: its position in the grid, the pixels it owns and the pixels it reads.

    ``core_window`` is the part of the scene this tile is responsible for (cores never overlap and cover the
    scene). ``read_window`` is the core grown by the halo and clipped to the scene: what the model sees.
    """

    row: int
    col: int
    core_window: PixelWindow
    read_window: PixelWindow

    @property
    def index(self) -> tuple[int, int]:
        return (self.row, self.col)


@dataclass(frozen=True, slots=True)
class TileGrid:
    """A scene's tile grid: ``rows x cols`` tiles of ``tile_size`` core pixels with a ``halo``."""

    height: int
    width: int
    tile_size: int
    halo: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"scene size must be positive, got {self.height} x {self.width}")
        if self.tile_size <= 0:
            raise ValueError(f"tile size must be positive, got {self.tile_size}")
        if self.halo < 0:
            raise ValueError(f"halo must be zero or more, got {self.halo}")

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.tile_size)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.tile_size)

    @property
    def bounds(self) -> PixelWindow:
        return PixelWindow(0, 0, self.height, self.width)

    def __len__(self) -> int:
        return self.rows * self.cols

    def tile(self, row: int, col: int) -> Tile:
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise IndexError(f"tile ({row}, {col}) is outside a {self.rows} x {self.cols} grid")
        r0, c0 = row * self.tile_size, col * self.tile_size
        core = PixelWindow(r0, c0, min(self.tile_size, self.height - r0), min(self.tile_size, self.width - c0))
        return Tile(row, col, core, core.expand(self.halo, self.bounds))

    def __iter__(self) -> Iterator[Tile]:
        """Tiles in row-major order (the order in which they are read and written)."""
        for row in range(self.rows):
            for col in range(self.cols):
                yield self.tile(row, col)

    def neighbours(self, tile: Tile, reach: int = 1) -> Iterator[Tile]:
        """The tile itself and the tiles within ``reach`` grid steps of it (at most 9 for reach 1)."""
        for row in range(max(0, tile.row - reach), min(self.rows, tile.row + reach + 1)):
            for col in range(max(0, tile.col - reach), min(self.cols, tile.col + reach + 1)):
                yield self.tile(row, col)

    def tiles_touching(self, window: PixelWindow) -> Iterator[Tile]:
        """Tiles whose cores intersect ``window``."""
        r0, r1 = window.row_off // self.tile_size, (window.row_end - 1) // self.tile_size
        c0, c1 = window.col_off // self.tile_size, (window.col_end - 1) // self.tile_size
        for row in range(max(0, r0), min(self.rows - 1, r1) + 1):
            for col in range(max(0, c0), min(self.cols - 1, c1) + 1):
                yield self.tile(row, col)


def aligned_tile_size(tile_size: int, block_height: int, block_width: int) -> int:
    """The tile size nearest to ``tile_size`` that is a whole number of the file's internal blocks.

    Reading a core that starts and ends on block boundaries decodes each block once per tile instead of
    twice. Strip-organised files (one block spans the full width) align on the block height only. Blocks
    larger than the tile, or block sizes that do not divide each other, leave the tile size as asked.
    """
    steps = [b for b in (block_height, block_width) if 1 < b <= tile_size]
    if not steps:
        return tile_size
    step = math.lcm(*steps)
    if step > tile_size:
        return tile_size
    return max(step, round(tile_size / step) * step)


def plan_tiles(height: int, width: int, tile_size: int, halo: int) -> TileGrid:
    """Plan the grid of tiles for a ``height x width`` scene."""
    return TileGrid(height=height, width=width, tile_size=tile_size, halo=halo)
