"""The rows' geometry written from the coordinates (:func:`pipeline.vectors.export.feature_rows`): the same
WKB as GEOS writes for the georeferenced polygons, and the bounds GEOS reads back from it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import shapely
from affine import Affine
from pyproj import CRS

from pipeline.vectors.export import LayerSpec, _map_wkb, feature_rows, feature_table, table_bounds
from pipeline.vectors.measure import area_basis, to_map
from tests.pipeline.vectors.test_vectorize import blobs, vectorize_tiled

NORTH_UP = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
ROTATED = Affine(8.660254037844387, -5.0, 412345.6789, 5.0, 8.660254037844387, 5123456.125)


def _polygons(seed: int) -> np.ndarray:
    """Pixel-edge polygons of a class map, holes and all, plus a few hand-made ones (one ring, many holes)."""
    classes = blobs((96, 112), 4, seed=seed)
    pieces, _ = vectorize_tiled(classes, np.ones(classes.shape, dtype=bool), 32)
    holes = [[(x, y), (x + 1, y), (x + 1, y + 1), (x, y + 1)] for x in range(1, 40, 3) for y in range(1, 9, 3)]
    extra = [shapely.box(0, 0, 1, 1), shapely.Polygon([(0, 0), (50, 0), (50, 10), (0, 10)], holes)]
    return np.concatenate([pieces.geometry, np.array(extra, dtype=object)])


@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED], ids=["north-up", "rotated"])
@pytest.mark.parametrize("seed", [3, 8])
def test_wkb_is_what_geos_writes_for_the_map_geometry(transform: Affine, seed: int) -> None:
    geometry = _polygons(seed)
    written = _map_wkb(geometry, transform)
    assert written is not None
    column, bounds = written
    expected = shapely.to_wkb(to_map(geometry, transform))
    assert column.equals(pa.array(expected, pa.binary()))
    parsed = shapely.bounds(shapely.from_wkb(expected))
    assert bounds == (parsed[:, 0].min(), parsed[:, 1].min(), parsed[:, 2].max(), parsed[:, 3].max())


def test_other_geometry_is_left_to_geos() -> None:
    square = shapely.box(0, 0, 2, 2)
    for odd in (shapely.MultiPolygon([square, shapely.box(3, 3, 4, 4)]), shapely.Polygon(),
                shapely.Polygon([(0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 0, 1)])):
        assert _map_wkb(np.array([square, odd], dtype=object), NORTH_UP) is None


def test_rows_and_bounds_match_the_table_and_its_parsed_bounds() -> None:
    classes = blobs((80, 90), 3, seed=5)
    proba = np.random.default_rng(2).random(classes.shape)
    pieces, _ = vectorize_tiled(classes, np.ones(classes.shape, dtype=bool), 32, proba=proba)
    crs = "EPSG:32633"
    spec = LayerSpec(scene_id="rows", crs_wkt=CRS.from_user_input(crs).to_wkt(), transform=NORTH_UP,
                     basis=area_basis(crs, NORTH_UP, 80, 90), class_names={0: "a", 1: "b", 2: "c"})
    table, bounds = feature_rows(pieces, spec)
    assert table.equals(feature_table(pieces, spec))
    assert bounds == table_bounds(table)
    geometry = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    assert shapely.equals(geometry, to_map(pieces.geometry, NORTH_UP)).all()
    empty, none = feature_rows(pieces.take(np.zeros(len(pieces), dtype=bool)), spec)
    assert empty.num_rows == 0 and none is None
