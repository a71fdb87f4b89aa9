"""Change arrays: transition codes, index differences, the alert state machine (against a scalar reference)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.change.transitions import (
    ALERT_HIGH,
    ALERT_LOW,
    ALERT_NODATA,
    ALERT_NONE,
    CHANGE_NODATA,
    DIFFERENCE_MODELS,
    accumulate_alerts,
    flood_change,
    iou,
    swap_codes,
    transition_code,
    transition_codes,
    transition_names,
    watch_matrix,
)
from pipeline.errors import ConfigError


def test_transition_names_and_codes_agree() -> None:
    names = transition_names(("forest", "cleared", "water"))
    assert names[0] == "no change"
    assert len(names) == 1 + 3 * 2
    for i, a in enumerate(("forest", "cleared", "water")):
        for j, b in enumerate(("forest", "cleared", "water")):
            assert names[transition_code(i, j, 3)] == ("no change" if i == j else f"{a}->{b}")


def test_nodata_on_either_date_is_never_change_nor_no_change() -> None:
    before = np.array([[0, 1, 255, 0]], dtype=np.uint8)
    after = np.array([[1, 1, 0, 255]], dtype=np.uint8)
    codes = transition_codes(before, after, 2)
    assert codes.tolist() == [[transition_code(0, 1, 2), 0, CHANGE_NODATA, CHANGE_NODATA]]


def test_swapping_dates_swaps_loss_and_gain() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4, (40, 50)).astype(np.uint8)
    b = rng.integers(0, 4, (40, 50)).astype(np.uint8)
    a[rng.random(a.shape) < 0.1] = 255
    forward, backward = transition_codes(a, b, 4), transition_codes(b, a, 4)
    assert np.array_equal(swap_codes(forward, 4), backward)
    names = transition_names(("a", "b", "c", "d"))
    loss, gain = names.index("b->a"), names.index("a->b")
    assert np.count_nonzero(forward == loss) == np.count_nonzero(backward == gain)


def test_watch_matrix_parses_transitions_and_names_bad_ones() -> None:
    names = ("other", "vegetation", "water")
    m = watch_matrix(names, "vegetation->*")
    assert m[1].tolist() == [True, False, True] and not m[0].any() and not m[2].any()
    assert np.array_equal(watch_matrix(names, None), ~np.eye(3, dtype=bool))
    with pytest.raises(ConfigError, match="forest->other"):
        watch_matrix(names, "forest->other")


@pytest.mark.parametrize(
    ("d", "expected"),
    [(-0.4, "enhanced regrowth high"), (-0.2, "enhanced regrowth low"), (0.0, "no change"),
     (0.2, "low severity"), (0.3, "moderate-low severity"), (0.5, "moderate-high severity"),
     (0.9, "high severity")],
)
def test_dnbr_bins_follow_usgs_severity_classes(d: float, expected: str) -> None:
    model = DIFFERENCE_MODELS["dnbr"]
    codes, conf = model.classify(np.full((1, 1), d, np.float32), np.ones((1, 1), bool))
    assert model.class_names[codes[0, 0]] == expected
    assert 0.5 <= conf[0, 0] <= 1.0


def test_dndvi_difference_from_band_values() -> None:
    model = DIFFERENCE_MODELS["dndvi"]
    before = np.array([[[100.0]], [[500.0]]], np.float32)  # red, nir: NDVI 0.667
    after = np.array([[[400.0]], [[420.0]]], np.float32)  # NDVI 0.024
    diff = model.difference(before, after)
    assert diff[0, 0] == pytest.approx(400 / 600 - 20 / 820, abs=1e-6)
    codes, _ = model.classify(diff, np.ones((1, 1), bool))
    assert model.class_names[codes[0, 0]] == "vegetation loss"
    codes, conf = model.classify(diff, np.zeros((1, 1), bool))
    assert codes[0, 0] == CHANGE_NODATA and np.isnan(conf[0, 0])


# ------------------------------------------------------------------------------------------------- alerts


def _reference_alerts(series: list[int], days: list[int], watch: np.ndarray, confirm: int, nodata: int = 255):
    """One pixel, plain Python, straight from the documented rules."""
    ref = None
    first = count = last = 0
    seen = False
    for cls, day in zip(series, days, strict=True):
        if cls == nodata:
            continue
        seen, last = True, day
        if ref is not None and watch[ref, cls]:
            if count == 0:
                first = day
            count += 1
        elif ref is not None and 0 < count < confirm and cls == ref:
            count, first = 0, 0
        if count == 0:
            ref = cls
    if not seen:
        return (ALERT_NODATA,) * 4
    conf = ALERT_HIGH if count >= confirm else ALERT_LOW if count else ALERT_NONE
    return first, count, conf, last


def test_alerts_match_a_scalar_reference_on_random_stacks() -> None:
    rng = np.random.default_rng(11)
    t, h, w = 7, 30, 40
    stack = rng.choice([0, 0, 0, 1, 2, 255], size=(t, h, w)).astype(np.uint8)
    stack[:, :5] = 0  # some stable pixels
    days = sorted(rng.choice(np.arange(1000, 20000), t, replace=False).tolist())
    watch = watch_matrix(("forest", "cleared", "water"), "forest->cleared,forest->water")
    for confirm in (1, 2, 3):
        layers = accumulate_alerts(stack, days, watch, confirm=confirm)
        for r in range(0, h, 3):
            for c in range(w):
                expected = _reference_alerts(stack[:, r, c].tolist(), days, watch, confirm)
                got = (layers.first_day[r, c], layers.count[r, c], layers.confidence[r, c], layers.last_day[r, c])
                assert tuple(int(x) for x in got) == expected, (r, c, stack[:, r, c].tolist())
        assert not layers.count[:5].any()


def test_empty_or_cloudy_date_creates_no_alert() -> None:
    days = [100, 200, 300, 400]
    stack = np.zeros((4, 6, 6), np.uint8)
    stack[1] = 255  # an empty date
    stack[2, :3] = 255  # a cloud, masked
    stack[3, 5, 5] = 1  # a real change on the last date
    layers = accumulate_alerts(stack, days, ~np.eye(2, dtype=bool))
    assert layers.count.sum() == 1 and layers.first_day[5, 5] == 400 and layers.confidence[5, 5] == ALERT_LOW
    assert (layers.last_day == 400).all()


def test_one_date_false_alarm_is_withdrawn_and_confirmed_alert_stays() -> None:
    days = [1, 2, 3, 4]
    stack = np.array([[0, 1, 0, 0], [0, 1, 1, 0]], np.uint8).T[:, :, None]  # (T, 2, 1)
    layers = accumulate_alerts(stack, days, ~np.eye(2, dtype=bool), confirm=2)
    assert layers.count[:, 0].tolist() == [0, 2]
    assert layers.first_day[:, 0].tolist() == [0, 2]
    assert layers.first_index[:, 0].tolist() == [0, 2]
    assert layers.confidence[:, 0].tolist() == [ALERT_NONE, ALERT_HIGH]


def test_never_observed_is_nodata_not_no_alert() -> None:
    stack = np.full((3, 2, 2), 255, np.uint8)
    stack[:, 0, 0] = 1
    layers = accumulate_alerts(stack, [1, 2, 3], ~np.eye(2, dtype=bool))
    assert layers.confidence[0, 0] == ALERT_NONE and layers.confidence[1, 1] == ALERT_NODATA


def test_flood_change_and_iou() -> None:
    before = np.array([[1, 0, 0, 0]], bool)
    after = np.array([[1, 1, 0, 1]], bool)
    valid = np.array([[1, 1, 1, 0]], bool)
    flood = flood_change(before, after, valid)
    assert flood.tolist() == [[0, 1, 0, CHANGE_NODATA]]
    assert iou(flood == 1, np.array([[0, 1, 1, 0]], bool)) == pytest.approx(0.5)
    assert iou(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
