import numpy as np
import pytest

from tiles.grid import PixelWindow, TileGrid, aligned_tile_size, plan_tiles


@pytest.mark.parametrize(("height", "width", "tile", "halo"), [(300, 500, 128, 16), (256, 256, 128, 0),
                                                               (1, 1, 64, 8), (777, 333, 100, 50), (50, 70, 512, 32)])
def test_cores_cover_every_pixel_exactly_once(height, width, tile, halo):
    grid = plan_tiles(height, width, tile, halo)
    count = np.zeros((height, width), dtype=int)
    for t in grid:
        r, c = t.core_window.relative_to(grid.bounds)
        count[r, c] += 1
        # the read window is the core grown by the halo, clipped to the scene
        assert t.read_window.intersection(t.core_window) == t.core_window
        assert t.read_window.row_off == max(0, t.core_window.row_off - halo)
        assert t.read_window.col_end == min(width, t.core_window.col_end + halo)
    assert (count == 1).all()
    assert len(list(grid)) == len(grid) == -(-height // tile) * -(-width // tile)


def test_neighbours_and_tiles_touching():
    grid = TileGrid(300, 500, 100, 10)
    centre = grid.tile(1, 2)
    assert {t.index for t in grid.neighbours(centre)} == {(r, c) for r in (0, 1, 2) for c in (1, 2, 3)}
    assert {t.index for t in grid.neighbours(grid.tile(0, 0))} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    touching = {t.index for t in grid.tiles_touching(PixelWindow(95, 195, 10, 10))}
    assert touching == {(0, 1), (0, 2), (1, 1), (1, 2)}


def test_window_relative_to_refuses_outside():
    with pytest.raises(ValueError):
        PixelWindow(0, 0, 10, 10).relative_to(PixelWindow(1, 1, 5, 5))


@pytest.mark.parametrize(("tile", "bh", "bw", "expected"), [(512, 256, 256, 512), (500, 256, 256, 512),
                                                            (300, 128, 128, 256), (512, 1, 1, 512),
                                                            (512, 16, 1, 512), (100, 512, 512, 100),
                                                            (700, 256, 512, 512)])
def test_aligned_tile_size(tile, bh, bw, expected):
    assert aligned_tile_size(tile, bh, bw) == expected


def test_invalid_grids_are_refused():
    with pytest.raises(ValueError, match="tile size"):
        TileGrid(10, 10, 0, 0)
    with pytest.raises(ValueError, match="halo"):
        TileGrid(10, 10, 5, -1)
