"""Quality masks: the grammar, the presets against real bit patterns, dilation, and read_window."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import PredictConfig
from pipeline.errors import ConfigError
from pipeline.inference.masks import bind_mask, dilate, parse_quality_mask, unusable_pixels
from pipeline.inference.read import open_scene, parse_band_map, read_window, resolve_bands
from tiles.grid import PixelWindow, plan_tiles


def _unusable(text: str | list[str], values: list[int]) -> list[bool]:
    mask = parse_quality_mask(text)
    assert mask is not None
    band = np.asarray(values, dtype=np.uint16)[None, None, :].repeat(len(mask.rules), axis=0)
    return unusable_pixels(mask, band)[0].tolist()


def test_qa_pixel_decodes_real_landsat_collection2_values() -> None:
    # QA_PIXEL values of Landsat 8-9 Collection 2 scenes (USGS Science Product Guide): 21824 clear land,
    # 21952 clear water (bit 7), 22280 cloud (bit 3), 23888 cloud shadow (bit 4), 30048 snow (bit 5),
    # 55052 cirrus and cloud (bits 2, 3), 21826 dilated cloud (bit 1), 1 fill (bit 0)
    clear, water, cloud, shadow, snow, cirrus_cloud, dilated, fill = 21824, 21952, 22280, 23888, 30048, 55052, 21826, 1
    values = [clear, water, cloud, shadow, snow, cirrus_cloud, dilated, fill]
    assert _unusable("qa_pixel", values) == [False, False, True, True, True, True, True, True]
    assert _unusable("qa_pixel=cloud,shadow", values) == [False, False, True, True, False, True, False, False]
    assert _unusable("qa_pixel=snow", values) == [False, False, False, False, True, False, False, False]
    assert _unusable("QA_PIXEL=fill", values) == [False, False, False, False, False, False, False, True]


def test_scl_classes_and_plain_values_and_ranges() -> None:
    scl = list(range(12))  # 0 no data .. 11 snow
    masked = [v for v, m in zip(scl, _unusable("scl", scl), strict=True) if m]
    assert masked == [0, 1, 3, 8, 9, 10, 11]
    assert [v for v, m in zip(scl, _unusable("scl=cloud,shadow", scl), strict=True) if m] == [3, 8, 9]
    assert [v for v, m in zip(scl, _unusable("scl=cloud_high,10", scl), strict=True) if m] == [9, 10]
    assert [v for v, m in zip(scl, _unusable("clm=1,3-5", scl), strict=True) if m] == [1, 3, 4, 5]
    two = parse_quality_mask(["clm=1", "scl=snow"])
    assert two is not None and two.bands == ("clm", "scl") and str(two) == "clm=1 scl=snow"


@pytest.mark.parametrize(("text", "message"), [
    ("clm", "no values"),
    ("clm=", "a value is empty"),
    ("clm=a", "'a' is not a value or range"),
    ("clm=5-3", "runs backwards"),
    ("scl=clouds", "'clouds' is not a scl class; choose from nodata"),
    ("qa_pixel=water", "'water' is not a qa_pixel class"),
    ("1=2", "write NAME=VALUES"),
])
def test_mask_grammar_errors_are_one_line_naming_the_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_quality_mask(text)
    assert "\n" not in str(err.value) and "`mask`" in str(err.value)
    with pytest.raises(ConfigError, match="band clm given twice"):
        parse_quality_mask(["clm=1", "clm=2"])


def test_config_takes_texts_and_writes_them_back() -> None:
    config = PredictConfig(mask=["scl=cloud,shadow", "clm=1"], mask_dilate=2)
    assert config.model_dump(mode="json")["mask"] == ["scl=cloud,shadow", "clm=1"]
    assert PredictConfig(**config.model_dump(mode="json")) == config
    assert PredictConfig(mask="scl").mask == parse_quality_mask("scl")
    with pytest.raises(ConfigError, match="mask: 'scl=x': 'x' is not a scl class"):
        PredictConfig.build(mask="scl=x")
    with pytest.raises(ConfigError, match="mask_dilate"):
        PredictConfig.build(mask_dilate=-1)


def test_dilation_is_a_square_of_side_2n_plus_1() -> None:
    unusable = np.zeros((9, 9), bool)
    unusable[4, 4] = True
    grown = dilate(unusable, 2)
    assert grown.sum() == 25 and grown[2:7, 2:7].all()
    assert dilate(unusable, 0) is unusable


def test_read_window_masks_bands_and_dilates_without_seams(make_geotiff) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(100, 2000, size=(3, 120, 150)).astype(np.uint16)
    clm = np.zeros((120, 150), np.uint16)
    clm[40:44, 60:63] = 1  # a cloud that straddles tile borders below
    clm[100, 10] = 2
    data[2] = clm
    meta = open_scene(make_geotiff("cloudy.tif", data=data))
    band_map = parse_band_map("red=1,nir=2,clm=3")
    indexes = resolve_bands(meta, band_map, ["red", "nir"])
    mask = bind_mask(parse_quality_mask("clm=1,2"), band_map.indexes, dilate_px=3)
    whole, valid = read_window(meta, meta.bounds, indexes, mask)
    expected = np.zeros((120, 150), bool)
    expected[37:47, 57:66] = True
    expected[97:104, 7:14] = True
    np.testing.assert_array_equal(~valid, expected)
    assert (whole[:, ~valid] == 0).all() and whole.shape == (2, 120, 150)  # the mask band is not model input
    # every tile of a grid with a halo smaller than the dilation agrees with the whole-scene read
    for tile in plan_tiles(120, 150, 32, 1):
        _, tile_valid = read_window(meta, tile.read_window, indexes, mask)
        w = tile.read_window
        np.testing.assert_array_equal(tile_valid, valid[w.row_off : w.row_end, w.col_off : w.col_end])
    _, unmasked = read_window(meta, PixelWindow(0, 0, 120, 150), indexes)
    assert unmasked.all()


def test_mask_band_must_be_in_the_band_map(make_geotiff) -> None:
    mask = parse_quality_mask("scl")
    assert mask is not None
    with pytest.raises(ConfigError, match="`mask` needs band scl but the band map has red=1"):
        bind_mask(mask, parse_band_map("red=1,nir=4").indexes)
    # a band the map names past the file's last band is refused when the mask needs it
    from pipeline.errors import BandMapError
    from workflows.scene import plan_scene

    plain = make_geotiff("plain.tif", shape=(4, 20, 20))
    with pytest.raises(BandMapError, match="band map names band clm=5 but the file has 4"):
        plan_scene(plain, "vegetation", PredictConfig(bands="red=1,nir=4,clm=5", mask="clm=1"))
    # the sentinel2-l2a preset names scl 13th; a 12-band file without it still reads its 12 bands
    twelve = open_scene(make_geotiff("s2.tif", shape=(12, 20, 20)))
    assert resolve_bands(twelve, parse_band_map("sentinel2-l2a"), ["red", "nir"]) == (4, 8)
    assert parse_band_map("sentinel2-l2a").indexes["scl"] == 13
    assert parse_band_map("landsat8").indexes["qa_pixel"] == 8
