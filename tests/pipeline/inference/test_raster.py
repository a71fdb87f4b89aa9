"""COG writing: overviews built as windows arrive, checked against GDAL's own overviews and a counting
reference; the COG step keeps the data, the metadata and the folder clean."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from pipeline.inference.overviews import overview_factors, reduce2
from pipeline.inference.raster import CogWriter
from pipeline.inference.read import SceneMeta
from tiles.grid import PixelWindow


def _discs(shape: tuple[int, int], classes: int, seed: int) -> np.ndarray:
    """Class raster of overlapping discs (objects of tens of pixels, few ties in a 2 x 2 cell)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    out = np.zeros(shape, dtype=np.uint8)
    for _ in range(shape[0] * shape[1] // 2000):
        r, c, radius = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(4, 40)
        out[(rows - r) ** 2 + (cols - c) ** 2 < radius**2] = rng.integers(1, classes)
    return out


def _meta(height: int, width: int) -> SceneMeta:
    return SceneMeta(path="mem", crs=CRS.from_epsg(32633), transform=from_origin(500000.0, 4000000.0, 10.0, 10.0),
                     height=height, width=width, count=1, dtype="uint8", nodata=None, block_height=256,
                     block_width=256)


def _gdal_level(path: Path, data: np.ndarray, nodata: float | None, resampling: Resampling) -> np.ndarray:
    """GDAL's own first overview level of ``data`` (the independent reference)."""
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "nodata": nodata, "crs": "EPSG:32633",
               "transform": from_origin(0, 0, 1, 1)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.build_overviews([2], resampling)
    with rasterio.open(path, overview_level=0) as ovr:
        return ovr.read()


@pytest.mark.parametrize("shape", [(2, 64, 96), (3, 2, 2), (1, 130, 36)])
def test_average_matches_gdal_with_nodata(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    """Even sizes: GDAL's cells are exact 2 x 2 blocks too (for odd sizes it spreads the remainder over
    the raster, while we add a last half-empty cell: :func:`test_odd_sizes_round_up`)."""
    rng = np.random.default_rng(sum(shape))
    data = rng.integers(0, 255, size=shape).astype(np.uint8)  # 0..254; 255 is nodata
    data[:, : shape[1] // 3, : shape[2] // 4] = 255  # a nodata block
    data[rng.random(shape) < 0.1] = 255  # and scattered nodata pixels
    ours = reduce2(data, "average", 255)
    gdal = _gdal_level(tmp_path / "ref.tif", data, 255, Resampling.average)
    assert ours.shape == gdal.shape
    assert np.array_equal(ours == 255, gdal == 255)
    assert np.abs(ours.astype(int) - gdal.astype(int)).max() <= 1


def test_average_float_nan_nodata_matches_gdal(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.random((2, 42, 38)).astype(np.float32)
    data[rng.random(data.shape) < 0.3] = np.nan
    ours = reduce2(data, "average", float("nan"))
    gdal = _gdal_level(tmp_path / "ref.tif", data, float("nan"), Resampling.average)
    assert np.array_equal(np.isnan(ours), np.isnan(gdal))
    np.testing.assert_allclose(ours, gdal, atol=1e-6)


def test_odd_sizes_round_up() -> None:
    """The last row and column of cells average the pixels that exist (1 or 2 of them)."""
    data = np.arange(15, dtype=np.uint8).reshape(1, 3, 5)
    out = reduce2(data, "average", None)
    assert out.shape == (1, 2, 3)
    assert out[0, 1, 2] == 14  # the corner pixel alone
    assert out[0, 0, 2] == 7  # last column: two pixels, (4 + 9) / 2 rounded half up
    assert out[0, 1, 0] == 11  # last row: two pixels, (10 + 11) / 2 rounded half up


@pytest.mark.parametrize("nodata", [None, 255])
def test_mode_is_the_most_frequent_valid_value(nodata: int | None) -> None:
    rng = np.random.default_rng(7)
    for _ in range(100):
        h, w = rng.integers(1, 9, size=2)
        data = rng.integers(0, 4, size=(1, h, w)).astype(np.uint8)
        data[rng.random(data.shape) < 0.25] = 255
        got = reduce2(data, "mode", nodata)
        padded = np.pad(data, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
        assert got.shape == (1, (h + 1) // 2, (w + 1) // 2)
        for r in range(got.shape[1]):
            for c in range(got.shape[2]):
                cell = padded[0, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].ravel().tolist()
                values = [v for v in cell if v != nodata]
                counts = collections.Counter(values)
                expected = next((v for v in values if counts[v] == max(counts.values())), nodata)
                assert got[0, r, c] == expected, cell


def test_overview_factors_follow_gdal_cog_default() -> None:
    assert overview_factors(16384, 16384, 512) == [2, 4, 8, 16, 32]
    assert overview_factors(512, 300, 512) == []
    assert overview_factors(513, 10, 512) == [2]


def _write(path: Path, meta: SceneMeta, data: np.ndarray, windows: list[PixelWindow], **kw) -> Path:
    with CogWriter(path, meta, count=data.shape[0], dtype=data.dtype.name, block_size=128, **kw) as writer:
        for w in windows:
            writer.write(w, data[:, w.row_off : w.row_end, w.col_off : w.col_end])
        return writer.finish()


def _grid(height: int, width: int, size: int, offset: int = 0) -> list[PixelWindow]:
    edges_r = [0, *range(offset or size, height, size), height]
    edges_c = [0, *range(offset or size, width, size), width]
    wins = [PixelWindow(r0, c0, r1 - r0, c1 - c0) for r0, r1 in zip(edges_r, edges_r[1:], strict=False)
            for c0, c1 in zip(edges_c, edges_c[1:], strict=False) if r1 > r0 and c1 > c0]
    np.random.default_rng(0).shuffle(wins)  # arrival order is not reading order
    return wins


def test_streamed_overviews_match_gdal_cog_overviews(tmp_path: Path) -> None:
    """Windows on a 256 px grid (aligned): overviews come from the writer; windows on a grid offset by 100 px
    (not aligned): GDAL's COG driver computes them. Same full-resolution pixels, same levels, close values."""
    height, width = 1104, 1296  # multiples of 16, so that GDAL's cells are exact 2 x 2 blocks at every level
    meta = _meta(height, width)
    classes = _discs((height, width), 4, seed=1)[None]
    classes[:, 900:, 1000:] = 255
    proba = (np.random.default_rng(2).random((2, height, width)) * 254).astype(np.uint8)
    proba[:, 900:, 1000:] = 255
    tags = {"SCENEWATCH_MODEL": "test"}
    outputs = {}
    for name, windows in (("streamed", _grid(height, width, 256)), ("gdal", _grid(height, width, 256, 100))):
        outputs[name] = (
            _write(tmp_path / name / "classes.tif", meta, classes, windows, nodata=255, resampling="mode",
                   colormap={0: (0, 0, 0, 255), 1: (255, 0, 0, 255)}, descriptions=["class"], tags=tags),
            _write(tmp_path / name / "proba.tif", meta, proba, windows, nodata=255, resampling="average",
                   scales=[1 / 254] * 2, descriptions=["p(a)", "p(b)"], tags=tags),
        )
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["classes.tif", "proba.tif"]
    for ours, ref in zip(outputs["streamed"], outputs["gdal"], strict=True):
        assert cog_validate(str(ours), quiet=True)[0]
        with rasterio.open(ours) as a, rasterio.open(ref) as b:
            assert a.overviews(1) == b.overviews(1) == overview_factors(height, width, 128) == [2, 4, 8, 16]
            assert np.array_equal(a.read(), b.read())
            assert a.tags()["SCENEWATCH_MODEL"] == "test" and a.descriptions == b.descriptions
            assert a.scales == b.scales and a.nodata == b.nodata == 255
            if a.count == 1:
                assert a.colormap(1)[1] == (255, 0, 0, 255)
            for level in range(len(a.overviews(1))):
                with rasterio.open(ours, overview_level=level) as oa, rasterio.open(ref, overview_level=level) as ob:
                    x, y = oa.read(), ob.read()
                    assert x.shape == y.shape
                    if a.count == 1:  # mode: ties may break differently; nodata where all four are nodata
                        assert np.mean(x == y) > 0.97, level
                    else:  # averages cascaded level by level vs GDAL's: rounding apart
                        assert np.array_equal(x == 255, y == 255)
                        assert np.abs(x.astype(int) - y.astype(int)).max() <= 2, level


def test_streamed_overviews_of_an_odd_sized_raster(tmp_path: Path) -> None:
    height, width = 1001, 777
    data = (np.random.default_rng(5).random((1, height, width)) * 200).astype(np.uint8)
    out = _write(tmp_path / "odd.tif", _meta(height, width), data, _grid(height, width, 128), nodata=255,
                 resampling="average")
    assert cog_validate(str(out), quiet=True)[0]
    with rasterio.open(out) as src:
        assert src.overviews(1) == [2, 4, 8]
        assert np.array_equal(src.read(), data)
    with rasterio.open(out, overview_level=2) as ovr:  # factor 8: ceil(1001 / 8) x ceil(777 / 8)
        level = ovr.read(1).astype(float)
    assert level.shape == (126, 98)
    block_means = data[0, :1000, :776].reshape(125, 8, 97, 8).mean(axis=(1, 3))
    assert np.abs(level[:125, :97] - block_means).max() <= 1.5


def test_writer_leaves_nothing_behind_on_error(tmp_path: Path) -> None:
    meta = _meta(600, 600)
    with pytest.raises(RuntimeError), CogWriter(tmp_path / "out.tif", meta, count=1, dtype="uint8", nodata=255,
                                                 block_size=128, resampling="mode") as writer:
        writer.write(PixelWindow(0, 0, 256, 256), np.ones((256, 256), np.uint8))
        raise RuntimeError("model failed")
    assert list(tmp_path.iterdir()) == []


def test_writer_that_fails_while_being_created_leaves_nothing(tmp_path: Path) -> None:
    """The constructor cleans up after itself: an error after the staging file exists (here a tag for a
    band the raster lacks; in a run, SIGTERM's SystemExit) removes it and gives back GDAL's cache size."""
    before = rasterio.env.get_gdal_config("GDAL_CACHEMAX")
    with pytest.raises(IndexError, match="band"):
        CogWriter(tmp_path / "out.tif", _meta(600, 600), count=1, dtype="uint8", nodata=255, block_size=128,
                  resampling="mode", band_tags=[{}, {"SOURCE": "no such band"}])
    assert list(tmp_path.iterdir()) == []
    assert rasterio.env.get_gdal_config("GDAL_CACHEMAX") == before
