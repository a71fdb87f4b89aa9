"""Merging seams: polygons cut by tile borders are joined with their same-class neighbours.

Two polygons in neighbouring cores belong to one object exactly when some pixel of one is 4-adjacent, across
the shared border, to a pixel of the other with the same class: the whole-raster polygonizer (4-connectivity)
would have grouped those pixels together. The edge strips of :class:`pipeline.vectors.vectorize.CorePieces` say
which polygon owns each border pixel, so the pairs fall out of comparing two strips; a union-find joins
pairs into groups, and each group's pieces are unioned (their vertices are integer pixel corners, so the
union is exact and one object spanning ``k`` tiles, holes and all, becomes exactly one polygon). Pieces
that only meet at a corner are never paired, as in the whole-raster reference.

Memory: only polygons that touch an internal border are held, and only until their group can no longer
grow. Cores arrive in row-major order; when a row of cores is complete, every group with no piece on that
row's bottom border is finished and handed back, so what is held is about one row of cores' border pieces,
whatever the raster size.

Two halves, so that they can run in different processes: :class:`SeamGroups` decides which pieces form one
object from each core's :class:`BorderOutline` (classes, border bits and edge strips, no geometry: a few
bytes per edge pixel); :func:`merge_groups` unions the geometry of finished groups (the costly part, which
grows with the scene). ``workflows.vectorize`` runs the first in the client and the second in Dask tasks
beside the pieces; :class:`SeamMerger` runs both in one process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import shapely

from pipeline.vectors.vectorize import BOTTOM, CorePieces, Pieces
from tiles.grid import Tile, TileGrid

__all__ = ["SeamMerger", "SeamGroups", "BorderOutline", "Group", "outline", "split_border", "merge_group",
           "merge_groups"]

Group = list[tuple[int, int]]
"""The pieces of one object: (row-major tile index, index into that tile's border pieces), in merge order."""


def split_border(core: CorePieces) -> tuple[Pieces, CorePieces]:
    """The polygons that touch no internal tile border (complete as they are), and the core reduced to
    those that do, with its strips renumbered to match."""
    pieces = core.pieces
    border = pieces.touches > 0
    index = np.flatnonzero(border)
    renumber = np.full(len(pieces) + 1, -1, dtype=np.int64)
    renumber[index] = np.arange(len(index))
    # strips hold -1 where no polygon is; renumber[-1] is the extra trailing -1
    strips = {name: renumber[getattr(core, name)] for name in ("top", "bottom", "left", "right")}
    return pieces.take(np.flatnonzero(~border)), CorePieces(core.core, pieces.take(index), **strips)


def merge_group(parts: list[Pieces]) -> Pieces:
    """One polygon from pieces known to form one object: the union of their geometry and pooled stats."""
    group = Pieces.concat(parts)
    first = np.lexsort((group.key_col, group.key_row))[0]
    geometry = group.geometry[0] if len(group) == 1 else shapely.union_all(group.geometry)
    if not isinstance(geometry, shapely.Polygon):
        raise AssertionError(f"pieces of one object unioned into a {geometry.geom_type}")
    with np.errstate(invalid="ignore"):
        top = np.nan if np.all(np.isnan(group.proba_max)) else np.nanmax(group.proba_max)
    return Pieces(
        np.array([geometry], dtype=object), group.cls[:1], np.array([group.pixels.sum()]),
        np.array([group.proba_sum.sum()]), np.array([group.proba_count.sum()]), np.array([top]),
        group.key_row[first : first + 1], group.key_col[first : first + 1], np.zeros(1, dtype=np.uint8),
    )


def merge_groups(pieces: Mapping[int, Pieces], groups: Sequence[Group]) -> Pieces:
    """One polygon per group (:func:`merge_group`), from the border pieces of each tile (by tile index),
    ordered by first pixel then class: what :meth:`SeamMerger.add` returns for those groups."""
    if not groups:
        return Pieces.empty()
    finished = [merge_group([pieces[i].take(np.array([local])) for i, local in members]) for members in groups]
    out = Pieces.concat(finished)
    return out.take(np.lexsort((out.cls, out.key_col, out.key_row)))


@dataclass(frozen=True, slots=True)
class BorderOutline:
    """What grouping needs of one core's border pieces: their classes and border bits, and the edge strips
    (as in :class:`pipeline.vectors.vectorize.CorePieces`); no geometry."""

    cls: np.ndarray
    touches: np.ndarray
    key_row: np.ndarray
    key_col: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray

    def __len__(self) -> int:
        return len(self.cls)


def outline(core: CorePieces) -> BorderOutline:
    pieces = core.pieces
    return BorderOutline(pieces.cls, pieces.touches, pieces.key_row, pieces.key_col, core.top, core.bottom, core.left,
                         core.right)


class SeamGroups:
    """Which border pieces of a grid's cores form one object, fed one core's outline at a time in row-major
    order; :meth:`add` returns the groups that core completes (none until a row ends), in the order of the
    objects they make (first pixel, then class: the order :func:`merge_groups` returns them in), so that
    consecutive runs of them can be merged apart and their rows put end to end."""

    def __init__(self, grid: TileGrid) -> None:
        self.grid = grid
        self._next = 0  # row-major index of the tile expected next
        self._touches: dict[int, np.ndarray] = {}  # tile index -> border bits of its pieces
        self._keys: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # tile index -> key row, col, class
        self._alive: dict[int, np.ndarray] = {}  # tile index -> which of them are still held
        self._parent: dict[int, int] = {}  # union-find over piece ids (tile index << 32 | local index)
        self._bottom: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # col -> ids, classes of the row above
        self._right: tuple[np.ndarray, np.ndarray] | None = None  # ids, classes of the core to the left
        self.released: list[int] = []  # tiles whose pieces were all handed back by the last add()

    @property
    def held(self) -> int:
        """Border pieces currently held."""
        return int(sum(alive.sum() for alive in self._alive.values()))

    @property
    def holding(self) -> set[int]:
        """Tiles with pieces still held."""
        return set(self._alive)

    def add(self, tile: Tile, core: BorderOutline) -> list[Group]:
        index = tile.row * self.grid.cols + tile.col
        if index != self._next:
            raise ValueError(f"tile ({tile.row}, {tile.col}) arrived out of row-major order")
        self._next += 1
        self.released = []
        if len(core):
            self._touches[index] = core.touches
            self._keys[index] = (core.key_row, core.key_col, core.cls)
            self._alive[index] = np.ones(len(core), dtype=bool)
            for local in range(len(core)):
                self._parent[(index << 32) | local] = (index << 32) | local
        strip = {name: self._ids(index, core.cls, getattr(core, name)) for name in ("top", "bottom", "left", "right")}
        if tile.col > 0 and self._right is not None:
            self._pair(self._right, strip["left"])
        if tile.row > 0:
            self._pair(self._bottom.pop(tile.col), strip["top"])
        self._right = strip["right"]
        self._bottom[tile.col] = strip["bottom"]
        if tile.col == self.grid.cols - 1:
            return self._finish_row(tile.row)
        return []

    @staticmethod
    def _ids(index: int, cls: np.ndarray, strip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        has = strip >= 0
        ids = np.where(has, (index << 32) | np.maximum(strip, 0), -1)
        classes = np.where(has, cls[np.maximum(strip, 0)] if len(cls) else -1, -1)
        return ids, classes

    def _pair(self, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
        (ids_a, cls_a), (ids_b, cls_b) = a, b
        same = (ids_a >= 0) & (ids_b >= 0) & (cls_a == cls_b)
        if not same.any():
            return
        for x, y in np.unique(np.stack([ids_a[same], ids_b[same]], axis=1), axis=0):
            self._union(int(x), int(y))

    def _find(self, x: int) -> int:
        parent = self._parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def _union(self, x: int, y: int) -> None:
        rx, ry = self._find(x), self._find(y)
        if rx != ry:
            self._parent[max(rx, ry)] = min(rx, ry)

    def _finish_row(self, row: int) -> list[Group]:
        """Every group that cannot grow any more: none of its pieces is on this row's bottom border."""
        last_row = row == self.grid.rows - 1
        groups: dict[int, Group] = {}
        open_roots: set[int] = set()
        for index, touches in self._touches.items():
            on_bottom = (index // self.grid.cols == row) & ((touches & BOTTOM) > 0)
            for local in np.flatnonzero(self._alive[index]).tolist():
                root = self._find((index << 32) | local)
                groups.setdefault(root, []).append((index, local))
                if on_bottom[local] and not last_row:
                    open_roots.add(root)
        finished = [members for root, members in groups.items() if root not in open_roots]
        finished.sort(key=self._object_key)
        done: dict[int, list[int]] = {}
        for members in finished:
            for i, local in members:
                done.setdefault(i, []).append(local)
        for index, locals_ in done.items():
            self._alive[index][locals_] = False
            for local in locals_:
                del self._parent[(index << 32) | local]
            if not self._alive[index].any():
                del self._touches[index], self._alive[index], self._keys[index]
                self.released.append(index)
        return finished

    def _object_key(self, members: Group) -> tuple[int, int, int]:
        """The object's first pixel (row, column) and class, as :func:`merge_group` keys it."""
        keys = [(int(self._keys[i][0][local]), int(self._keys[i][1][local]), int(self._keys[i][2][local]))
                for i, local in members]
        return min(keys)


class SeamMerger:
    """Joins the border pieces of a grid's cores into whole objects, fed one core at a time in row-major
    order (the order of :class:`tiles.grid.TileGrid`): :class:`SeamGroups` and :func:`merge_groups` in one
    process.

    Example::

        merger = SeamMerger(grid)
        for tile in grid:
            interior, border = split_border(polygonize_core(...))
            finished = merger.add(tile, border)  # whole objects, once their last row is in
    """

    def __init__(self, grid: TileGrid) -> None:
        self.grid = grid
        self._groups = SeamGroups(grid)
        self._pieces: dict[int, Pieces] = {}  # tile index -> its border pieces

    @property
    def held(self) -> int:
        """Border pieces currently held (for tests and memory accounting)."""
        return self._groups.held

    def add(self, tile: Tile, core: CorePieces) -> Pieces:
        """Take one core's border pieces; returns the objects this core completes (empty until a row ends)."""
        index = tile.row * self.grid.cols + tile.col
        groups = self._groups.add(tile, outline(core))
        if len(core.pieces):
            self._pieces[index] = core.pieces
        merged = merge_groups(self._pieces, groups)
        for released in self._groups.released:
            del self._pieces[released]
        return merged
