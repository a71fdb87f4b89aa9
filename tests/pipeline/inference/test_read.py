import dataclasses

import numpy as np
import pytest

from pipeline.errors import BandMapError, InvalidSceneError, SceneOpenError, ScenewatchError
from pipeline.inference.read import open_scene, parse_band_map, read_window, resolve_bands
from tiles.grid import PixelWindow


def test_open_scene_reads_header(make_geotiff):
    path = make_geotiff(shape=(4, 120, 90), dtype="int16", nodata=-9999, blocksize=32)
    meta = open_scene(path)
    assert (meta.height, meta.width, meta.count, meta.dtype) == (120, 90, 4, "int16")
    assert meta.nodata == -9999 and meta.crs.to_epsg() == 32633
    assert (meta.block_height, meta.block_width) == (32, 32)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_read_window_masks_nodata_in_any_dtype(make_geotiff, dtype):
    nodata = 0 if dtype == "uint8" else -1 if dtype in ("int16", "float32", "float64") else 65535
    path = make_geotiff(shape=(2, 50, 60), dtype=dtype, nodata=nodata, nodata_box=(10, 20, 0, 60))
    data, valid = read_window(open_scene(path), PixelWindow(5, 0, 20, 60), [2, 1])
    assert data.dtype == np.float32 and data.shape == (2, 20, 60)
    assert not valid[5:15].any() and valid[:5].all() and valid[15:].all()
    assert (data[:, ~valid] == 0).all()


def test_nan_is_invalid_in_float_scenes(make_geotiff):
    data = np.ones((1, 10, 10), np.float32)
    data[0, 2, 3] = np.nan
    _, valid = read_window(open_scene(make_geotiff(data=data, dtype="float32")), PixelWindow(0, 0, 10, 10), [1])
    assert valid.sum() == 99 and not valid[2, 3]


def test_not_a_raster(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not a GeoTIFF")
    with pytest.raises(SceneOpenError, match=r"^scene notes.tif: not a readable raster") as err:
        open_scene(path)
    assert err.value.__cause__ is not None  # chained to rasterio's error
    assert isinstance(err.value, OSError)


def test_missing_file(tmp_path):
    with pytest.raises(SceneOpenError, match="no such file"):
        open_scene(tmp_path / "nope.tif")


def test_truncated_tiff_is_caught_before_any_work(make_geotiff, tmp_path):
    src = make_geotiff(shape=(4, 256, 256), blocksize=64)
    cut = tmp_path / "cut.tif"
    raw = src.read_bytes()
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(ScenewatchError, match=r"^scene cut.tif: .*(truncated|not a readable)"):
        open_scene(cut)


def test_no_crs_and_assume_crs(make_geotiff):
    path = make_geotiff(crs=None)
    with pytest.raises(InvalidSceneError, match=r"scene scene.tif: no CRS; .*`assume_crs`"):
        open_scene(path)
    assert open_scene(path, assume_crs="EPSG:32618").crs.to_epsg() == 32618


def test_pixel_limit_is_checked_before_reading(make_geotiff):
    path = make_geotiff(shape=(1, 100, 100))
    with pytest.raises(InvalidSceneError, match="10,000 pixels, over the limit of 9,999"):
        open_scene(path, max_pixels=9_999)


def test_band_maps(make_geotiff):
    meta = open_scene(make_geotiff(shape=(4, 10, 10)))
    assert resolve_bands(meta, parse_band_map("naip"), ["red", "nir"]) == (1, 4)
    assert resolve_bands(meta, parse_band_map("nir=2, red=3"), ["red", "nir"]) == (3, 2)
    with pytest.raises(BandMapError, match="band map names band nir=9 but the file has 4 band"):
        resolve_bands(meta, parse_band_map("red=1,nir=9"), ["red", "nir"])
    with pytest.raises(BandMapError, match="needs band\\(s\\) nir but the band map has red=1"):
        resolve_bands(meta, parse_band_map("red=1"), ["red", "nir"])
    with pytest.raises(BandMapError, match="cannot read 'red:1'"):
        parse_band_map("red:1")


def test_band_map_from_descriptions(make_geotiff):
    meta = open_scene(make_geotiff(shape=(3, 10, 10), descriptions=("B04", "B08", "swir1")))
    assert parse_band_map(None, meta).indexes == {"red": 1, "nir": 2, "swir16": 3}


def test_read_window_sees_a_file_rewritten_at_the_same_path(make_geotiff):
    """Workers keep scenes open between tiles; a scene replaced at the same path must be read anew."""
    path = make_geotiff("same.tif", data=np.full((1, 64, 64), 7, np.uint16), dtype="uint16")
    window = PixelWindow(0, 0, 32, 32)
    assert read_window(open_scene(path), window, (1,))[0].max() == 7
    make_geotiff("same.tif", data=np.full((1, 64, 64), 9, np.uint16), dtype="uint16")
    assert read_window(open_scene(path), window, (1,))[0].max() == 9


def test_read_cache_is_three_block_rows_within_a_fixed_budget(make_geotiff):
    from pipeline.inference.read import READ_CACHE_MB, read_cache_bytes

    meta = open_scene(make_geotiff("c.tif", shape=(4, 300, 500), blocksize=64))
    row = 500 * 64 * 4 * 2  # the whole width: 8 blocks of 64 px
    assert read_cache_bytes(meta, 32) == 3 * row + 16 * 2**20
    assert read_cache_bytes(meta, 0) == 16 * 2**20
    # a stripe of 150 px can straddle 4 blocks
    assert read_cache_bytes(meta, 32, span=150) == 3 * (4 * 64) * 64 * 4 * 2 + 16 * 2**20
    wide = dataclasses.replace(meta, width=10**6)
    assert read_cache_bytes(wide, 32) == READ_CACHE_MB * 2**20
    assert read_cache_bytes(wide, 32, span=2112) < read_cache_bytes(wide, 32)


@pytest.mark.parametrize("case", ["nodata all bands", "nodata subset of bands", "no nodata", "internal mask",
                                  "int32 nodata"])
def test_validity_equals_gdals_dataset_mask(make_geotiff, case):
    """read_window computes the mask from the bands it read where that is GDAL's answer; checked against
    rasterio's dataset_mask on data where single bands hit the nodata value and all bands do."""
    import rasterio

    rng = np.random.default_rng(3)
    data = rng.integers(0, 3, size=(3, 40, 50))  # many zeros: a band at nodata alone must not mask the pixel
    dtype = "int32" if case == "int32 nodata" else "uint16"
    nodata = None if case in ("no nodata", "internal mask") else 0
    path = make_geotiff(data=data, dtype=dtype, nodata=nodata, blocksize=16)
    if case == "internal mask":
        with rasterio.open(path, "r+") as dst:
            dst.write_mask(np.where(data[0] == 1, 0, 255).astype(np.uint8))
    indexes = [2, 1] if case == "nodata subset of bands" else [3, 1, 2]
    window = PixelWindow(3, 5, 30, 40)
    _, valid = read_window(open_scene(path), window, indexes)
    with rasterio.open(path) as src:
        expected = src.dataset_mask(window=rasterio.windows.Window(5, 3, 40, 30)) > 0
    assert 0 < expected.sum() < expected.size or case == "no nodata"
    np.testing.assert_array_equal(valid, expected)
