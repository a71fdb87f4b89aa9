import numpy as np
import pytest

from tiles.blend import blend_weights, blend_window
from tiles.grid import TileGrid


def _summed(grid: TileGrid, overlap: int, method: str) -> np.ndarray:
    total = np.zeros((grid.height, grid.width))
    for t in grid:
        window = blend_window(t, grid, 0 if method == "none" else overlap)
        r, c = window.relative_to(grid.bounds)
        total[r, c] += blend_weights(t, grid, overlap, method)
    return total


@pytest.mark.parametrize("method", ["cosine", "linear", "none"])
@pytest.mark.parametrize(("height", "width", "tile", "halo", "overlap"),
                         [(300, 500, 128, 16, 8), (256, 300, 64, 32, 32), (90, 90, 40, 4, 4)])
def test_weights_are_a_partition_of_unity(method, height, width, tile, halo, overlap):
    grid = TileGrid(height, width, tile, halo)
    np.testing.assert_allclose(_summed(grid, overlap, method), 1.0, atol=1e-6)


def test_own_core_weight_is_positive_and_ramp_stays_inside_overlap():
    grid = TileGrid(300, 300, 100, 20)
    t = grid.tile(1, 1)
    w = blend_weights(t, grid, 10, "cosine")
    window = blend_window(t, grid, 10)
    assert window.height == 120 and window.width == 120
    r, c = t.core_window.relative_to(window)
    assert w[r, c].min() >= 0.25 - 1e-6  # worst case: a core corner, 1/2 x 1/2
    assert w[0].max() < 0.01 and w[:, 0].max() < 0.01  # fades out towards the blend window edge
    assert w[60, 60] == pytest.approx(1.0)


def test_scene_edges_get_no_ramp():
    grid = TileGrid(100, 100, 60, 10)
    w = blend_weights(grid.tile(0, 0), grid, 10, "cosine")
    assert w[0, 0] == pytest.approx(1.0)  # top-left corner of the scene: nothing beyond it


def test_overlap_larger_than_halo_is_refused():
    grid = TileGrid(100, 100, 50, 4)
    with pytest.raises(ValueError, match="larger than the halo"):
        blend_window(grid.tile(0, 0), grid, 8)
