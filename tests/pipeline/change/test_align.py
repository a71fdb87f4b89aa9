"""Alignment onto a common grid, pixel areas, and acquisition dates."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS

from pipeline.change.align import GridSpec, grid_of, pixel_area_rows, read_aligned, same_grid
from pipeline.change.dates import date_from_name, scene_date
from pipeline.errors import ConfigError, InvalidSceneError
from tests.conftest import NAIP_2009, NAIP_2020, shared
from tiles.grid import PixelWindow


def _write(path: Path, data: np.ndarray, transform: Affine, crs: str = "EPSG:32633", nodata: float | None = 0,
           tags: dict[str, str] | None = None) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=CRS.from_user_input(crs), transform=transform, nodata=nodata) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)
    return path


def test_shifted_copy_reads_back_identical_on_the_reference_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 250, (2, 60, 80)).astype(np.uint8)
    origin = Affine(10, 0, 500000, 0, -10, 4000000)
    ref = _write(tmp_path / "ref.tif", data, origin)
    # the same ground, cut 3 rows lower and 5 columns further right: a different grid
    shifted = _write(tmp_path / "shifted.tif", data[:, 3:, 5:].copy(), origin @ Affine.translation(5, 3))
    grid = grid_of(ref)
    assert not same_grid(grid, grid_of(shifted))
    window = PixelWindow(0, 0, 60, 80)
    got, valid = read_aligned(shifted, grid, window)
    assert valid[3:, 5:].all() and not valid[:3].any() and not valid[:, :5].any()
    assert np.array_equal(got[:, 3:, 5:], data[:, 3:, 5:])
    # a window in the middle reads only its part, with the same values
    part, pvalid = read_aligned(shifted, grid, PixelWindow(10, 20, 7, 9), [2])
    assert pvalid.all() and np.array_equal(part[0], data[1, 10:17, 20:29])


def test_raster_without_nodata_is_invalid_outside_its_footprint(tmp_path: Path) -> None:
    data = np.full((1, 20, 20), 7, np.uint8)
    origin = Affine(10, 0, 500000, 0, -10, 4000000)
    ref = _write(tmp_path / "ref.tif", np.zeros((1, 30, 30), np.uint8), origin, nodata=None)
    small = _write(tmp_path / "small.tif", data, origin @ Affine.translation(10, 10), nodata=None)
    got, valid = read_aligned(small, grid_of(ref), PixelWindow(0, 0, 30, 30))
    assert valid.sum() == 400 and (got[0][valid] == 7).all()


def test_naip_pair_is_aligned_onto_the_first_grid() -> None:
    grid = grid_of(NAIP_2009)
    other = grid_of(NAIP_2020)
    assert (other.height, other.width) != (grid.height, grid.width)
    data, valid = read_aligned(NAIP_2020, grid, PixelWindow(700, 0, 24, 934), [4])
    assert data.shape == (1, 24, 934)
    assert not valid[-1].any()  # the 2020 scene is one row shorter
    assert valid[:-1].mean() > 0.99


def test_pixel_areas_projected_and_geographic() -> None:
    utm = GridSpec(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 4000000), 5, 5)
    assert pixel_area_rows(utm, utm.bounds).tolist() == [100.0] * 5
    path = shared("change/landsat_timeseries_pucallpa_peru/1985.tif")
    grid = grid_of(path)
    rows = pixel_area_rows(grid, grid.bounds)
    left, bottom, right, top = grid.geo_bounds
    whole, _ = Geod(ellps="WGS84").polygon_area_perimeter([left, right, right, left], [top, top, bottom, bottom])
    # edges of the one big polygon are geodesics, not parallels: agreement to 1e-4 is the geometry, not error
    assert rows.sum() * grid.width == pytest.approx(abs(whole), rel=1e-4)
    assert 7000 < rows.mean() < 8200  # ~0.00081 deg at 8 deg S is about 90 m


def test_dates_from_names_patterns_tags_and_stac(tmp_path: Path) -> None:
    assert date_from_name("m_4709963_se_14_1_20200831.tif") == dt.date(2020, 8, 31)
    assert scene_date(shared("change/landsat_timeseries_pucallpa_peru/1990.tif"), r"(?P<year>\d{4})") == \
        dt.date(1990, 1, 1)
    assert date_from_name("S2_2021-03-04_x.tif") == dt.date(2021, 3, 4)
    origin = Affine(10, 0, 500000, 0, -10, 4000000)
    tagged = _write(tmp_path / "scene_a.tif", np.ones((1, 4, 4), np.uint8), origin,
                    tags={"TIFFTAG_DATETIME": "2019:07:14 10:20:30"})
    assert scene_date(tagged) == dt.date(2019, 7, 14)
    plain = _write(tmp_path / "scene_b.tif", np.ones((1, 4, 4), np.uint8), origin)
    with pytest.raises(InvalidSceneError, match="scene_b.tif: no acquisition date.*`date_pattern`"):
        scene_date(plain)
    (tmp_path / "scene_b.json").write_text(json.dumps({"type": "Feature",
                                                        "properties": {"datetime": "2018-05-06T10:00:00Z"}}))
    assert scene_date(plain) == dt.date(2018, 5, 6)
    with pytest.raises(ConfigError, match="year"):
        scene_date(plain, r"(\d{4})")
