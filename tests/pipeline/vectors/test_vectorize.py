"""Per-tile polygonizing and seam merging against GDAL's polygonizer on the whole raster."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely

from pipeline.vectors import vectorize
from pipeline.vectors.merge import SeamMerger, split_border
from pipeline.vectors.vectorize import (
    CorePieces,
    Pieces,
    PolygonLimitError,
    StoredProba,
    decode_proba,
    keep_mask,
    label_groups,
    own_class_proba,
    own_class_stored,
    polygonize_core,
    read_class_window,
    read_stored_proba,
    sieve_classes,
)
from tests.conftest import shared, textured
from tests.vector_reference import assert_same_polygons, whole_raster_polygons
from tiles.grid import PixelWindow, TileGrid

RONDONIA = "labeled/deforestation_rondonia_s2_20LLQ/SENTINEL-2_MSI_20LLQ_2020-06-04_2021-08-26_probs_v0.tif"
BURN_SCAR = "labeled/burn_scar_hls/subsetted_512x512_HLS.S30.T10TGS.2018285.v1.4.mask.tif"


def vectorize_tiled(classes: np.ndarray, valid: np.ndarray, tile_size: int, proba: np.ndarray | None = None,
                    keep: tuple[int, ...] | None = None) -> tuple[Pieces, int]:
    """The pipeline's stages run in-process tile by tile; also the most border pieces ever held."""
    grid = TileGrid(classes.shape[0], classes.shape[1], tile_size, 0)
    merger = SeamMerger(grid)
    out, held = [], 0
    for tile in grid:
        rows, cols = tile.core_window.relative_to(grid.bounds)
        c, v = classes[rows, cols], valid[rows, cols]
        p = None if proba is None else proba[rows, cols]
        interior, border = split_border(polygonize_core(c, keep_mask(c, v, keep), tile.core_window, grid.bounds,
                                                        proba=p))
        out.append(interior)
        out.append(merger.add(tile, border))
        held = max(held, merger.held)
    assert merger.held == 0
    return Pieces.concat(out), held


def blobs(shape: tuple[int, int], classes: int, seed: int, noise: float = 0.03) -> np.ndarray:
    """Smooth class patches (crossing many tile borders) sprinkled with single-pixel speckle."""
    rng = np.random.default_rng(seed)
    field = textured(shape, seed, scale=0.5)
    out = np.minimum((field * classes).astype(np.uint8), classes - 1)
    speckle = rng.random(shape) < noise
    out[speckle] = rng.integers(0, classes, speckle.sum())
    return out


@pytest.mark.parametrize("with_proba", [False, True], ids=["geometry-path", "label-path"])
@pytest.mark.parametrize("tile_size", [16, 37, 64, 500])
def test_generated_raster_matches_whole_raster_polygonizer(tile_size: int, with_proba: bool) -> None:
    classes = blobs((210, 333), 4, seed=3)
    valid = np.random.default_rng(4).random(classes.shape) > 0.02  # scattered nodata holes
    valid[50:80, 100:140] = False
    proba = np.random.default_rng(5).random(classes.shape) if with_proba else None
    ours, _ = vectorize_tiled(classes, valid, tile_size, proba=proba)
    ref, ref_cls = whole_raster_polygons(classes, valid)
    assert_same_polygons(ours.geometry, ours.cls, ref, ref_cls)
    assert np.array_equal(ours.pixels, shapely.area(ours.geometry).astype(np.int64))


@pytest.mark.slow
@pytest.mark.parametrize("tile_size", [64, 100, 256])
def test_rondonia_class_map_matches_whole_raster(tile_size: int) -> None:
    with rasterio.open(shared(RONDONIA)) as src:
        classes = np.argmax(src.read(), axis=0).astype(np.uint8)
    valid = np.ones(classes.shape, dtype=bool)
    ours, _ = vectorize_tiled(classes, valid, tile_size)
    ref, ref_cls = whole_raster_polygons(classes, valid)
    assert len(ref) > 1000  # a real, fragmented map
    assert_same_polygons(ours.geometry, ours.cls, ref, ref_cls)


@pytest.mark.parametrize("tile_size", [50, 128, 200])
def test_burn_scar_mask_with_missing_values_matches_whole_raster(tile_size: int) -> None:
    with rasterio.open(shared(BURN_SCAR)) as src:
        mask = src.read(1)
    valid = mask != -1
    ours, _ = vectorize_tiled(mask, valid, tile_size)
    ref, ref_cls = whole_raster_polygons(mask, valid)
    assert set(ref_cls.tolist()) == {0, 1}
    assert_same_polygons(ours.geometry, ours.cls, ref, ref_cls)
    only_scars, _ = vectorize_tiled(mask, valid, tile_size, keep=(1,))
    assert_same_polygons(only_scars.geometry, only_scars.cls, ref[ref_cls == 1], ref_cls[ref_cls == 1])


def test_object_over_three_by_three_tiles_is_one_polygon() -> None:
    classes = np.zeros((90, 90), dtype=np.uint8)
    classes[5:85, 5:85] = 1  # spans all 9 tiles of 30 px
    ours, _ = vectorize_tiled(classes, np.ones_like(classes, dtype=bool), 30, keep=(1,))
    assert len(ours) == 1
    assert ours.geometry[0].equals(shapely.box(5, 5, 85, 85))
    assert ours.pixels[0] == 80 * 80


def test_ring_across_tile_corner_keeps_its_hole() -> None:
    classes = np.zeros((60, 60), dtype=np.uint8)
    classes[20:40, 20:40] = 1
    classes[25:35, 25:35] = 0  # the hole straddles the corner shared by four 30-px tiles
    ours, _ = vectorize_tiled(classes, np.ones_like(classes, dtype=bool), 30)
    ring = ours.geometry[ours.cls == 1]
    assert len(ring) == 1 and len(ring[0].interiors) == 1
    assert ring[0].equals(shapely.box(20, 20, 40, 40).difference(shapely.box(25, 25, 35, 35)))
    assert len(ours.geometry[ours.cls == 0]) == 2  # the outside and the hole's filling


def test_pieces_meeting_only_at_a_tile_corner_stay_apart() -> None:
    classes = np.zeros((40, 40), dtype=np.uint8)
    classes[10:20, 10:20] = 1
    classes[20:30, 20:30] = 1  # touches the first square at the tile corner (20, 20) only
    ours, _ = vectorize_tiled(classes, np.ones_like(classes, dtype=bool), 20, keep=(1,))
    ref, ref_cls = whole_raster_polygons(classes, classes == 1)
    assert len(ours) == len(ref) == 2
    assert_same_polygons(ours.geometry, ours.cls, ref, ref_cls)


def discs(shape: tuple[int, int], count: int, seed: int, max_radius: int = 30) -> np.ndarray:
    """Background 0 with ``count`` random discs of class 1 or 2 (bounded objects, many crossing borders)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    out = np.zeros(shape, dtype=np.uint8)
    for r, c, radius, value in zip(rng.integers(0, shape[0], count), rng.integers(0, shape[1], count),
                                   rng.integers(3, max_radius, count), rng.integers(1, 3, count), strict=True):
        out[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = value
    return out


@pytest.mark.slow
def test_merge_memory_does_not_grow_with_raster_height() -> None:
    short, tall = discs((200, 400), 60, seed=8), discs((800, 400), 240, seed=9)  # same density, 4x the rows
    _, held_short = vectorize_tiled(short, np.ones(short.shape, dtype=bool), 40, keep=(1, 2))
    ours, held_tall = vectorize_tiled(tall, np.ones(tall.shape, dtype=bool), 40, keep=(1, 2))
    assert 0 < held_tall <= 2 * held_short
    ref, ref_cls = whole_raster_polygons(tall, tall > 0)
    assert_same_polygons(ours.geometry, ours.cls, ref, ref_cls)


def test_pixel_statistics_match_direct_computation() -> None:
    rng = np.random.default_rng(5)
    classes = blobs((120, 150), 3, seed=5)
    proba = rng.random((3, 120, 150)).astype(np.float32)
    proba[:, :10, :10] = np.nan  # probabilities unknown there
    own = own_class_proba(proba, classes)
    ours, _ = vectorize_tiled(classes, np.ones(classes.shape, dtype=bool), 32, proba=own)
    # independent: burn each polygon with GDAL and average the probabilities under it
    for i in rng.choice(len(ours), size=25, replace=False):
        inside = rasterio.features.geometry_mask([ours.geometry[i]], classes.shape,
                                                 rasterio.Affine.identity(), invert=True)
        values = proba[ours.cls[i]][inside]
        assert ours.pixels[i] == inside.sum()
        known = values[np.isfinite(values)]
        assert ours.proba_count[i] == len(known)
        if len(known):
            assert ours.proba_sum[i] == pytest.approx(known.sum(), rel=1e-6)
            assert ours.proba_max[i] == pytest.approx(known.max())
        else:
            assert np.isnan(ours.proba_max[i])
        rows, cols = np.nonzero(inside)
        first = np.lexsort((cols, rows))[0]
        assert (ours.key_row[i], ours.key_col[i]) == (rows[first], cols[first])


def assert_identical(ours: CorePieces, ref: CorePieces) -> None:
    """Byte for byte: geometry WKB, every attribute array (dtype included) and the edge strips."""
    assert list(shapely.to_wkb(ours.pieces.geometry)) == list(shapely.to_wkb(ref.pieces.geometry))
    for field in Pieces.__slots__[1:]:
        a, b = getattr(ours.pieces, field), getattr(ref.pieces, field)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), field
    for edge in ("top", "bottom", "left", "right"):
        assert np.array_equal(getattr(ours, edge), getattr(ref, edge)), edge


@pytest.mark.parametrize("storage", ["uint8", "uint8-few-levels-path", "uint8-band-scales", "float32"])
@pytest.mark.parametrize("keep", [None, (0, 1, 3)], ids=["all-kept", "some-kept"])
def test_statistics_from_stored_bands_equal_those_of_decoded_probabilities(
        storage: str, keep: tuple[int, ...] | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pixel's own band picked as stored (:func:`own_class_stored`: levels of uint8 ``p * 254``, or
    only that band decoded) gives the polygons and statistics of all bands decoded to float, bit for bit;
    and the sums are the masked, raster-order float64 sums the statistics were defined by."""
    rng = np.random.default_rng(11)
    classes = blobs((96, 130), 4, seed=7)  # class 3 has no band: no probability
    valid = rng.random(classes.shape) > 0.01
    if storage == "float32":
        data = rng.random((3, *classes.shape)).astype(np.float32)
        nodata = rng.random(data.shape) < 0.05
        data[nodata] = np.nan
        scales, offsets = np.ones((3, 1, 1), np.float32), np.zeros((3, 1, 1), np.float32)
    else:
        data = rng.integers(0, 255, (3, *classes.shape)).astype(np.uint8)
        nodata = rng.random(data.shape) < 0.05
        data[nodata] = 255
        scales = np.full((3, 1, 1), 1 / 254, np.float32)
        offsets = np.zeros((3, 1, 1), np.float32)
        if storage == "uint8-band-scales":
            scales[1] = 1 / 200
    if storage == "uint8-few-levels-path":
        monkeypatch.setattr(vectorize, "_MAX_HISTOGRAM", 0)  # the per-pixel path with the levels
    stored = StoredProba(data, nodata, scales, offsets)
    keep_px = keep_mask(classes, valid, keep)
    grid = TileGrid(classes.shape[0], classes.shape[1], 200, 0)
    core = grid.tile(0, 0).core_window
    decoded = own_class_proba(decode_proba(stored), classes)
    ref = polygonize_core(classes, keep_px, core, grid.bounds, proba=decoded)
    ours = polygonize_core(classes, keep_px, core, grid.bounds, proba=own_class_stored(stored, classes))
    assert_identical(ours, ref)
    assert np.isnan(ref.pieces.proba_max[ref.pieces.cls == 3]).all()
    labels, _ = label_groups(classes, keep_px)
    flat, p = labels.ravel(), decoded.ravel().astype(np.float64)
    has = np.isfinite(p) & (flat > 0)
    sums = np.bincount(flat[has], weights=p[has], minlength=len(ref.pieces) + 1)[1:]
    assert sums.tobytes() == ours.pieces.proba_sum.tobytes()


@pytest.mark.parametrize(("dtype", "nodata", "internal_mask"), [
    ("uint8", 255, False), ("uint8", None, False), ("uint16", 0, False), ("int16", -300, False),
    ("uint8", 3.5, False), ("float32", float("nan"), False), ("uint8", None, True),
])
def test_class_and_probability_windows_are_masked_as_gdal_masks_them(
        make_geotiff: Callable[..., Path], dtype: str, nodata: float | None, internal_mask: bool) -> None:
    """Nodata compared in numpy where it is a band's only mask, GDAL's mask band otherwise: the same pixels
    as rasterio's masked read."""
    data = np.random.default_rng(2).integers(0, 6, (2, 40, 50)).astype(dtype)
    if nodata is not None:
        data[:, 5:9, 7:30] = nodata
    path = make_geotiff("p.tif", data=data, dtype=dtype, nodata=nodata)
    if internal_mask:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
            dst.write_mask(np.where(data[0] == 1, 0, 255).astype(np.uint8))
    window = PixelWindow(3, 2, 30, 41)
    with rasterio.open(path) as src:
        masked = src.read(window=rasterio.windows.Window(2, 3, 41, 30), masked=True)
    _, valid = read_class_window(str(path), window)
    stored = read_stored_proba(str(path), window)
    assert np.array_equal(stored.nodata, np.ma.getmaskarray(masked))
    assert np.array_equal(valid, ~np.ma.getmaskarray(masked)[0])
    assert np.array_equal(stored.data, masked.data, equal_nan=dtype == "float32")
    assert stored.nodata.any() == (nodata is not None or internal_mask)


def test_noisy_tile_hits_the_polygon_limit_before_building_geometry() -> None:
    noisy = (np.random.default_rng(0).random((200, 200)) < 0.5).astype(np.uint8)
    grid = TileGrid(200, 200, 200, 0)
    with pytest.raises(PolygonLimitError, match="`sieve`"):
        polygonize_core(noisy, np.ones_like(noisy, dtype=bool), grid.tile(0, 0).core_window, grid.bounds,
                        max_polygons=1000)


@pytest.mark.parametrize("collecting", [True, False])
@pytest.mark.parametrize("proba", [False, True])
def test_garbage_collector_is_left_as_it_was(collecting: bool, proba: bool) -> None:
    """Polygonizing pauses Python's cyclic collector while GDAL's rings are built; it is back as it was after,
    after a polygon limit too."""
    noisy = (np.random.default_rng(0).random((200, 200)) < 0.5).astype(np.uint8)
    grid = TileGrid(200, 200, 200, 0)
    core, keep = grid.tile(0, 0).core_window, np.ones_like(noisy, dtype=bool)
    own = np.full(noisy.shape, 0.5) if proba else None
    was = gc.isenabled()
    (gc.enable if collecting else gc.disable)()
    try:
        assert len(polygonize_core(noisy, keep, core, grid.bounds, proba=own).pieces) > 1000
        assert gc.isenabled() == collecting
        if not proba:  # the limit is counted as GDAL's polygons come, inside the pause
            with pytest.raises(PolygonLimitError):
                polygonize_core(noisy, keep, core, grid.bounds, max_polygons=1000)
            assert gc.isenabled() == collecting
    finally:
        (gc.enable if was else gc.disable)()


def test_sieve_removes_groups_below_the_threshold() -> None:
    classes = blobs((100, 100), 3, seed=2, noise=0.05)
    valid = np.ones(classes.shape, dtype=bool)
    sieved = sieve_classes(classes, valid, 10)
    ours, _ = vectorize_tiled(sieved, valid, 25)
    assert ours.pixels.min() >= 10
    assert ours.pixels.sum() == classes.size
    assert len(ours) < len(whole_raster_polygons(classes, valid)[0])


def test_grouping_from_outlines_then_merging_elsewhere_matches_the_whole_raster() -> None:
    """Seams grouped from outlines alone (no geometry, as the Dask client does) and unioned per finished
    row from the tiles' pieces (as a worker does) give the whole-raster polygons, and every tile's pieces
    are released once its objects are complete."""
    from pipeline.vectors.merge import SeamGroups, merge_groups, outline

    classes = blobs((210, 333), 4, seed=3)
    valid = np.ones(classes.shape, dtype=bool)
    grid = TileGrid(classes.shape[0], classes.shape[1], 37, 0)
    seams = SeamGroups(grid)
    held: dict[int, Pieces] = {}
    out = []
    for tile in grid:
        rows, cols = tile.core_window.relative_to(grid.bounds)
        c = classes[rows, cols]
        interior, border = split_border(polygonize_core(c, valid[rows, cols], tile.core_window, grid.bounds))
        shape = outline(border)
        assert all(np.asarray(getattr(shape, f)).dtype.kind in "iu" for f in shape.__slots__)  # no geometry
        index = tile.row * grid.cols + tile.col
        if len(border.pieces):
            held[index] = border.pieces
        groups = seams.add(tile, shape)
        out += [interior, merge_groups({i: held[i] for group in groups for i, _ in group}, groups)]
        for released in seams.released:
            del held[released]
    assert seams.held == 0 and not held
    ref, ref_cls = whole_raster_polygons(classes, valid)
    ours = Pieces.concat(out)
    assert_same_polygons(ours.geometry, ours.cls, ref, ref_cls)
    expected, _ = vectorize_tiled(classes, valid, 37)  # SeamMerger: the same objects, in the same order
    assert shapely.equals_exact(ours.geometry, expected.geometry, tolerance=0).all()
