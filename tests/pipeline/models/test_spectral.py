"""Built-in spectral models: the index, its direction, documented defaults and user overrides."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.models.contract import BUILTIN_MODELS, ModelRef, SegmentationModel
from pipeline.models.loader import load_model
from pipeline.models.spectral import SPECTRAL_DEFAULTS, SpectralIndexModel, normalized_difference

# name -> (value of band 0, value of band 1) for a pixel that is clearly the target class
TARGET_PIXEL = {
    "vegetation": (300.0, 3000.0),  # red low, nir high
    "water": (900.0, 200.0),  # green above nir
    "water-mndwi": (900.0, 100.0),  # green above swir16
    "burn": (800.0, 1500.0),  # nir below swir22: NBR < 0
    "bare": (1500.0, 2500.0),  # nir below swir16: NDMI < 0
}
OTHER_PIXEL = {"vegetation": (3000.0, 300.0), "water": (200.0, 900.0), "water-mndwi": (100.0, 900.0),
               "burn": (3000.0, 1000.0), "bare": (3000.0, 1000.0)}


def test_registry_holds_every_spectral_model():
    assert set(SPECTRAL_DEFAULTS) <= set(BUILTIN_MODELS)
    assert {"vegetation", "water", "water-mndwi", "burn", "bare"} <= set(BUILTIN_MODELS)


@pytest.mark.parametrize("name", sorted(TARGET_PIXEL))
def test_target_and_background_pixels(name):
    model = load_model(ModelRef.of(name))
    assert isinstance(model, SegmentationModel) and model.info.num_classes == 2
    target = TARGET_PIXEL[name]
    other = OTHER_PIXEL[name]
    batch = np.array([[[[target[0], other[0]]], [[target[1], other[1]]]]], dtype=np.float32)  # (1, 2, 1, 2)
    probs = model.predict(batch)
    assert probs.shape == (1, 2, 1, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert probs[0, 1, 0, 0] > 0.99 and probs[0, 1, 0, 1] < 0.01


@pytest.mark.parametrize("name", sorted(SPECTRAL_DEFAULTS))
def test_probability_is_a_soft_step_at_the_threshold(name):
    """Independent reference: the index computed here in float64 and the documented formula."""
    threshold, above = SPECTRAL_DEFAULTS[name]
    rng = np.random.default_rng(1)
    a, b = rng.uniform(1, 4000, (2, 1, 32, 32))
    model = load_model(ModelRef.of(name, threshold=threshold))  # the water models' default is auto
    index = (a - b) / (a + b)
    if name == "vegetation":  # bands (red, nir): NDVI = (nir - red) / (nir + red)
        index = -index
    margin = (index - threshold) if above else (threshold - index)
    expected = 1.0 / (1.0 + np.exp(-margin / 0.05))
    got = model.predict(np.stack([a, b], axis=1).astype(np.float32))[:, 1]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_threshold_and_softness_are_options():
    batch = np.array([[[[1000.0]], [[1500.0]]]], dtype=np.float32)  # NDVI = 0.2
    default = load_model(ModelRef.of("vegetation")).predict(batch)[0, 1, 0, 0]
    lowered = load_model(ModelRef.of("vegetation", threshold=0.1)).predict(batch)[0, 1, 0, 0]
    assert default < 0.5 < lowered
    hard = load_model(ModelRef.of("vegetation", threshold=0.1, softness=1e-9)).predict(batch)[0, 1, 0, 0]
    assert hard == 1.0  # a tiny softness saturates without overflow warnings (warnings are errors)
    assert "> 0.1" in load_model(ModelRef.of("vegetation", threshold=0.1)).info.description


def test_runtime_options_are_ignored_but_unknown_options_refused():
    assert load_model(ModelRef.of("water", precision="bf16", compile=True)).info.name == "water"
    with pytest.raises(ModelError, match="model water: unknown option.*treshold; it accepts threshold, softness"):
        load_model(ModelRef.of("water", treshold=0.2))
    with pytest.raises(ModelError, match="threshold must be a number or auto"):
        load_model(ModelRef.of("burn", threshold="low"))
    with pytest.raises(ModelError, match="outside the index range"):
        load_model(ModelRef.of("bare", threshold=2))


def test_normalized_difference_is_zero_where_both_bands_are():
    out = normalized_difference(np.array([0.0, 3.0], np.float32), np.array([0.0, 1.0], np.float32))
    np.testing.assert_array_equal(out, [0.0, 0.5])


def test_spectral_model_checks_band_count():
    model = load_model(ModelRef.of("vegetation"))
    assert isinstance(model, SpectralIndexModel)
    with pytest.raises(ModelError, match=r"expects \(N, 2, H, W\)"):
        model.predict(np.zeros((1, 3, 4, 4), np.float32))
