"""Merging seams: polygons cut by tile borders are joined with their same-class neighbours.

Two polygons in neighbouring cores belong to one object exactly when some pixel of one is 4-adjacent, across
the shared border, to a pixel of the other with the same class: the whole-raster polygonizer (4-connectivity)
would have grouped those pixels together. The edge strips of :class:`pipeline.vectors.vectorize.CorePieces` say
which polygon owns each border pixel, so the pairs fall out of comparing two strips; a union-find joins
pairs into groups, and each group's pieces are unioned (their vertices are integer pixel corners, so the
union is exact and one object spanning ``k`` tiles, holes and all, becomes exactly one polygon). Pieces
that only meet at a corner are never paired, as in the whole-raster reference.

The union (:func:`union_pieces`) exploits that every edge is axis-parallel on the pixel grid and that two
pieces can share edges only on seams (tile borders), which are sides of their bounding boxes: each piece's rings
are cut at their vertices on those sides (and where another piece's box overlaps, in case two parts of the
object in one tile touch diagonally), the runs between cuts pass through as opaque chains, and only the seam
edges are split at the other pieces' vertices there and cancelled where met twice (a coverage union), then
everything left is linked into rings, in numpy (:func:`_chain_union`). This replaces the general overlay,
whose cost grew faster than the object (one background object spanning a 4096² scene: 10.8 s of 11.4 s of
unions), and its cost grows with the seams rather than the vertices. The result's vertices on straight runs
are dropped and its rings put in the polygonizer's order, so a merged object is the polygon GDAL makes on the
whole raster, whatever the tiling.

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
           "merge_groups", "union_pieces"]

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
    geometry = group.geometry[0] if len(group) == 1 else union_pieces(group.geometry)
    with np.errstate(invalid="ignore"):
        top = np.nan if np.all(np.isnan(group.proba_max)) else np.nanmax(group.proba_max)
    return Pieces(
        np.array([geometry], dtype=object), group.cls[:1], np.array([group.pixels.sum()]),
        np.array([group.proba_sum.sum()]), np.array([group.proba_count.sum()]), np.array([top]),
        group.key_row[first : first + 1], group.key_col[first : first + 1], np.zeros(1, dtype=np.uint8),
    )


# Below this many vertices in all, the overlay union costs less than the steps of the coverage union (both
# about 4 ms at 1,000-3,000 on a 4096² U-Net class map's groups; 0.2 ms against 1.2 ms at 100-300).
_OVERLAY_BELOW = 2000


def union_pieces(geometry: np.ndarray) -> shapely.Polygon:
    """The union of polygons known to form one object, each with integer, axis-parallel edges (pixel corners),
    none overlapping another: one polygon equal to ``shapely.union_all(geometry)``, holes and all.

    A hole whose bounding box meets no other piece's is a hole of the union as it is: it is set aside (most
    of a large object's vertices are in such holes). The rest is unioned by :func:`_chain_union`: the edges
    two pieces share are met twice and dropped, the rest linked into rings. The union and the holes set aside
    are then in the whole-raster polygonizer's form (:func:`_canonical_rings`): no vertex inside a straight
    run, the shell clockwise and each hole anticlockwise (as shapely reckons them: GDAL's orientation), each
    ring starting at its top-left vertex, holes in the order of those vertices. The pieces are the
    polygonizer's (no vertex inside a straight run but on a seam); their holes set aside are taken as they
    are when already in that form.
    Small groups (fewer than ``_OVERLAY_BELOW`` vertices) take shapely's overlay union instead, put in the
    same form.
    """
    if shapely.get_num_coordinates(geometry).sum() < _OVERLAY_BELOW:
        _, xy, (ring_offsets, _) = shapely.to_ragged_array([_one_polygon(shapely.union_all(geometry))])
        return _canonical(xy, ring_offsets)
    _, xy, (ring_offsets, polygon_offsets) = shapely.to_ragged_array(geometry)
    starts = ring_offsets[:-1]
    low = np.stack([np.minimum.reduceat(xy[:, k], starts) for k in (0, 1)], axis=1)
    high = np.stack([np.maximum.reduceat(xy[:, k], starts) for k in (0, 1)], axis=1)
    shell = polygon_offsets[:-1]
    piece = np.repeat(np.arange(len(geometry)), np.diff(polygon_offsets))
    hole = np.ones(len(starts), dtype=bool)
    hole[shell] = False
    aside = np.zeros(len(starts), dtype=bool)
    others: dict[int, np.ndarray] = {}  # ring -> the pieces whose boxes it meets (where it may touch them)
    for chunk in np.array_split(np.flatnonzero(hole), max(1, int(hole.sum()) // 4096)):
        meets = ((low[chunk, None, 0] <= high[None, shell, 0]) & (high[chunk, None, 0] >= low[None, shell, 0])
                 & (low[chunk, None, 1] <= high[None, shell, 1]) & (high[chunk, None, 1] >= low[None, shell, 1]))
        meets[np.arange(len(chunk)), piece[chunk]] = False  # its own piece
        aside[chunk] = ~meets.any(axis=1)
        for i in np.flatnonzero(~aside[chunk]).tolist():
            others[int(chunk[i])] = np.flatnonzero(meets[i])
    # pieces in one core (parts of one object joined through other tiles) may touch at a vertex inside their boxes
    overlap = np.all((low[shell, None] < high[None, shell]) & (high[shell, None] > low[None, shell]), axis=2)
    np.fill_diagonal(overlap, False)
    for k in np.flatnonzero(overlap.any(axis=1)).tolist():
        others[int(shell[k])] = np.flatnonzero(overlap[k])
    ccw = shapely.is_ccw(shapely.get_rings(geometry))
    shell_xy, union_xy, union_rings, through = _chain_union(geometry, xy, ring_offsets, polygon_offsets, aside,
                                                             others, ccw)
    aside[through] = True
    # the holes that meet nothing are the pieces' own, in the polygonizer's form already where each starts at its
    # top-left vertex and turns anticlockwise (shapely's is_ccw); any other is put in that form with the union's
    sizes = np.diff(ring_offsets)
    holes_xy, holes_rings = _take_rings(xy, ring_offsets, aside)
    firsts = holes_rings[:-1]
    top = low[aside, 1]
    left = np.minimum.reduceat(np.where(holes_xy[:, 1] == np.repeat(top, sizes[aside]), holes_xy[:, 0], np.inf),
                               firsts)
    in_form = ccw[aside] & (holes_xy[firsts, 1] == top) & (holes_xy[firsts, 0] == left)
    if not in_form.all():
        redo_xy, redo_rings = _take_rings(holes_xy, holes_rings, ~in_form)
        union_xy = np.concatenate([union_xy, redo_xy])
        union_rings = np.concatenate([union_rings, union_rings[-1] + redo_rings[1:]])
        holes_xy, holes_rings = _take_rings(holes_xy, holes_rings, in_form)
    if len(union_rings) > 1:
        union_xy, union_rings = (_canonical_rings(union_xy, union_rings, shell=False) if not in_form.all()
                                 else _from_top_left(union_xy, union_rings))
    # the holes in the order of their top-left (first) vertices, after the shell: copied ring by ring
    sources = [union_xy, holes_xy]
    ring_firsts = [union_rings[:-1], holes_rings[:-1]]
    sizes = np.concatenate([np.diff(union_rings), np.diff(holes_rings)])
    corner = np.concatenate([source[first] for source, first in zip(sources, ring_firsts, strict=True)])
    which = np.repeat([0, 1], [len(first) for first in ring_firsts])
    order = np.lexsort((corner[:, 0], corner[:, 1])).tolist()
    starts = np.concatenate(ring_firsts)[order].tolist()
    ends = (np.concatenate(ring_firsts) + sizes)[order].tolist()
    out = np.concatenate([shell_xy] + [sources[w][s:e] for w, s, e in zip(which[order].tolist(), starts, ends,
                                                                          strict=True)])
    offsets = np.concatenate([[0], len(shell_xy) + np.concatenate([[0], np.cumsum(sizes[order])])])
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, out, (offsets, np.array([0, len(offsets) - 1])))[0]


def _chain_union(geometry: np.ndarray, xy: np.ndarray, ring_offsets: np.ndarray, polygon_offsets: np.ndarray,
                 aside: np.ndarray, others: dict[int, np.ndarray],
                 ccw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """The union of the pieces' shells and the holes not ``aside``, with work that grows with the seams, not
    the vertices.

    Each piece lies inside its tile's core, so two pieces share edges only on the sides of their bounding boxes
    (the seams), and meet elsewhere only inside each other's boxes (parts of one object in one tile, joined
    through others, touching diagonally). Each ring, the inside on its right and started at a cut, is cut at
    its vertices on its box's sides (a shell's) or inside the box of a piece ``others`` names (the pieces whose
    boxes it meets): a segment between two cuts along a side of the box is a seam edge; every other run
    between two cuts is one opaque chain (its ends, the directions of its first and last segments, its range
    of vertices). The seam edges are split at the cuts inside them (:func:`_split_edges`) and those met twice
    (once each way) dropped; what is left is linked into rings: where two leave a vertex (pixels touching only
    diagonally there), the one turning left from the direction the last segment came in by, so that each ring
    bounds one part of the outside (what GEOS's overlay gives, and GDAL's polygonizer). Each ring is spelled
    out from the chains' vertex ranges.

    Returns the union's shell in the polygonizer's form (from its top-left vertex, no vertex inside a
    straight run), its other rings (closed, not yet in that form), and the rings that meet nothing.
    """
    bounds = shapely.bounds(geometry)
    piece = np.repeat(np.arange(len(geometry)), np.diff(polygon_offsets))
    shell = np.zeros(len(ring_offsets) - 1, dtype=bool)
    shell[polygon_offsets[:-1]] = True
    rings: list[np.ndarray] = []
    cuts: list[np.ndarray] = []
    along: list[np.ndarray] = []
    through: list[int] = []
    offset = 0
    for r in np.flatnonzero(~aside).tolist():
        ring = xy[ring_offsets[r] : ring_offsets[r + 1]]
        if ccw[r] == shell[r]:  # the inside on the right: shells clockwise, holes anticlockwise
            ring = ring[::-1]
        x0, y0, x1, y1 = bounds[piece[r]]
        boxes = bounds[others.get(r, np.empty(0, dtype=np.int64))]
        flags = _on_boxes(ring, x0, y0, x1, y1, shell[r], boxes)
        cut = flags[0] | flags[1] | flags[2]
        first = int(np.argmax(cut))
        if not cut[first]:
            through.append(r)  # meets nothing: a ring of the union as it is
            continue
        if first:  # start at a cut (a closed ring read from any vertex is closed too)
            ring = np.concatenate([ring[first:-1], ring[: first + 1]])
            flags = _on_boxes(ring, x0, y0, x1, y1, shell[r], boxes)
        on_x, on_y, inside = flags
        cut = np.flatnonzero(on_x | on_y | inside)
        a, b = cut[:-1], cut[1:]
        # one segment along a side of the box: a seam edge, which a neighbour may share
        along.append((b - a == 1) & ((on_x[a] & on_x[b] & (ring[a, 0] == ring[b, 0]))
                                     | (on_y[a] & on_y[b] & (ring[a, 1] == ring[b, 1]))))
        rings.append(ring)
        cuts.append(cut + offset)
        offset += len(ring)
    coords = np.concatenate(rings)
    head = np.concatenate([c[:-1] for c in cuts])
    tail = np.concatenate([c[1:] for c in cuts])
    seam = np.concatenate(along)
    # the seam edges split at every cut vertex inside them: each as a two-vertex ring, the other cuts as lone points
    lone = np.setdiff1d(np.concatenate(cuts), np.concatenate([head[seam], tail[seam]]))
    pairs = np.stack([head[seam], tail[seam]], axis=1).ravel()
    n_seam = int(seam.sum())
    split_xy, split_rings = _split_edges(coords[np.concatenate([pairs, lone])],
                                         np.concatenate([np.arange(0, 2 * n_seam + 1, 2), 2 * n_seam + 1
                                                         + np.arange(len(lone))]))
    split_rings = split_rings[: n_seam + 1]
    opens = np.ones(split_rings[-1], dtype=bool)
    opens[split_rings[1:] - 1] = False
    unit = np.flatnonzero(opens)  # each split seam edge: split_xy[unit] -> split_xy[unit + 1]
    chain = ~seam
    c_head, c_tail = head[chain], tail[chain]
    # one array of vertices to spell rings from: the chains' coordinates, then the split seam edges' first vertices
    source = np.concatenate([coords, split_xy[unit]])
    cell_s = np.rint(split_xy[: split_rings[-1]]).astype(np.int64)
    # only the chains' ends and their neighbours are read
    c_first, c_second, c_before, c_last = (np.rint(coords[i]).astype(np.int64)
                                           for i in (c_head, c_head + 1, c_tail - 1, c_tail))
    origin = np.minimum(np.minimum(c_first.min(axis=0), c_last.min(axis=0)), cell_s.min(axis=0))
    c_first, c_last, cell_s = c_first - origin, c_last - origin, cell_s - origin
    span = int(max(c_first[:, 0].max(), c_last[:, 0].max(), cell_s[:, 0].max())) + 1
    s_head, s_tail = cell_s[unit, 1] * span + cell_s[unit, 0], cell_s[unit + 1, 1] * span + cell_s[unit + 1, 0]
    undirected = np.minimum(s_head, s_tail) * 2 + (cell_s[unit, 0] == cell_s[unit + 1, 0])
    order = np.argsort(undirected, kind="stable")
    met = np.flatnonzero(undirected[order[1:]] == undirected[order[:-1]])
    one, two = order[met], order[met + 1]
    if len(met) and (np.any(np.diff(met) == 1) or np.any(s_head[one] != s_tail[two])):
        raise AssertionError("pieces of one object overlap: an edge is met twice the same way")
    kept = np.ones(len(unit), dtype=bool)
    kept[one] = kept[two] = False
    kept_units = np.flatnonzero(kept)
    # items: chains, then the seam edges left; their ends, the directions they leave and arrive by, their vertices
    item_head = np.concatenate([c_first[:, 1] * span + c_first[:, 0], s_head[kept]])
    item_tail = np.concatenate([c_last[:, 1] * span + c_last[:, 0], s_tail[kept]])
    unit_way = cell_s[unit[kept] + 1] - cell_s[unit[kept]]
    leave = np.concatenate([c_second - origin - c_first, unit_way])
    arrive = np.concatenate([c_last - (c_before - origin), unit_way])
    item_start = np.concatenate([c_head, len(coords) + kept_units])
    item_size = np.concatenate([c_tail - c_head, np.ones(len(kept_units), dtype=np.int64)])
    by_head = np.argsort(item_head, kind="stable")
    low = np.searchsorted(item_head[by_head], item_tail, side="left")
    count = np.searchsorted(item_head[by_head], item_tail, side="right") - low
    if np.any((count < 1) | (count > 2)):
        raise AssertionError("pieces of one object do not form a coverage: an edge of the union leads nowhere")
    succ = by_head[low]
    twice = np.flatnonzero(count == 2)
    if len(twice):
        inward, out = arrive[twice], leave[succ[twice]]
        right = inward[:, 0] * out[:, 1] - inward[:, 1] * out[:, 0] < 0
        succ[twice[right]] = by_head[low[twice[right]] + 1]
    nxt = succ.tolist()
    seen = bytearray(len(nxt))
    walk: list[int] = []
    ends: list[int] = []
    for i in range(len(nxt)):
        while not seen[i]:
            seen[i] = 1
            walk.append(i)
            i = nxt[i]
        if not ends or ends[-1] != len(walk):
            ends.append(len(walk))
    items = np.array(walk, dtype=np.int64)
    ring_items = np.diff(np.concatenate([[0], ends]))
    item_first = np.concatenate([[0], np.cumsum(ring_items)[:-1]])
    # a vertex where two items join in a straight line is inside a straight run: the second item starts after it
    before = np.empty_like(items)
    before[1:] = items[:-1]
    before[item_first] = items[item_first + ring_items - 1]
    inward, out = arrive[before], leave[items]
    straight = ((inward[:, 0] * out[:, 1] == inward[:, 1] * out[:, 0]) & ((inward * out).sum(axis=1) > 0))
    starts = item_start[items] + straight
    sizes = item_size[items] - straight
    # the shell: the ring through the least (y, x) vertex of all, started there (the polygonizer's start)
    at = int(np.flatnonzero(items == np.argmin(item_head))[0])
    shell_ring = int(np.searchsorted(item_first, at, side="right")) - 1
    shell_first, shell_count = int(item_first[shell_ring]), int(ring_items[shell_ring])
    picked = shell_first + (np.arange(shell_count) + at - shell_first) % shell_count
    shell_xy = source[_spell(starts[picked], sizes[picked])]
    shell_xy = np.concatenate([shell_xy, shell_xy[:1]])
    # the union's other rings (holes where pieces meet), closed, not yet in the polygonizer's form
    holes = np.ones(len(items), dtype=bool)
    holes[shell_first : shell_first + shell_count] = False
    hole_ring_sizes = np.delete(np.add.reduceat(sizes, item_first), shell_ring)
    if not len(hole_ring_sizes):
        return shell_xy, np.empty((0, 2)), np.zeros(1, dtype=np.int64), through
    index = _spell(starts[holes], sizes[holes])
    ring_first = np.concatenate([[0], np.cumsum(hole_ring_sizes)[:-1]])
    index = np.insert(index, ring_first + hole_ring_sizes, index[ring_first])
    return shell_xy, source[index], np.concatenate([[0], np.cumsum(hole_ring_sizes + 1)]), through


def _spell(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The indices of consecutive ranges (``sizes[i]`` from ``starts[i]``), end to end."""
    return np.repeat(starts - np.cumsum(sizes) + sizes, sizes) + np.arange(int(sizes.sum()))


def _on_boxes(ring: np.ndarray, x0: float, y0: float, x1: float, y1: float, shell: bool,
              boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which vertices of a ring lie on a vertical side of its piece's box, on a horizontal side (a shell's
    only), and inside or on any of ``boxes`` (other pieces' boxes that its own overlaps)."""
    x, y = ring[:, 0], ring[:, 1]
    if shell:
        on_x, on_y = (x == x0) | (x == x1), (y == y0) | (y == y1)
    else:
        on_x = on_y = np.zeros(len(ring), dtype=bool)
    inside = np.zeros(len(ring), dtype=bool)
    for bx0, by0, bx1, by1 in boxes.tolist():
        inside |= (x >= bx0) & (x <= bx1) & (y >= by0) & (y <= by1)
    return on_x, on_y, inside


def _one_polygon(union: shapely.Geometry) -> shapely.Polygon:
    if not isinstance(union, shapely.Polygon):
        raise AssertionError(f"pieces of one object unioned into a {union.geom_type}")
    return union


def _take_rings(xy: np.ndarray, ring_offsets: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rings picked by the boolean ``which``: their coordinates and offsets."""
    sizes = np.diff(ring_offsets)
    return xy[np.repeat(which, sizes)], np.concatenate([[0], np.cumsum(sizes[which])])


def _split_edges(xy: np.ndarray, ring_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed rings (``xy`` cut at ``ring_offsets``, axis-parallel edges) with each edge split at every
    vertex of any ring lying strictly inside it, inserted in the edge's direction."""
    n = len(xy)
    origin = np.rint(xy).astype(np.int64).min(axis=0)
    cell = np.rint(xy).astype(np.int64) - origin
    last = np.zeros(n, dtype=bool)
    last[ring_offsets[1:] - 1] = True  # a ring's closing vertex starts no edge
    start = np.flatnonzero(~last)
    a, b = cell[start], cell[start + 1]
    vertical = a[:, 0] == b[:, 0]
    counts = np.zeros(len(start), dtype=np.int64)
    lo = np.zeros(len(start), dtype=np.int64)
    found: list[np.ndarray] = []
    base = 0
    long = np.abs(b - a).sum(axis=1) > 1  # nothing lies strictly inside a unit edge (3 in 4 of them)
    for along, across, edges in ((1, 0, vertical & long), (0, 1, ~vertical & long)):
        # vertices keyed by (line, position along it): those inside an edge are one contiguous sorted run
        span = int(cell[:, along].max()) + 1
        keys = np.sort(cell[:, across] * span + cell[:, along])
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
        line = a[edges, across] * span
        first = np.searchsorted(keys, line + np.minimum(a[edges, along], b[edges, along]), side="right")
        stop = np.searchsorted(keys, line + np.maximum(a[edges, along], b[edges, along]), side="left")
        lo[edges] = first + base
        counts[edges] = stop - first
        point = np.empty((len(keys), 2), dtype=np.int64)
        point[:, across], point[:, along] = np.divmod(keys, span)
        found.append(point)
        base += len(keys)
    total = int(counts.sum())
    if total == 0:
        return xy, ring_offsets
    points = np.concatenate(found)
    # the inserted points, edge by edge, each edge's in its own direction
    edge = np.repeat(np.arange(len(start)), counts)
    step = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    forward = np.where(vertical, b[:, 1] > a[:, 1], b[:, 0] > a[:, 0])[edge]
    inserted = points[np.where(forward, lo[edge] + step, lo[edge] + counts[edge] - 1 - step)]
    # every original vertex moves down by the points inserted before it
    before = np.zeros(n, dtype=np.int64)
    before[start + 1] = counts
    shift = np.cumsum(before)
    moved = np.arange(n) + shift
    out = np.empty((n + total, 2))
    out[moved] = xy
    taken = np.ones(n + total, dtype=bool)
    taken[moved] = False
    out[taken] = inserted + origin
    return out, ring_offsets + np.concatenate([[0], shift[ring_offsets[1:] - 1]])


def _canonical(xy: np.ndarray, ring_offsets: np.ndarray) -> shapely.Polygon:
    """One polygon from closed rings (``xy`` cut at ``ring_offsets``, the shell first) in the form of
    :func:`_canonical_rings`."""
    out, offsets = _canonical_rings(xy, ring_offsets)
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, out, (offsets, np.array([0, len(offsets) - 1])))[0]


def _canonical_rings(xy: np.ndarray, ring_offsets: np.ndarray, shell: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One polygon from closed rings (``xy`` cut at ``ring_offsets``, the shell first; axis-parallel edges, no
    spikes), without vertices inside straight runs, its shell clockwise and holes anticlockwise (shapely's
    ``is_ccw``), each ring from its top-left vertex (least y, then x in pixel coordinates), holes in the
    order of those: the form GDAL's polygonizer writes. With ``shell`` False, every ring is a hole."""
    rings = len(ring_offsets) - 1
    size = np.diff(ring_offsets) - 1  # the closing vertex repeats the first
    open_ = np.ones(len(xy), dtype=bool)
    open_[ring_offsets[1:] - 1] = False
    xy = xy[open_]
    ring = np.repeat(np.arange(rings), size)
    first = ring_offsets[:-1] - np.arange(rings)
    prev, after = _neighbours(xy, first, size)
    inside_run = (((prev[:, 0] == xy[:, 0]) & (after[:, 0] == xy[:, 0])) |
                  ((prev[:, 1] == xy[:, 1]) & (after[:, 1] == xy[:, 1]))) & \
        (((prev - xy) * (after - xy)).sum(axis=1) < 0)
    if inside_run.any():
        xy, ring = xy[~inside_run], ring[~inside_run]
        size = np.bincount(ring, minlength=rings)
        first = np.concatenate([[0], np.cumsum(size)[:-1]])
    # twice each ring's signed area (shoelace): GDAL's shells are negative (shapely's is_ccw False), holes positive
    after = _neighbours(xy, first, size)[1]
    area = np.bincount(ring, weights=xy[:, 0] * after[:, 1] - after[:, 0] * xy[:, 1], minlength=rings)
    flip = (area > 0) != np.r_[not shell, np.ones(rings - 1, dtype=bool)]
    # each ring's least (y, x) vertex, in two passes (cheaper than a sort); only two of its edges can end there
    top = np.minimum.reduceat(xy[:, 1], first)
    left = np.minimum.reduceat(np.where(xy[:, 1] == top[ring], xy[:, 0], np.inf), first)
    is_top_left = (xy[:, 1] == top[ring]) & (xy[:, 0] == left[ring])
    top_left = np.empty(rings, dtype=np.int64)
    top_left[ring[is_top_left]] = np.flatnonzero(is_top_left)
    ring_order = (np.r_[0, 1 + np.lexsort((xy[top_left[1:], 0], xy[top_left[1:], 1]))] if shell
                  else np.lexsort((xy[top_left, 0], xy[top_left, 1])))
    # each ring rotated to start at its top-left vertex, walked backwards where its orientation is flipped
    # (only rings not already in that form are moved vertex by vertex)
    new_first = np.empty(rings, dtype=np.int64)
    new_first[ring_order] = np.concatenate([[0], np.cumsum(size[ring_order] + 1)[:-1]])
    out = np.empty((len(xy) + rings, 2))
    target = np.repeat(new_first - first, size) + np.arange(len(xy))  # each ring copied as it is
    moved = (top_left != first) | flip
    if moved.any():
        which = moved[ring]
        local = np.arange(len(xy))[which] - first[ring[which]]
        k, n = (top_left - first)[ring[which]], size[ring[which]]
        shift = local - k
        shift[shift < 0] += n[shift < 0]
        backwards = flip[ring[which]] & (shift > 0)
        shift[backwards] = n[backwards] - shift[backwards]
        target[which] = new_first[ring[which]] + shift
    out[target] = xy
    out[new_first + size] = out[new_first]  # close each ring
    return out, np.concatenate([new_first[ring_order], [len(out)]])


def _from_top_left(xy: np.ndarray, ring_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed rings already turning the polygonizer's way, with no vertex inside a straight run, each started
    at its top-left vertex (least y, then x) instead: what :func:`_canonical_rings` makes of them (holes)."""
    rings = len(ring_offsets) - 1
    size = np.diff(ring_offsets) - 1  # the closing vertex repeats the first
    first = ring_offsets[:-1]
    top = np.minimum.reduceat(xy[:, 1], first)
    is_top = xy[:, 1] == np.repeat(top, size + 1)
    left = np.minimum.reduceat(np.where(is_top, xy[:, 0], np.inf), first)
    is_top_left = is_top & (xy[:, 0] == np.repeat(left, size + 1))
    is_top_left[ring_offsets[1:] - 1] = False
    top_left = np.flatnonzero(is_top_left)
    if len(top_left) != rings:
        raise AssertionError("a ring passes its top-left vertex twice")
    step = np.arange(int(size.sum())) - np.repeat(first - np.arange(rings), size)  # place in the ring
    n = np.repeat(size, size)
    index = np.repeat(first, size) + (step + np.repeat(top_left - first, size)) % n
    index = np.insert(index, np.cumsum(size), index[np.concatenate([[0], np.cumsum(size)[:-1]])])
    return xy[index], np.concatenate([[0], np.cumsum(size + 1)])


def _neighbours(xy: np.ndarray, first: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each vertex's previous and next vertex along its ring (open rings, ``xy`` cut at ``first``)."""
    last = first + size - 1
    prev = np.empty_like(xy)
    prev[1:] = xy[:-1]
    prev[first] = xy[last]
    after = np.empty_like(xy)
    after[:-1] = xy[1:]
    after[last] = xy[first]
    return prev, after


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
        # along a seam one pair repeats for a run of pixels: each run once (a pair seen again later is a
        # union already made; unions keep the least id as the root, in any order); this runs in the Dask
        # client, where np.unique over rows cost 1 ms a seam
        x, y = ids_a[same], ids_b[same]
        new = np.ones(len(x), dtype=bool)
        new[1:] = (x[1:] != x[:-1]) | (y[1:] != y[:-1])
        for a_id, b_id in zip(x[new].tolist(), y[new].tolist(), strict=True):
            self._union(a_id, b_id)

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
