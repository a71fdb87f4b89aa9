"""Vectorizing one core of a class raster: pixel groups become polygons, with their pixel statistics.

GDAL's polygonizer (:func:`rasterio.features.shapes`, 4-connectivity) turns every 4-connected group of
equal, kept pixels in the core into one polygon. Geometries stay in *scene pixel coordinates* (x = column,
y = row of the whole raster, vertices on pixel corners, so every coordinate is an integer): unions of
pieces from neighbouring cores are then exact, and the map transform is applied once, after merging.

Per polygon, the pixel count is its area in pixel units, its first pixel (for stable ids) its top-left
exterior vertex, and, along the four core edges, the pixels it covers are its boundary runs on those
edges. Those edge *strips* are what :mod:`pipeline.vectors.merge` pairs across tile borders; polygons that touch no
internal tile border are complete and never need merging. When probabilities are given, the groups are
numbered first (:func:`label_groups`, scipy's labelling with the same 4-connectivity) and the label raster
is what GDAL polygonizes, so the sum and maximum of the probability of each polygon's class come from the
labels in one pass.
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.errors import NodataShadowWarning, RasterioIOError
from rasterio.windows import Window
from scipy import ndimage

from pipeline.errors import SceneReadError, ScenewatchError
from pipeline.inference.read import open_raster
from tiles.grid import PixelWindow

__all__ = [
    "Pieces",
    "CorePieces",
    "PolygonLimitError",
    "polygonize_core",
    "sieve_classes",
    "keep_mask",
    "label_groups",
    "read_class_window",
    "StoredProba",
    "read_stored_proba",
    "decode_proba",
    "read_proba_window",
    "own_class_proba",
    "OwnProba",
    "own_class_stored",
    "TOP",
    "BOTTOM",
    "LEFT",
    "RIGHT",
]

# Bits of Pieces.touches: which internal tile borders (not raster edges) a polygon reaches.
TOP, BOTTOM, LEFT, RIGHT = 1, 2, 4, 8

# Dtypes GDAL's polygonizer takes as they are; other integer rasters are widened or narrowed to int32.
_SHAPES_DTYPES = ("uint8", "uint16", "int16", "int32")


class PolygonLimitError(ScenewatchError, ValueError):
    """A class raster would yield more polygons than the configured limit."""


@dataclass(frozen=True, slots=True)
class Pieces:
    """Polygons as parallel arrays (one row per polygon), geometries in scene pixel coordinates.

    ``key_row``/``key_col`` is the polygon's first pixel in raster order (top row, then leftmost): unique
    per class, independent of tiling, hence the basis of stable feature ids. ``proba_sum``/``proba_count``
    /``proba_max`` are over the polygon's pixels that have a probability (NaN max when none has).
    """

    geometry: np.ndarray  # shapely Polygons, pixel coordinates
    cls: np.ndarray  # int64 class value
    pixels: np.ndarray  # int64
    proba_sum: np.ndarray  # float64
    proba_count: np.ndarray  # int64
    proba_max: np.ndarray  # float64
    key_row: np.ndarray  # int64
    key_col: np.ndarray  # int64
    touches: np.ndarray  # uint8 bits TOP | BOTTOM | LEFT | RIGHT

    def __len__(self) -> int:
        return len(self.geometry)

    def take(self, index: np.ndarray) -> Pieces:
        return Pieces(*(getattr(self, f)[index] for f in self.__slots__))

    @staticmethod
    def empty() -> Pieces:
        return Pieces(np.empty(0, dtype=object), *(np.empty(0, dtype=d) for d in
                      ("int64", "int64", "float64", "int64", "float64", "int64", "int64", "uint8")))

    @staticmethod
    def concat(parts: Sequence[Pieces]) -> Pieces:
        if not parts:
            return Pieces.empty()
        return Pieces(*(np.concatenate([getattr(p, f) for p in parts]) for f in Pieces.__slots__))


@dataclass(frozen=True, slots=True)
class CorePieces:
    """The polygons of one core and its edge strips.

    ``top``/``bottom``/``left``/``right`` hold, for each pixel along that core edge, the index (into
    ``pieces``) of the polygon it belongs to, or -1 where no polygon is (nodata, a class not kept).
    """

    core: PixelWindow
    pieces: Pieces
    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray


@dataclass(frozen=True, slots=True)
class OwnProba:
    """The probability of each pixel's own class, ``(rows, cols)``, as :func:`polygonize_core` takes it.

    With ``levels``, ``values`` are the stored unsigned integers and ``levels[v]`` is the probability stored
    as ``v`` (float64 of the float32 :func:`decode_proba` makes); without, ``values`` are the probabilities.
    ``known``: where a pixel has one (its class has a band, which is not nodata there; finite).
    """

    values: np.ndarray
    known: np.ndarray
    levels: np.ndarray | None = None

    @staticmethod
    def of(proba: np.ndarray) -> OwnProba:
        """From probabilities, NaN where unknown."""
        return OwnProba(proba, np.isfinite(proba))

    def decoded(self) -> np.ndarray:
        """The probabilities as float64 (where ``known``; anything elsewhere)."""
        return self.values.astype(np.float64) if self.levels is None else np.take(self.levels, self.values)


def keep_mask(classes: np.ndarray, valid: np.ndarray, keep: Sequence[int] | None) -> np.ndarray:
    """Pixels to polygonize: valid, and of a kept class (all classes when ``keep`` is None)."""
    if keep is None:
        return valid
    if classes.dtype.kind == "u" and classes.dtype.itemsize <= 2:  # a lookup table beats np.isin
        table = np.zeros(np.iinfo(classes.dtype).max + 1, dtype=bool)
        wanted = np.asarray(keep, dtype=np.int64)
        table[wanted[(wanted >= 0) & (wanted < len(table))]] = True
        return valid & table[classes]
    return valid & np.isin(classes, np.asarray(keep, dtype=np.int64))


def sieve_classes(classes: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    """Groups of fewer than ``size`` 4-connected pixels take the class of their largest neighbour (GDAL's
    sieve filter); nodata pixels are neither removed nor grown into."""
    if size <= 1:
        return classes
    work = classes if classes.dtype.name in _SHAPES_DTYPES else classes.astype(np.int32)
    return rasterio.features.sieve(work, size, mask=valid, connectivity=4).astype(classes.dtype, copy=False)


def polygonize_core(classes: np.ndarray, keep: np.ndarray, core: PixelWindow, scene: PixelWindow, *,
                    proba: np.ndarray | OwnProba | None = None, max_polygons: int | None = None) -> CorePieces:
    """Polygonize the ``(rows, cols)`` ``classes`` of ``core`` where ``keep`` is true.

    ``proba`` is the probability of each pixel's own class: ``(rows, cols)`` float, NaN where unknown, or
    as stored (:func:`own_class_stored`; the same statistics, from the stored levels).
    ``scene`` is the whole raster's window: edges of the core that are raster edges are not tile borders.
    Raises :class:`PolygonLimitError` as soon as the core yields more than ``max_polygons`` polygons.

    Without probabilities, GDAL polygonizes the classes directly and everything else comes from the
    geometry (pixel counts are areas, edge owners are the boundary runs on the core's edges). With them,
    the groups are numbered first (:func:`label_groups`) so that each pixel's polygon is known for the
    statistics; both give the same polygons.
    """
    if proba is None:
        geometry, cls = _polygonize_classes(classes, keep, core, max_polygons)
        n = len(cls)
        strips = _edge_owners(geometry, core)
        proba_sum, proba_count, proba_max = np.zeros(n), np.zeros(n, dtype=np.int64), np.full(n, np.nan)
    else:
        labels, cls = label_groups(classes, keep)
        n = len(cls)
        _check_limit(n, max_polygons, core)
        geometry = _polygonize_labels(labels, core, n, every_pixel=bool(keep.all()))
        own = proba if isinstance(proba, OwnProba) else OwnProba.of(proba)
        proba_sum, proba_count, proba_max = _group_stats(labels, n, own)
        strips = {"top": labels[0, :] - 1, "bottom": labels[-1, :] - 1, "left": labels[:, 0] - 1,
                  "right": labels[:, -1] - 1}
    # vertices are integer pixel corners: the area in pixel units is the exact pixel count
    pixels = np.rint(shapely.area(geometry)).astype(np.int64) if n else np.empty(0, dtype=np.int64)
    key_row, key_col = _first_pixels(geometry)
    touches = np.zeros(n, dtype=np.uint8)
    internal = {
        "top": (TOP, core.row_off > scene.row_off), "bottom": (BOTTOM, core.row_end < scene.row_end),
        "left": (LEFT, core.col_off > scene.col_off), "right": (RIGHT, core.col_end < scene.col_end),
    }
    for name, (bit, is_internal) in internal.items():
        if is_internal:
            hit = np.unique(strips[name])
            touches[hit[hit >= 0]] |= bit
    pieces = Pieces(geometry, cls, pixels, proba_sum, proba_count, proba_max, key_row, key_col, touches)
    return CorePieces(core, pieces, **{k: v.astype(np.int64) for k, v in strips.items()})


def _check_limit(n: int, max_polygons: int | None, core: PixelWindow) -> None:
    if max_polygons is not None and n > max_polygons:
        raise PolygonLimitError(
            f"tile at rows {core.row_off}-{core.row_end}, columns {core.col_off}-{core.col_end}: more than "
            f"{max_polygons:,} polygons; remove speckle first with `sieve` (pixels) or raise `max_polygons`"
        )


# Up to this many entries, a group's statistics come from one histogram of (group, stored level) pairs.
_MAX_HISTOGRAM = 1 << 21


def _group_stats(labels: np.ndarray, n: int, own: OwnProba) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group 1..n of ``labels``: the sum (float64), count and maximum (NaN: none) of its pixels' known
    probabilities.

    The sums are those of the pixels' float64 probabilities added one by one in raster order (a weighted
    bincount): pixels without a probability are counted in group 0, which is dropped, rather than masked
    out, so each group adds the same values in the same order. Stored levels (uint8 ``p * 254``) whose sums
    are exact in any order (:func:`_exact_sums`) skip the per-pixel floats: one histogram of (group, level)
    gives the counts, the sums (count x level, summed: the same exact value) and the maxima.
    """
    flat = (labels if own.known.all() else np.where(own.known, labels, 0)).ravel()
    levels = own.levels
    if levels is not None and (n + 1) * levels.size <= _MAX_HISTOGRAM and _exact_sums(levels, flat.size):
        key = flat * np.int32(levels.size)  # below _MAX_HISTOGRAM: int32 holds it
        key += own.values.ravel()
        hist = np.bincount(key, minlength=(n + 1) * levels.size).reshape(n + 1, levels.size)[1:]
        count = hist.sum(axis=1)
        total = hist @ levels
        top = np.where(hist > 0, levels, -np.inf).max(axis=1, initial=-np.inf)
    else:
        p = own.decoded().ravel()
        count = np.bincount(flat, minlength=n + 1)[1:]
        total = np.bincount(flat, weights=p, minlength=n + 1)[1:]
        highest = np.full(n + 1, -np.inf)
        with np.errstate(invalid="ignore"):  # unknown (NaN) probabilities reach group 0 only
            np.maximum.at(highest, flat, p)
        top = highest[1:]
    return total.astype(np.float64, copy=False), count.astype(np.int64), np.where(count > 0, top, np.nan)


def _exact_sums(levels: np.ndarray, pixels: int) -> bool:
    """Whether every sum of up to ``pixels`` of ``levels`` is exact in float64, whatever the order: all
    levels are finite, not negative and whole multiples of one power of two ``q``, and ``pixels`` times the
    largest is below ``2**53 * q`` (uint8 ``p * 254`` levels: ``q = 2**-29``, so tiles up to about 16 million
    pixels)."""
    if not (np.isfinite(levels).all() and (levels >= 0).all()):
        return False
    positive = levels[levels > 0]
    if positive.size == 0:
        return True
    mantissa, exponent = np.frexp(positive)
    whole = (mantissa * 2.0**53).astype(np.int64)  # exact: a float64 mantissa has 53 bits
    lowest = np.log2((whole & -whole).astype(np.float64)) + exponent - 53  # each level's lowest set bit
    return bool(pixels * positive.max() < 2.0 ** (53 + lowest.min()))


def label_groups(classes: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number the 4-connected groups of equal kept pixels 1..n (0 elsewhere); also the class of each group.

    This is the grouping GDAL's polygonizer makes with 4-connectivity, so group i becomes polygon i.
    """
    labels = np.zeros(classes.shape, dtype=np.int32)
    cls_of: list[np.ndarray] = []
    offset = 0
    mask = np.empty(classes.shape, dtype=bool)
    group: np.ndarray | None = None
    every = bool(keep.all())
    for value in _present(classes, keep):
        np.equal(classes, value, out=mask)
        if not every:
            mask &= keep
        if not offset:  # the first class's groups are labels 1..count as they are: labelled in place
            count = int(ndimage.label(mask, structure=_FOUR, output=labels))
        else:
            group = np.empty(classes.shape, dtype=np.int32) if group is None else group
            count = int(ndimage.label(mask, structure=_FOUR, output=group))
            # classes are disjoint: each pixel is written by one class only; earlier groups keep 1..offset
            np.add(group, offset, out=labels, where=mask)
        cls_of.append(np.full(count, value, dtype=np.int64))
        offset += count
    return labels, (np.concatenate(cls_of) if cls_of else np.empty(0, dtype=np.int64))


_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


# Up to this many values between the least and the greatest kept class, each is looked for in turn.
_FEW_VALUES = 16


def _present(classes: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The class values among kept pixels, ascending."""
    every = bool(keep.all())
    if classes.size and classes.dtype.kind in "iu" and (every or keep.any()):
        # a class map has a few values: the least and the greatest kept, and a look for each one between
        bounds = np.iinfo(classes.dtype)
        lo = int(classes.min() if every else np.min(classes, initial=bounds.max, where=keep))
        hi = int(classes.max() if every else np.max(classes, initial=bounds.min, where=keep))
        if hi - lo < _FEW_VALUES:
            between = [v for v in range(lo + 1, hi) if _is_kept(classes == v, keep, every)]
            return np.array([lo, *between, hi] if hi > lo else [lo], dtype=np.int64)
    kept = classes.ravel() if every else classes[keep]
    if classes.dtype.kind == "u" and classes.dtype.itemsize <= 2:
        return np.flatnonzero(np.bincount(kept, minlength=1))
    return np.unique(kept)


def _is_kept(pixels: np.ndarray, keep: np.ndarray, every: bool) -> bool:
    return bool(pixels.any() if every else (pixels & keep).any())


def _polygonize_classes(classes: np.ndarray, keep: np.ndarray, core: PixelWindow,
                        max_polygons: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Polygons and class values straight from GDAL, counted as they come (stops past the limit)."""
    work = classes if classes.dtype.name in _SHAPES_DTYPES else classes.astype(np.int32)
    geometry, values = _gdal_polygons(work, keep, core, max_polygons)
    return geometry, values.astype(np.int64)


def _polygonize_labels(labels: np.ndarray, core: PixelWindow, n: int, *, every_pixel: bool = False) -> np.ndarray:
    """Polygon i (0-based) of group i + 1, in scene pixel coordinates. ``every_pixel``: every label is
    above 0 (all pixels kept), so GDAL needs no mask: the same polygons, without the mask's pass."""
    geometry = np.empty(n, dtype=object)
    if n == 0:
        return geometry
    built, values = _gdal_polygons(labels, None if every_pixel else labels > 0, core)
    order = values.astype(np.int64) - 1
    if len(order) != n or len(np.unique(order)) != n:
        raise AssertionError(f"polygonizer returned {len(order)} polygons for {n} pixel groups")
    geometry[order] = built
    return geometry


def _gdal_polygons(image: np.ndarray, mask: np.ndarray | None, core: PixelWindow,
                   max_polygons: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """GDAL's polygons of the 4-connected groups of equal pixels of ``image`` (where ``mask``) of ``core``, in
    scene pixel coordinates (a core's polygons line up with its neighbours' exactly), and their values as GDAL
    gives them (float64). Stops past ``max_polygons`` (:class:`PolygonLimitError`).

    GDAL's rings come as GeoJSON-like lists, a tuple per vertex (about 300,000 in a 2048² core of a U-Net's
    classes), none of which can be part of a cycle; yet Python's cyclic collector started a collection at
    every 700 new objects and walked them: 6 % of a polygon tile task's CPU in a worker (16 of 275 ms). It
    is paused while they are made and used (:func:`_collection_paused`), and they are freed, by reference
    counting as ever, before it resumes (so that its next collection does not walk them all at once)."""
    to_scene = Affine.translation(core.col_off, core.row_off)
    with _collection_paused():
        shapes = []
        for item in rasterio.features.shapes(image, mask=mask, connectivity=4, transform=to_scene):
            shapes.append(item)
            if max_polygons is not None and len(shapes) > max_polygons:
                _check_limit(len(shapes), max_polygons, core)
        built = _build_polygons(shapes), np.fromiter((v for _, v in shapes), np.float64, len(shapes))
        del shapes  # freed while the collector is still paused
    return built


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off, and back as it was after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _build_polygons(shapes: list[tuple[dict, float]]) -> np.ndarray:
    """Shapely polygons from GDAL's GeoJSON-like rings, built in bulk (one ragged array, no per-ring objects)."""
    if not shapes:
        return np.empty(0, dtype=object)
    rings = [ring for geojson, _ in shapes for ring in geojson["coordinates"]]
    rings_per_polygon = np.fromiter((len(g["coordinates"]) for g, _ in shapes), np.int64, len(shapes))
    ring_lengths = np.fromiter((len(r) for r in rings), np.int64, len(rings))
    total = int(ring_lengths.sum())
    xy = np.fromiter(chain.from_iterable(chain.from_iterable(rings)), np.float64, 2 * total).reshape(-1, 2)
    offsets = (np.concatenate([[0], np.cumsum(ring_lengths)]), np.concatenate([[0], np.cumsum(rings_per_polygon)]))
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, offsets)


def _edge_owners(geometry: np.ndarray, core: PixelWindow) -> dict[str, np.ndarray]:
    """For each pixel along the core's four edges, the index of the polygon covering it (-1: none).

    A polygon covers the edge pixels under each of its boundary segments that lies on that edge line
    (vertices are pixel corners, so such a segment spans whole pixels, and only the exterior of a polygon
    inside the core can lie on the core's edge).
    """
    strips = {"top": np.full(core.width, -1), "bottom": np.full(core.width, -1),
              "left": np.full(core.height, -1), "right": np.full(core.height, -1)}
    if len(geometry) == 0:
        return strips
    xy, ring = shapely.get_coordinates(shapely.get_exterior_ring(geometry), return_index=True)
    same = ring[1:] == ring[:-1]  # consecutive vertices of one ring form a segment
    x0, y0, x1, y1 = xy[:-1, 0][same], xy[:-1, 1][same], xy[1:, 0][same], xy[1:, 1][same]
    owner = ring[:-1][same]
    lines = {"top": (y0, y1, core.row_off, x0, x1, core.col_off),
             "bottom": (y0, y1, core.row_end, x0, x1, core.col_off),
             "left": (x0, x1, core.col_off, y0, y1, core.row_off),
             "right": (x0, x1, core.col_end, y0, y1, core.row_off)}
    for name, (a0, a1, at, b0, b1, origin) in lines.items():
        on = (a0 == at) & (a1 == at)
        start = np.minimum(b0[on], b1[on]).astype(np.int64) - origin
        stop = np.maximum(b0[on], b1[on]).astype(np.int64) - origin
        strip = strips[name]
        for lo, hi, who in zip(start.tolist(), stop.tolist(), owner[on].tolist(), strict=True):
            strip[lo:hi] = who
    return strips


def _first_pixels(geometry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scene row and column of each polygon's first pixel in raster order (top row, then leftmost; unique
    per class): the top-left corner of that pixel is the exterior vertex with the smallest y, then x."""
    if len(geometry) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    xy, index = shapely.get_coordinates(shapely.get_exterior_ring(geometry), return_index=True)
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])  # rings are contiguous, in polygon order
    top = np.minimum.reduceat(xy[:, 1], starts)
    x_on_top = np.where(xy[:, 1] == top[index], xy[:, 0], np.inf)
    left = np.minimum.reduceat(x_on_top, starts)
    return np.rint(top).astype(np.int64), np.rint(left).astype(np.int64)


# --- I/O edge: what each Dask task reads (every worker opens the files itself) -------------------------


def read_class_window(path: str, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
    """Band 1 of a class raster over ``window``, and its valid mask (nodata and internal masks honoured)."""
    rio_window = Window(window.col_off, window.row_off, window.width, window.height)
    try:
        with open_raster(path, "classes") as src:  # any class raster is untrusted input, as a scene is
            classes = src.read(1, window=rio_window)
            valid = ~_nodata_of(src, 1, classes, rio_window)
    except RasterioIOError as err:
        raise SceneReadError(
            f"classes {Path(path).name}: pixels at rows {window.row_off}-{window.row_end}, columns "
            f"{window.col_off}-{window.col_end} cannot be read; the file looks truncated or corrupt"
        ) from err
    return classes, valid


@dataclass(frozen=True, slots=True)
class StoredProba:
    """A probability raster's window as stored (uint8 ``p * 254`` or float), its nodata mask and the band
    scales and offsets: what :func:`decode_proba` needs, a quarter of the float32 it decodes to (so it is
    what travels to a worker that cannot read the raster itself)."""

    data: np.ndarray  # (classes, rows, cols), the raster's dtype
    nodata: np.ndarray  # (classes, rows, cols) bool
    scales: np.ndarray  # (classes, 1, 1) float32
    offsets: np.ndarray  # (classes, 1, 1) float32


def read_stored_proba(path: str, window: PixelWindow) -> StoredProba:
    """The probability raster's bands over ``window`` as stored (see :func:`read_proba_window`)."""
    rio_window = Window(window.col_off, window.row_off, window.width, window.height)
    try:
        with open_raster(path, "probabilities") as src, warnings.catch_warnings():
            # a 4-band uint8 raster (a timeline's events) has its 4th band taken for alpha: nodata decides
            warnings.simplefilter("ignore", NodataShadowWarning)
            data = src.read(window=rio_window)
            nodata = np.stack([_nodata_of(src, b, data[b - 1], rio_window) for b in src.indexes])
            scales = np.asarray(src.scales, dtype=np.float32)[:, None, None]
            offsets = np.asarray(src.offsets, dtype=np.float32)[:, None, None]
    except RasterioIOError as err:
        raise SceneReadError(
            f"probabilities {Path(path).name}: pixels at rows {window.row_off}-{window.row_end} cannot be read; "
            f"the file looks truncated or corrupt"
        ) from err
    return StoredProba(data, nodata, scales, offsets)


def _nodata_of(src: rasterio.DatasetReader, band: int, data: np.ndarray, window: Window) -> np.ndarray:
    """Where band ``band``'s pixels ``data`` (read over ``window``) are masked: GDAL's mask, which for an
    integer band whose only mask is its whole-number nodata value is that value (compared here rather than
    read again through GDAL's mask band)."""
    flags = src.mask_flag_enums[band - 1]
    nodata = src.nodatavals[band - 1]
    if flags == [MaskFlags.all_valid]:
        return np.zeros(data.shape, dtype=bool)
    if flags == [MaskFlags.nodata] and data.dtype.kind in "iu" and nodata is not None and float(nodata).is_integer():
        bounds = np.iinfo(data.dtype)
        if bounds.min <= nodata <= bounds.max:
            return data == data.dtype.type(int(nodata))
    return src.read_masks(band, window=window) == 0


def decode_proba(stored: StoredProba) -> np.ndarray:
    """Probabilities ``(classes, rows, cols)`` float32 in [0, 1], NaN where nodata, scales and offsets applied."""
    proba = np.where(stored.nodata, np.nan, stored.data.astype(np.float32))
    return proba * stored.scales + stored.offsets


def read_proba_window(path: str, window: PixelWindow) -> np.ndarray:
    """Probabilities ``(classes, rows, cols)`` float32 in [0, 1] over ``window``, NaN where nodata; band
    scales and offsets (uint8 ``p * 254`` storage) are applied."""
    return decode_proba(read_stored_proba(path, window))


def own_class_proba(proba: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The probability each pixel's own class has, ``(rows, cols)``: band ``c`` for class value ``c``
    (NaN for values without a band)."""
    k = proba.shape[0]
    inside = (classes >= 0) & (classes < k)
    picked = np.take_along_axis(proba, np.where(inside, classes, 0).astype(np.intp)[None], axis=0)[0]
    return np.where(inside, picked, np.nan)


def own_class_stored(stored: StoredProba, classes: np.ndarray) -> OwnProba:
    """:func:`own_class_proba` of :func:`decode_proba` of ``stored``, without decoding every band: each
    pixel's own band is picked from the stored values and nodata first, then only that one is decoded. Unsigned
    8- and 16-bit bands that share one scale and offset (uint8 ``p * 254``) stay as stored, with the probability
    of each level (:class:`OwnProba`)."""
    k = stored.data.shape[0]
    inside = (classes < k) if classes.dtype.kind == "u" else (classes >= 0) & (classes < k)
    values, nodata = _pick((stored.data, stored.nodata), classes, inside)
    known = inside & ~nodata
    scales, offsets = stored.scales.ravel(), stored.offsets.ravel()
    dtype = stored.data.dtype
    if dtype.kind == "u" and dtype.itemsize <= 2 and (scales == scales[0]).all() and (offsets == offsets[0]).all():
        levels32 = np.arange(1 << (8 * dtype.itemsize), dtype=np.float32) * scales[0] + offsets[0]
        if not np.isfinite(levels32).all():
            known &= np.isfinite(levels32)[values]
        return OwnProba(values, known, levels32.astype(np.float64))
    band = np.where(inside, classes, 0).astype(np.intp)
    proba = np.where(known, values.astype(np.float32), np.float32(np.nan)) * scales[band] + offsets[band]
    return OwnProba.of(np.where(inside, proba, np.nan))


# Up to this many bands, each pixel's own band is picked by a masked copy per band (no index array).
_PICK_BY_BAND = 8


def _pick(stacks: tuple[np.ndarray, ...], classes: np.ndarray, inside: np.ndarray) -> list[np.ndarray]:
    """Of each ``(bands, rows, cols)`` stack, band ``classes[r, c]`` at each pixel (band 0 where not
    ``inside``)."""
    k = stacks[0].shape[0]
    if k > _PICK_BY_BAND:
        index = np.where(inside, classes, 0).astype(np.intp)[None]
        return [np.take_along_axis(stack, index, axis=0)[0] for stack in stacks]
    out = [stack[0].copy() for stack in stacks]
    for band in range(1, k):
        where = classes == band
        for picked, stack in zip(out, stacks, strict=True):
            np.copyto(picked, stack[band], where=where)
    return out
