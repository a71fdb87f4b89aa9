"""The core engine end to end on a real LocalCluster: tiled runs against whole-image runs, COG validity,
georeferencing, nodata, and the errors a user sees."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

import workflows.scene
from pipeline.config import PredictConfig
from pipeline.inference.predict import predict_array
from pipeline.inference.read import open_scene, read_window
from pipeline.models.contract import ModelRef
from pipeline.models.loader import load_model
from pipeline.products import CLASS_NODATA
from tests.models import small_convnet, unet
from workflows.scene import plan_scene, predict_scene


def whole_image(path, ref, indexes):
    meta = open_scene(path)
    data, valid = read_window(meta, meta.bounds, indexes)
    return predict_array(load_model(ref), data, valid), valid


def read_proba(path):
    with rasterio.open(path) as src:
        return src.read()


@pytest.mark.slow
@pytest.mark.parametrize(("tile_size", "halo", "overlap"), [(64, 0, 0), (100, 8, 4), (128, 16, 16), (96, 24, None)])
def test_ndvi_tiled_equals_whole_image(make_geotiff, tmp_path, dask_client, tile_size, halo, overlap):
    scene = make_geotiff(shape=(4, 300, 500), nodata=0, nodata_box=(0, 40, 0, 90))  # 300 x 500: no multiple
    config = PredictConfig(bands="naip", tile_size=tile_size, halo=halo, overlap=overlap, proba_dtype="float32",
                           align_to_blocks=False)
    result = predict_scene(plan_scene(scene, "vegetation", config), tmp_path / "out", client=dask_client,
                           progress=False)
    expected, valid = whole_image(scene, ModelRef.of("vegetation"), (1, 4))
    got = read_proba(result.proba_path)
    assert np.array_equal(np.isnan(got[0]), ~valid)
    np.testing.assert_allclose(got[:, valid], expected[:, valid], atol=1e-6, rtol=0)
    with rasterio.open(result.classes_path) as src:
        classes = src.read(1)
    assert (classes[~valid] == CLASS_NODATA).all()
    np.testing.assert_array_equal(classes[valid], np.argmax(expected[:, valid], axis=0))


@pytest.mark.slow
@pytest.mark.parametrize(("tile_size", "halo", "overlap"), [(64, 8, 4), (100, 6, 4), (128, 16, 12)])
def test_convnet_tiled_equals_whole_image(make_geotiff, tmp_path, dask_client, tile_size, halo, overlap):
    """Receptive field radius 2 px: exact as long as halo - overlap >= 2."""
    scene = make_geotiff(shape=(4, 230, 310))
    ref = ModelRef.from_factory(small_convnet, bands=("red", "nir"))
    config = PredictConfig(bands="naip", tile_size=tile_size, halo=halo, overlap=overlap, proba_dtype="float32")
    result = predict_scene(plan_scene(scene, ref, config), tmp_path / "out", client=dask_client, progress=False)
    expected, _ = whole_image(scene, ref, (1, 4))
    np.testing.assert_allclose(read_proba(result.proba_path), expected, atol=1e-6, rtol=0)


def seam_errors(diff: np.ndarray, tile_size: int, band: int = 8) -> tuple[float, float]:
    rows, cols = np.indices(diff.shape)
    near = ((rows % tile_size < band) | (rows % tile_size >= tile_size - band)) & (rows >= band) & (
        rows < diff.shape[0] - band)
    near |= ((cols % tile_size < band) | (cols % tile_size >= tile_size - band)) & (cols >= band) & (
        cols < diff.shape[1] - band)
    return float(diff[near].mean()), float(diff[~near].mean())


@pytest.mark.slow
def test_unet_seam_error_with_blending(tmp_path, dask_client):
    """mean |tiled - whole| within 8 px of tile borders must stay within 1.5x of the interior figure."""
    scene = tmp_path / "naip_crop.tif"
    from tests.conftest import NAIP_2020

    with rasterio.open(NAIP_2020) as src:
        window = rasterio.windows.Window(100, 100, 448, 384)
        profile = src.profile | {"width": 448, "height": 384, "transform": src.window_transform(window)}
        with rasterio.open(scene, "w", **profile) as dst:
            dst.write(src.read(window=window))
    ref = ModelRef.from_factory(unet)
    expected, valid = whole_image(scene, ref, (1, 2, 3, 4))
    figures = {}
    for blend in ("cosine", "none"):
        config = PredictConfig(bands="naip", tile_size=128, halo=32, overlap=16, blend=blend, proba_dtype="float32")
        result = predict_scene(plan_scene(scene, ref, config), tmp_path / blend, client=dask_client, progress=False)
        diff = np.abs(read_proba(result.proba_path)[1] - expected[1])
        figures[blend] = seam_errors(diff, 128)
    print(f"seam error (border, interior): blended {figures['cosine']}, hard crop {figures['none']}")
    border, interior = figures["cosine"]
    assert border <= 1.5 * interior
    assert border < figures["none"][0]


@pytest.mark.slow
def test_outputs_are_georeferenced_cogs_with_nodata(make_geotiff, tmp_path, dask_client):
    scene = make_geotiff(shape=(4, 333, 257), dtype="uint16", nodata=0, nodata_box=(100, 333, 0, 257),
                         blocksize=64)
    config = PredictConfig(bands="naip", tile_size=64, halo=8)
    result = predict_scene(plan_scene(scene, "vegetation", config), tmp_path / "out", client=dask_client,
                           progress=False)
    # pixel rows 100..333 hold only nodata: tiles whose core lies there are read but not run
    assert result.tiles_skipped == 4 * 5  # tile rows 2..5 (from row 128 on) x 5 columns
    with rasterio.open(scene) as src:
        crs, transform, shape = src.crs, src.transform, src.shape
    for path in (result.classes_path, result.proba_path):
        assert cog_validate(str(path), quiet=True)[0], path
        with rasterio.open(path) as out:
            assert out.crs == crs and out.transform == transform and out.shape == shape
            masks = out.read_masks(1)
            assert (masks[100:] == 0).all() and (masks[:100] > 0).all()
    with rasterio.open(result.classes_path) as out:
        assert set(np.unique(out.read(1)[:100])) <= {0, 1}
        assert out.tags()["SCENEWATCH_CLASSES"] == "other,vegetation"
    with rasterio.open(result.proba_path) as out:
        p = out.read(masked=True).astype(float) * out.scales[0]
        np.testing.assert_allclose(p.sum(axis=0)[:100], 1.0, atol=2 / 254)


@pytest.mark.slow
def test_model_is_built_once_per_worker_not_per_tile(make_geotiff, tmp_path, dask_client):
    from tests import models

    seed = 12345
    ref = ModelRef.from_factory(models.counted_convnet, seed=seed, bands=("red", "nir"))
    config = PredictConfig(bands="naip", tile_size=40, halo=4, batch_size=1)
    plan = plan_scene(make_geotiff(shape=(4, 200, 200)), ref, config)
    result = predict_scene(plan, tmp_path, client=dask_client, progress=False)
    assert result.tiles_planned == 25
    per_worker = dask_client.run(models.builds, seed)
    assert sum(per_worker.values()) >= 1 and max(per_worker.values()) == 1, per_worker


@pytest.mark.slow
def test_the_scene_header_is_opened_once_per_run(make_geotiff, tmp_path, dask_client, monkeypatch):
    """plan_scene opens the header; the plan carries it, so predict_scene never opens it again here."""
    calls = []

    def counting_open_scene(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("path"))
        return open_scene(*args, **kwargs)

    monkeypatch.setattr(workflows.scene, "open_scene", counting_open_scene)
    monkeypatch.setattr("pipeline.inference.read.open_scene", counting_open_scene)
    scene = make_geotiff(shape=(4, 96, 128))
    plan = plan_scene(scene, "vegetation", PredictConfig(bands="naip", tile_size=64, halo=8))
    assert calls == [scene]
    result = predict_scene(plan, tmp_path / "out", client=dask_client, progress=False)
    assert calls == [scene]
    assert result.classes_path.exists() and result.tiles_planned == len(plan.grid)


def _preloaded(module: str) -> bool:
    """Whether this process holds ``module``, once its preload thread (if any) is done."""
    import sys
    import threading

    for thread in threading.enumerate():
        if thread.name == "scenewatch-preload":
            thread.join()
    return module in sys.modules


@pytest.mark.slow
def test_preload_imports_the_next_pass_modules_in_every_worker_and_here(make_geotiff, tmp_path, dask_client):
    import sys

    probe = "tests.workflows.preload_probe"
    assert probe not in sys.modules and not any(dask_client.run(_preloaded, probe).values())
    plan = plan_scene(make_geotiff(shape=(4, 96, 128)), "vegetation", PredictConfig(bands="naip", tile_size=64))
    predict_scene(plan, tmp_path / "out", client=dask_client, progress=False, preload=(probe, "no.such.module"))
    # each worker's preload task runs before a task of lower priority pinned to the same worker
    workers = sorted(dask_client.scheduler_info(n_workers=-1)["workers"])
    seen = dask_client.gather([dask_client.submit(_preloaded, probe, workers=[w], priority=-2, pure=False)
                               for w in workers])
    assert seen == [True] * len(workers)
    assert _preloaded(probe)  # a module that cannot be imported is left for the next pass to report


def test_batches_cover_every_tile_once_in_stripes():
    from tiles.grid import plan_tiles
    from workflows.scene import STRIPE_TILES, _batches

    grid = plan_tiles(700, 1100, 100, 16)  # 7 rows x 11 columns: stripes of 4, 4 and 3 columns
    for size in (1, 3, 8):
        for lanes in (1, 2, 5):
            batches = list(_batches(grid, size, lanes))
            tiles = [t for _, b in batches for t in b]
            assert sorted((t.row, t.col) for t in tiles) == sorted((t.row, t.col) for t in grid)
            assert all(len({t.row for t in b}) == 1 and len(b) <= size for _, b in batches)
            stripe = max(STRIPE_TILES, size)
            # each stripe is walked top to bottom, in one lane; lanes take stripes side by side
            for s in {t.col // stripe for t in tiles}:
                mine = [(lane, t) for lane, b in batches for t in b if t.col // stripe == s]
                assert [t.row for _, t in mine] == sorted(t.row for _, t in mine)
                assert {lane for lane, _ in mine} == {s % lanes}
            # stripes of a later group of lanes start after the earlier group is done
            groups = [t.col // stripe // lanes for t in tiles]
            assert groups == sorted(groups)


def test_a_scene_wider_than_its_lanes_is_walked_band_by_band():
    """Groups of stripes take turns a band of rows at a time, so that the results at a border between groups
    wait for at most a band; each stripe is still walked top to bottom in one lane."""
    from tiles.grid import plan_tiles
    from workflows.scene import BAND_PX, _batches

    grid = plan_tiles(700, 1100, 100, 16)  # 7 rows x 11 columns: stripes of 4, 4 and 3 columns
    assert list(_batches(grid, 4, 2)) == list(_batches(grid, 4, 2, band=grid.rows))  # 7 rows: one band
    assert BAND_PX // grid.tile_size >= grid.rows
    batches = list(_batches(grid, 4, 2, band=3))
    tiles = [t for _, b in batches for t in b]
    assert sorted((t.row, t.col) for t in tiles) == sorted((t.row, t.col) for t in grid)
    assert [t.row // 3 for t in tiles] == sorted(t.row // 3 for t in tiles)  # band by band
    for band in range(3):  # within a band, the first group (stripes 0 and 1) and then the second
        groups = [t.col // 4 // 2 for t in tiles if t.row // 3 == band]
        assert groups == sorted(groups)
    for s in range(3):
        mine = [(lane, t) for lane, b in batches for t in b if t.col // 4 == s]
        assert [t.row for _, t in mine] == sorted(t.row for _, t in mine)
        assert {lane for lane, _ in mine} == {s % 2}
    # a scene one group wide is walked top to bottom whatever the band
    narrow = plan_tiles(700, 800, 100, 16)
    assert list(_batches(narrow, 4, 2, band=2)) == list(_batches(narrow, 4, 2, band=narrow.rows))


@pytest.mark.slow
def test_bands_leave_the_products_as_a_full_height_walk_makes_them(make_geotiff, tmp_path, dask_client,
                                                                   monkeypatch):
    """A scene three groups of stripes wide (18 tile columns, stripes of 4, 2 workers), walked a tile row at a
    time or whole: the same probabilities and classes, bit for bit (a piece blends its tiles in one order)."""
    scene = make_geotiff(shape=(4, 230, 1100))
    ref = ModelRef.from_factory(small_convnet, bands=("red", "nir"))
    config = PredictConfig(bands="naip", tile_size=64, halo=8, overlap=6, proba_dtype="float32")
    got = {}
    for band_px in (64, 1 << 20):
        monkeypatch.setattr(workflows.scene, "BAND_PX", band_px)
        result = predict_scene(plan_scene(scene, ref, config), tmp_path / str(band_px), client=dask_client,
                               progress=False)
        with rasterio.open(result.classes_path) as src:
            got[band_px] = read_proba(result.proba_path), src.read()
    assert np.array_equal(got[64][0], got[1 << 20][0]) and np.array_equal(got[64][1], got[1 << 20][1])


def test_stripes_are_at_least_a_task_wide():
    from workflows.scene import STRIPE_TILES, TILES_PER_TASK, _stripe_tiles

    assert _stripe_tiles(2) == STRIPE_TILES
    assert _stripe_tiles(8) == 8  # a batch wider than a stripe is one stripe
    assert _stripe_tiles(TILES_PER_TASK) == TILES_PER_TASK  # a task is one row of a stripe

    from tiles.grid import plan_tiles

    # wider where the columns split into whole groups of equal stripes, one per lane, up to MAX_STRIPE_PX
    assert _stripe_tiles(4, plan_tiles(8192, 8192, 512, 32), 2) == 8
    assert _stripe_tiles(4, plan_tiles(16384, 16384, 512, 32), 2) == 8
    assert _stripe_tiles(4, plan_tiles(4096, 4096, 512, 32), 2) == 4  # 2 stripes of 4 already
    assert _stripe_tiles(4, plan_tiles(12288, 12288, 512, 32), 2) == 4  # 3 stripes of 8 would leave a lane idle
    assert _stripe_tiles(4, plan_tiles(16384, 16384, 1024, 32), 2) == 4  # 4096 px already
    assert _stripe_tiles(4, plan_tiles(8192, 8192, 512, 32), 1) == 4


@pytest.mark.slow
def test_a_run_whose_cog_cannot_be_written_leaves_no_part_file(make_geotiff, tmp_path, dask_client):
    """Workers write the pieces beside the output; an assembly that fails (here: a folder where the classes
    COG goes) is one OutputError, and neither the pieces nor a temporary COG stay behind."""
    from pipeline.errors import OutputError

    out = tmp_path / "out"
    (out / "scene.classes.tif").mkdir(parents=True)
    plan = plan_scene(make_geotiff("scene.tif", shape=(4, 700, 600)), "vegetation",
                      PredictConfig(bands="naip", tile_size=128, halo=8))
    with pytest.raises(OutputError, match="scene.classes.tif"):
        predict_scene(plan, out, client=dask_client, progress=False)
    assert sorted(p.name for p in out.iterdir()) in (["scene.classes.tif"], ["scene.classes.tif",
                                                                              "scene.proba.tif"])


@pytest.mark.slow
@pytest.mark.parametrize("proba_dtype", ["uint8", "float32"])
def test_cogs_written_by_workers_are_the_single_writers_files(make_geotiff, tmp_path, dask_client, proba_dtype):
    """Several pieces and two overview levels (1300 x 1100 px, tiles of 256, pieces of 512 x 1024): each
    product is byte for byte the COG that the single writer of the client (CogWriter, window by window,
    then GDAL's COG copy) made from the same pixels, overviews included; the run leaves only the COGs."""
    from pipeline.inference.raster import CogWriter
    from pipeline.inference.read import SceneMeta
    from tiles.grid import PixelWindow

    scene = make_geotiff(shape=(4, 1300, 1100), nodata=0, nodata_box=(0, 200, 0, 300))
    config = PredictConfig(bands="naip", tile_size=256, halo=16, proba_dtype=proba_dtype)
    result = predict_scene(plan_scene(scene, "vegetation", config), tmp_path / "out", client=dask_client,
                           progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scene.classes.tif", "scene.proba.tif"]
    assert result.tiles_skipped == 0
    for path, resampling in ((result.classes_path, "mode"), (result.proba_path, "average")):
        assert cog_validate(str(path), quiet=True)[0], path
        with rasterio.open(path) as src:
            data, profile, tags = src.read(), src.profile, src.tags()
            descriptions, scales, colormap = src.descriptions, src.scales, src.colormap(1) if src.count == 1 else None
        meta = SceneMeta(path="mem", crs=profile["crs"], transform=profile["transform"], height=1300, width=1100,
                         count=1, dtype="uint8", nodata=None, block_height=256, block_width=256)
        tags.pop("AREA_OR_POINT")
        reference = tmp_path / f"reference.{path.name}"
        with CogWriter(reference, meta, count=data.shape[0], dtype=data.dtype.name, nodata=profile["nodata"],
                       resampling=resampling, descriptions=list(descriptions), colormap=colormap,
                       scales=list(scales) if proba_dtype == "uint8" and colormap is None else None,
                       tags=tags) as writer:
            for tile in result.grid:
                w = tile.core_window
                writer.write(PixelWindow(w.row_off, w.col_off, w.height, w.width),
                             data[:, w.row_off:w.row_end, w.col_off:w.col_end])
            writer.finish()
        assert path.read_bytes() == reference.read_bytes(), path.name


def test_pieces_are_whole_blocks_a_tile_high_and_a_stripe_wide_and_each_tile_is_read_by_its_neighbours():
    from pipeline.inference.stitch import Stitcher
    from tiles.grid import plan_tiles
    from workflows.scene import _batches, _piece_plan, _piece_size

    grid = plan_tiles(2500, 3100, 300, 16)
    piece = _piece_size(grid, 4, 512)
    assert piece == (512, 1536)
    batches = [tiles for _, tiles in _batches(grid, 4, 2)]
    stitcher = Stitcher(grid, 8, 2, "uint8")
    from pipeline.inference.assemble import CogSpec

    spec = CogSpec(crs=None, transform=rasterio.transform.from_origin(0, 0, 1, 1), height=2500, width=3100, count=1,
                   dtype="uint8", nodata=255)
    levels, readers = _piece_plan(grid, {"classes": spec}, stitcher, batches, piece)
    assert len(levels) == len(spec.factors) + 1 and len(levels[-1]) == 1  # one piece at the top
    for level, jobs in enumerate(levels):
        rows, cols = spec.level_shape(level)
        assert sum(job.window.size for job in jobs.values()) == rows * cols  # they tile the level
        assert all(job.window.height <= piece[0] and job.window.width <= piece[1] for job in jobs.values())
    for job in levels[0].values():  # a piece reads the batches of every tile that reaches its cores
        needed = {n.index for t in grid.tiles_touching(job.window) for n in stitcher.covered_cores(t)}
        read = {t.index for b in job.inputs for t in batches[b]}
        assert needed <= read
        assert all(job in readers[b] for b in job.inputs)
