"""The stitcher against a direct computation: whole-array probabilities cut into tiles and blended back."""

import numpy as np
import pytest

from pipeline.inference.predict import TileInput, predict_array, predict_tiles
from pipeline.inference.stitch import CLASS_NODATA, Stitcher, decode_proba, split_core
from pipeline.models.spectral import vegetation_model
from tests.conftest import textured
from tiles.grid import TileGrid


def _scene(shape=(2, 150, 230)):
    veg = textured(shape[1:], seed=3)
    data = np.stack([300 + 1200 * (1 - veg), 600 + 3000 * veg]).astype(np.float32)
    valid = np.ones(shape[1:], bool)
    valid[:40, :60] = False
    return data, valid


def _run(grid, overlap, order, proba_dtype="float32"):
    data, valid = _scene()
    model = vegetation_model()
    tiles = list(grid)
    inputs = []
    for t in tiles:
        r, c = t.read_window.relative_to(grid.bounds)
        inputs.append(TileInput(t, data[:, r, c], valid[r, c]))
    contributions = predict_tiles(model, inputs, grid, overlap, "cosine", proba_dtype)
    stitcher = Stitcher(grid, overlap, 2, proba_dtype)
    classes = np.full(data.shape[1:], 200, np.uint8)
    proba = np.full((2, *data.shape[1:]), -1.0, np.float32)
    written = []
    for i in order:
        for done in stitcher.add(tiles[i], contributions[i]):
            r, c = done.tile.core_window.relative_to(grid.bounds)
            classes[r, c] = done.classes
            proba[:, r, c] = decode_proba(done.proba)
            written.append(done.tile.index)
    assert stitcher.pending == 0
    assert sorted(written) == sorted(t.index for t in tiles)  # each core exactly once
    return classes, proba, predict_array(model, data, valid), valid


@pytest.mark.parametrize("overlap", [0, 4, 8])
def test_any_arrival_order_gives_the_whole_array_result(overlap):
    grid = TileGrid(150, 230, 50, 8)
    n = len(grid)
    for order in (range(n), reversed(range(n)), np.random.default_rng(0).permutation(n)):
        classes, proba, expected, valid = _run(grid, overlap, list(order))
        np.testing.assert_allclose(proba[:, valid], expected[:, valid], atol=1e-6)
        assert np.isnan(proba[:, ~valid]).all() and (classes[~valid] == CLASS_NODATA).all()
        np.testing.assert_array_equal(classes[valid], np.argmax(expected[:, valid], axis=0))


def test_uint8_storage_rounds_to_1_254():
    grid = TileGrid(150, 230, 64, 8)
    _, proba, expected, valid = _run(grid, 4, range(len(grid)), "uint8")
    assert np.abs(proba[:, valid] - expected[:, valid]).max() <= 0.5 / 254 + 1e-6


def test_interior_is_core_minus_overlap_on_shared_sides():
    grid = TileGrid(150, 230, 50, 8)
    corner, middle = grid.tile(0, 0), grid.tile(1, 1)
    assert split_core(corner, grid, 4) == type(corner.core_window)(0, 0, 46, 46)
    assert split_core(middle, grid, 4) == type(middle.core_window)(54, 54, 42, 42)
    assert split_core(middle, grid, 25) is None


def test_model_calls_hold_at_most_max_batch_tiles():
    data, valid = _scene()
    grid = TileGrid(150, 230, 50, 8)
    inputs = []
    for t in grid:
        r, c = t.read_window.relative_to(grid.bounds)
        inputs.append(TileInput(t, data[:, r, c], valid[r, c]))
    model = vegetation_model()
    calls = []

    class Counting:
        info = model.info

        def predict(self, batch):
            calls.append(len(batch))
            return model.predict(batch)

    stacked = predict_tiles(Counting(), inputs, grid, 4, "cosine", "float32")
    assert max(calls) > 1  # same-shaped tiles share a call by default
    calls.clear()
    single = predict_tiles(Counting(), inputs, grid, 4, "cosine", "float32", max_batch=1)
    assert set(calls) == {1} and len(calls) == sum(c is not None for c in single)
    for a, b in zip(stacked, single, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a.proba, b.proba)
