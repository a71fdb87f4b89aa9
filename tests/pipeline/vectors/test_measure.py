"""Areas and perimeters in metres: planar in well-behaved projections, geodesic otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Transformer

from pipeline.vectors.measure import area_basis, measure, pixel_size_m, to_map


def from_origin(west: float, north: float, xres: float, yres: float) -> Affine:
    """North-up transform (rasterio's from_origin warns under affine 3 about its own `*`)."""
    return Affine(xres, 0.0, west, 0.0, -yres, north)


def squares(n: int, size: int) -> np.ndarray:
    """n x n pixel squares of ``size`` pixels, plus one with a hole: pixel coordinates."""
    boxes = [shapely.box(c * size, r * size, (c + 1) * size, (r + 1) * size) for r in range(n) for c in range(n)]
    boxes.append(shapely.box(0, n * size, 3 * size, n * size + 3 * size).difference(
        shapely.box(size, n * size + size, 2 * size, n * size + 2 * size)))
    return np.array(boxes, dtype=object)


def equal_area_reference(pixel_geoms: np.ndarray, transform, crs: str) -> np.ndarray:
    """Independent: densify, project to a Lambert azimuthal equal-area plane at the data, planar area."""
    lonlat = shapely.transform(to_map(shapely.segmentize(pixel_geoms, 1.0), transform),
                               lambda xy: np.column_stack(Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
                                                          .transform(xy[:, 0], xy[:, 1])))
    lon, lat = shapely.centroid(shapely.union_all(lonlat)).coords[0]
    laea = f"+proj=laea +lat_0={lat} +lon_0={lon} +ellps=WGS84 +units=m"
    to_laea = Transformer.from_crs("EPSG:4326", laea, always_xy=True)
    return shapely.area(shapely.transform(lonlat, lambda xy: np.column_stack(to_laea.transform(xy[:, 0], xy[:, 1]))))


def test_projected_areas_are_pixel_count_times_pixel_area() -> None:
    transform = from_origin(500000.0, 4000000.0, 10.0, 10.0)
    basis = area_basis("EPSG:32633", transform, 1000, 1000)
    assert basis.kind == "planar"
    geoms = squares(4, 25)
    area, perimeter = measure(geoms, transform, basis)
    pixels = shapely.area(geoms)
    assert np.array_equal(area, pixels * 100.0)
    assert area.sum() == pixels.sum() * 100.0
    assert perimeter[0] == pytest.approx(4 * 250.0)
    assert perimeter[-1] == pytest.approx(4 * 750.0 + 4 * 250.0)  # outer ring and the hole's ring


def test_feet_are_converted_to_metres() -> None:
    transform = from_origin(6500000.0, 1900000.0, 10.0, 10.0)  # NAD83 / California zone 5, US survey feet
    basis = area_basis("EPSG:2229", transform, 100, 100)
    assert basis.kind == "planar" and basis.unit_m == pytest.approx(0.3048006096)
    area, _ = measure(squares(1, 10)[:1], transform, basis)
    assert area[0] == pytest.approx(100 * (10.0 * 0.3048006096) ** 2)  # 100 pixels of 10 ft x 10 ft


@pytest.mark.parametrize("lat", [0.0, 45.0, 70.0])
def test_geographic_areas_match_an_equal_area_projection(lat: float) -> None:
    res = 0.001  # degrees, ~100 m
    transform = from_origin(10.0, lat + 0.5, res, res)
    basis = area_basis("EPSG:4326", transform, 1000, 1000)
    assert basis.kind == "geodesic"
    geoms = squares(6, 80)
    area, perimeter = measure(geoms, transform, basis)
    reference = equal_area_reference(geoms, transform, "EPSG:4326")
    assert area.sum() == pytest.approx(reference.sum(), rel=0.005)
    np.testing.assert_allclose(area, reference, rtol=0.005)
    assert np.all(perimeter > 0)
    assert pixel_size_m(basis, transform, 1000, 1000) == pytest.approx(
        np.sqrt(111_320 * res * 110_574 * res * np.cos(np.radians(lat + 0.0))), rel=0.02)


def test_web_mercator_is_measured_geodesically_not_in_its_plane() -> None:
    transform = from_origin(1_000_000.0, 8_000_000.0, 50.0, 50.0)  # about 58 degrees north
    basis = area_basis("EPSG:3857", transform, 1000, 1000)
    assert basis.kind == "geodesic"
    geoms = squares(3, 100)
    area, _ = measure(geoms, transform, basis)
    np.testing.assert_allclose(area, equal_area_reference(geoms, transform, "EPSG:3857"), rtol=0.005)
    assert area.sum() < 0.5 * shapely.area(geoms).sum() * 2500.0  # the plane overstates areas ~3.6x here
