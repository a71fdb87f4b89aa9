"""The seam union of pixel-aligned pieces (:func:`pipeline.vectors.merge.union_pieces`) against shapely's
overlay union and GDAL's polygonizer on the whole raster."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely

from pipeline.vectors.merge import _OVERLAY_BELOW, SeamGroups, outline, split_border, union_pieces
from pipeline.vectors.vectorize import polygonize_core
from tests.conftest import shared
from tests.pipeline.vectors.test_vectorize import BURN_SCAR, blobs
from tests.vector_reference import whole_raster_polygons
from tiles.grid import TileGrid


def seam_groups(classes: np.ndarray, valid: np.ndarray, tile_size: int) -> list[np.ndarray]:
    """The geometry of each group of border pieces forming one object, tile by tile as the pipeline makes them."""
    grid = TileGrid(classes.shape[0], classes.shape[1], tile_size, 0)
    seams, held, groups = SeamGroups(grid), {}, []
    for tile in grid:
        rows, cols = tile.core_window.relative_to(grid.bounds)
        _, border = split_border(polygonize_core(classes[rows, cols], valid[rows, cols], tile.core_window,
                                                 grid.bounds))
        if len(border.pieces):
            held[tile.row * grid.cols + tile.col] = border.pieces
        groups += [np.array([held[i].geometry[k] for i, k in members], dtype=object)
                   for members in seams.add(tile, outline(border))]
    return groups


def assert_unions_match(classes: np.ndarray, valid: np.ndarray, tile_size: int) -> tuple[int, int]:
    """Every group of several pieces: ours equals shapely's overlay union (valid, same holes, the same
    polygon once straight runs lose their inner vertices) and is GDAL's whole-raster polygon byte for byte,
    whatever ring starts and orientation the pieces have.
    Returns the most pieces and the most vertices one group had."""
    reference = {shapely.to_wkb(g) for g in whole_raster_polygons(classes, valid)[0]}
    most, vertices = 0, 0
    for pieces in seam_groups(classes, valid, tile_size):
        if len(pieces) == 1:
            continue
        most = max(most, len(pieces))
        vertices = max(vertices, int(shapely.get_num_coordinates(pieces).sum()))
        ours, overlay = union_pieces(pieces), shapely.union_all(pieces)
        assert shapely.is_valid(ours) and shapely.equals(ours, overlay)
        assert len(ours.interiors) == len(overlay.interiors)
        assert shapely.normalize(ours).equals_exact(shapely.normalize(shapely.simplify(overlay, 0)), tolerance=0)
        assert shapely.to_wkb(ours) in reference
        # the form depends on neither the pieces' ring starts nor their orientation
        assert union_pieces(shapely.reverse(shapely.normalize(pieces))).equals_exact(ours, tolerance=0)
    return most, vertices


def test_two_pieces_whose_seam_vertices_differ() -> None:
    left = shapely.Polygon([(0, 0), (0, 10), (10, 10), (10, 0)])  # one edge along the seam x = 10
    right = shapely.Polygon([(10, 0), (10, 4), (12, 4), (12, 6), (10, 6), (10, 10), (20, 10), (20, 0)])
    ours = union_pieces(np.array([left, right], dtype=object))
    assert ours.equals(shapely.union_all([left, right])) and len(ours.interiors) == 1
    # GDAL's form: top-left start, shell clockwise and hole anticlockwise as shapely reckons, no straight-run vertex
    assert ours.exterior.coords[:] == [(0, 0), (0, 10), (20, 10), (20, 0), (0, 0)]
    assert ours.interiors[0].coords[:] == [(10, 4), (12, 4), (12, 6), (10, 6), (10, 4)]


def test_large_object_with_holes_over_many_tiles() -> None:
    """A background spanning every tile, holed by blobs and speckle (holes straddling seams and tile corners,
    pixels touching only diagonally)."""
    rng = np.random.default_rng(11)
    classes = (rng.random((230, 260)) < 0.04).astype(np.uint8)  # speckle: single-pixel holes, diagonal touches
    classes[blobs(classes.shape, 3, seed=7) == 2] = 2
    valid = np.ones(classes.shape, dtype=bool)
    for tile_size in (16, 37, 64):
        most, vertices = assert_unions_match(classes, valid, tile_size)
        assert most >= (230 // tile_size) * (260 // tile_size) and vertices > _OVERLAY_BELOW  # the coverage path


@pytest.mark.parametrize("tile_size", [50, 128])
def test_real_mask_with_missing_values(tile_size: int) -> None:
    with rasterio.open(shared(BURN_SCAR)) as src:
        mask = src.read(1)
    assert assert_unions_match(mask, mask != -1, tile_size)[0] > 1


def test_parts_of_one_object_touching_diagonally_inside_one_tile() -> None:
    """Two parts of one object in one tile, apart there but for one pixel corner, joined through other tiles
    around a hole that crosses seams; speckle holes in a bar across seams (diagonal touches on seams)."""
    classes = np.zeros((96, 160), dtype=np.uint8)
    classes[4:12, 4:12] = 1  # P, with a stem down across the seam at row 32
    classes[4:50, 4:6] = 1
    classes[12:20, 12:121] = 1  # Q: its corner meets P's at (12, 12), then it runs across three seams
    classes[16:24, 8:12] = 1  # and reaches under P and above that corner: it lies inside Q's box
    classes[8:12, 24:32] = 1
    classes[12:92, 110:121] = 1  # a riser, and a bar back to P's stem: a hole between them
    classes[44:92, 4:121] = 1
    rng = np.random.default_rng(5)
    speckle = rng.random((44, 113)) < 0.12
    classes[46:90, 6:119][speckle] = 0
    most, vertices = assert_unions_match(classes, np.ones(classes.shape, dtype=bool), 32)
    assert most > 2 and vertices > _OVERLAY_BELOW  # the chain path
