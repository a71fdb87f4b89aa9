"""Adaptive thresholds: Otsu on fixed-bin histograms, the bimodality and mode-side tests, their fallback,
and the water and radar models with ``threshold=auto`` on real OMBRIA chips."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from pipeline.models.contract import ModelRef
from pipeline.models.loader import load_model
from pipeline.threshold import IndexRange, auto_threshold, choose_threshold, index_histogram, otsu
from tests.conftest import shared


def test_otsu_finds_the_valley_of_two_modes_and_matches_a_direct_search() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(-0.4, 0.08, 30000), rng.normal(0.3, 0.05, 10000)])
    hist = index_histogram(values)
    t = otsu(hist)
    # independent reference: between-class variance of the raw values at every candidate edge
    def between(e: float) -> float:
        lo, hi = values[values < e], values[values >= e]
        return lo.size * hi.size * (lo.mean() - hi.mean()) ** 2 if lo.size and hi.size else 0.0

    best = max(between(e) for e in IndexRange().edges[1:-1])
    assert t is not None and between(t) >= best * (1 - 1e-3) and -0.2 < t < 0.2  # in the valley
    choice = choose_threshold(hist, 0.0)
    assert choice.source == "auto" and choice.value == t and "Otsu" in choice.describe()


def test_histograms_of_parts_sum_to_the_histogram_of_the_whole() -> None:
    values = np.random.default_rng(0).uniform(-1.5, 1.5, 10001).astype(np.float32)  # some outside: clipped
    whole = index_histogram(values)
    parts = sum(index_histogram(p) for p in np.array_split(values, 7))
    np.testing.assert_array_equal(whole, parts)
    assert whole.sum() == values.size
    np.testing.assert_array_equal(whole[1:-1], np.histogram(values, IndexRange().edges)[0][1:-1])


def test_fallback_when_unimodal_or_both_modes_on_one_side_of_the_default() -> None:
    rng = np.random.default_rng(1)
    land = np.concatenate([rng.normal(-0.45, 0.05, 20000), rng.normal(-0.2, 0.05, 20000)])  # soil, vegetation
    choice = auto_threshold(land, 0.0)
    assert choice.source == "fallback" and choice.value == 0.0 and "one side of the default" in choice.detail
    assert auto_threshold(np.array([], np.float32), 0.0).detail == "no valid pixels"
    assert auto_threshold(np.full(100, 0.2, np.float32), 0.0).source == "fallback"
    # two pixels on either side: split in the middle of the empty bins, not next to one of them
    assert abs(auto_threshold(np.array([-0.6, 0.6]), 0.0).value) < 0.01


def _png(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read()


def _flood_iou(event: str, sensor: str, model: str | ModelRef, bands: dict[str, int]) -> tuple[float, float]:
    from pipeline.change.compare import compare_arrays
    from pipeline.change.transitions import iou

    folder = shared(f"change/flood_ombria_{event}/MASK").parent
    predicted, truth = [], []
    for mask in sorted(folder.glob("MASK/gt_*.png")):
        n = re.findall(r"\d+", mask.name)[0]
        before = _png(folder / sensor / "BEFORE" / f"imbefore_{n}.png")
        after = _png(folder / sensor / "AFTER" / f"imafter_{n}.png")
        ds = compare_arrays(before, after, model, bands=bands)
        predicted.append((ds.change == ds.attrs["class_names"].index("other->water")).to_numpy())
        truth.append(_png(mask)[0] > 127)
    return iou(np.stack(predicted), np.stack(truth)), iou(np.ones((len(truth), 256, 256), bool), np.stack(truth))


@pytest.mark.slow
def test_water_swir_defaults_beat_the_fixed_threshold_on_france_and_hold_albania() -> None:
    """docs/accuracy.md: France 0.257 (fixed 0.243, trivial 0.074), Albania 0.651 (fixed 0.649)."""
    bands = {"swir16": 0, "nir": 1, "red": 2}
    france, trivial = _flood_iou("france", "S2", "water-swir", bands)
    fixed, _ = _flood_iou("france", "S2", ModelRef.of("water-swir", threshold=0), bands)
    assert france > fixed and france > 3 * trivial
    albania, _ = _flood_iou("albania", "S2", "water-swir", bands)
    assert albania >= 0.649


@pytest.mark.slow
@pytest.mark.parametrize(("event", "times"), [("albania", 2), ("france", 8)])
def test_flood_sar_on_real_s1_chips_beats_the_trivial_baseline(event: str, times: int) -> None:
    """docs/accuracy.md: Albania 0.502 against 0.229 for "everything flooded" (0.072 before the two-Gaussian
    test and the darkening rule), France 0.673 against 0.074 (0.602 before)."""
    flood, trivial = _flood_iou(event, "S1", "flood-sar", {"vv": 0})
    assert flood > times * trivial


def test_mixture_d_rejects_one_mode_that_otsu_classes_call_bimodal() -> None:
    from pipeline.models.sar import SAR_RANGE
    from pipeline.threshold import ashman_d, mixture_d

    rng = np.random.default_rng(5)
    one = index_histogram(rng.normal(-12.0, 2.5, 40000), SAR_RANGE)  # land only, in dB
    t = otsu(one, SAR_RANGE)
    assert t is not None and ashman_d(one, t, SAR_RANGE)[0] > 2  # Otsu's truncated classes: "bimodal"
    assert mixture_d(one, t, SAR_RANGE) < 1  # the fitted mixture: one mode
    assert choose_threshold(one, -18.0, SAR_RANGE, "mixture").source == "fallback"
    two = index_histogram(np.concatenate([rng.normal(-20.0, 1.5, 8000), rng.normal(-12.0, 2.5, 32000)]), SAR_RANGE)
    t = otsu(two, SAR_RANGE)
    assert t is not None and mixture_d(two, t, SAR_RANGE) > 3
    choice = choose_threshold(two, -18.0, SAR_RANGE, "mixture")
    assert choice.source == "auto" and -19 < choice.value < -14 and "two-Gaussian" in choice.detail


def test_water_on_both_dates_that_got_darker_is_new_water_permanent_water_is_not() -> None:
    from pipeline.change.transitions import (
        darkened_water_codes,
        no_change_level,
        ratio_histogram,
        transition_code,
        transition_codes,
    )

    before = np.array([[-10.0, -17.0, -17.0, -20.0, -10.0]], np.float32)  # land, wet field, lake, lake, land
    after = np.array([[-8.0, -20.0, -14.0, -17.5, -8.0]], np.float32)  # the second stretch is 2 dB brighter
    c_b, c_a = np.array([[0, 1, 1, 1, 0]], np.uint8), np.array([[0, 1, 1, 1, 0]], np.uint8)
    level = no_change_level(ratio_histogram(before, after, (c_b == 0) & (c_a == 0)))
    assert abs(level - 2.0) < 0.1  # land's log-ratio: what "unchanged" is in this pair
    codes = darkened_water_codes(transition_codes(c_b, c_a, 2), before, after, c_b, c_a, level)
    new = transition_code(0, 1, 2)
    # the field darkened (-3 dB); the lakes moved with the stretch (+3, +2.5 dB: not darker than land did)
    assert codes.tolist() == [[0, new, 0, 0, 0]]
    assert no_change_level(np.zeros(512, np.int64)) == 0.0


def test_flood_sar_change_does_not_depend_on_each_dates_8_bit_stretch() -> None:
    """OMBRIA's S1 chips are min-max stretched per chip and date; re-stretching one date changes nothing much."""
    from pipeline.change.compare import compare_arrays

    folder = shared("change/flood_ombria_albania/MASK").parent
    before = _png(folder / "S1" / "BEFORE" / "imbefore_14.png").astype(np.float32)
    after = _png(folder / "S1" / "AFTER" / "imafter_14.png").astype(np.float32)
    restretched = np.round(20 + after * 0.8)  # another 8-bit rendering of the same backscatter

    def flooded(a: np.ndarray) -> np.ndarray:
        ds = compare_arrays(before, a, "flood-sar", bands={"vv": 0})
        return (ds.change == ds.attrs["class_names"].index("other->water")).to_numpy()

    assert (flooded(after) == flooded(restretched)).mean() > 0.98


def test_flood_sar_units_and_options() -> None:
    from pipeline.errors import ModelError
    from pipeline.models.sar import detect_units, to_db

    db = np.array([[-22.0, -8.0]], np.float32)
    linear = 10 ** (db / 10)
    rendered = np.round((db + 25) / 25 * 255)
    assert detect_units(db) == "db" and detect_units(linear) == "linear" and detect_units(rendered) == "uint8"
    np.testing.assert_allclose(to_db(linear, "linear"), db, atol=1e-4)
    np.testing.assert_allclose(to_db(rendered, "uint8"), db, atol=0.1)
    for values in (db, linear, rendered):  # the same pixels in any units: water on the left, land on the right
        model = load_model(ModelRef.of("flood-sar", threshold=-18, speckle=0))
        probs = model.predict(values[None, None])
        assert probs[0, 1, 0, 0] > 0.9 and probs[0, 1, 0, 1] < 0.1
    assert load_model(ModelRef.of("flood-sar", polarisations="vv,vh")).info.bands == ("vv", "vh")
    with pytest.raises(ModelError, match="polarisations"):
        load_model(ModelRef.of("flood-sar", polarisations="hh"))
    with pytest.raises(ModelError, match="units"):
        load_model(ModelRef.of("flood-sar", units="decibel"))


def test_dndvi_threshold_auto_through_compare_arrays_and_detect_change(tmp_path) -> None:
    """The pair's own threshold on |dNDVI| (NAIP 2009/2020): the same through the array API and the
    windowed change, recorded in the change raster's tags; a pair with no change falls back to 0.2."""
    from pipeline.change.compare import compare_arrays
    from pipeline.config import ChangeConfig, PredictConfig
    from pipeline.products import Tag
    from tests.conftest import REPO
    from workflows.change import detect_change

    data = REPO / "examples" / "data"
    before, after = data / "m_4709963_se_14_1_20090818.tif", data / "m_4709963_se_14_1_20200831.tif"
    ref = ModelRef.of("dndvi", threshold="auto")
    pair = detect_change(before, after, ref, tmp_path, ChangeConfig(predict=PredictConfig(bands="naip"),
                                                                  polygons=False, quicklook=False), progress=False)
    with rasterio.open(pair.change_path) as src:
        tag = src.tags()[Tag.THRESHOLD]
        codes = src.read(1)
    t = float(tag.split()[0])
    assert " auto (Otsu" in tag and 0.2 < t < 0.6
    with rasterio.open(before) as a:
        chip = a.read(window=((0, 256), (0, 256)))
    same = compare_arrays(chip, chip, ref, bands={"red": 0, "nir": 3})  # no change at all: unimodal at 0
    assert (same.change.to_numpy() == 0).all()
    assert (codes[codes != 255] == 0).mean() > 0.6  # more stable pixels than with the fixed 0.2 (42 %)


def test_combine_flood_takes_either_sensor_where_valid() -> None:
    from pipeline.change.compare import combine_flood
    from pipeline.change.transitions import CHANGE_NODATA

    optical = np.array([[1, 0, 1, 0]], bool)
    radar = np.array([[0, 1, 1, 0]], bool)
    optical_valid = np.array([[1, 1, 0, 0]], bool)  # clouds on the right half
    radar_valid = np.array([[1, 1, 1, 0]], bool)
    out = combine_flood(optical, radar, optical_valid, radar_valid)
    np.testing.assert_array_equal(out, [[1, 1, 1, CHANGE_NODATA]])
    assert combine_flood(optical, radar, optical_valid, np.zeros_like(radar_valid))[0, 1] == 0  # radar invalid
