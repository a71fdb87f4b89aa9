"""vectorize_scene and the CLI on real files and a real LocalCluster."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner
from pyproj import CRS

from pipeline.config import VectorizeConfig
from pipeline.errors import ConfigError, InvalidSceneError
from pipeline.vectors.vectorize import PolygonLimitError
from tests.conftest import shared
from tests.pipeline.vectors.test_vectorize import BURN_SCAR, blobs, discs
from tests.vector_reference import assert_same_polygons, whole_raster_polygons
from workflows.cli import main
from workflows.vectorize import vectorize_scene

TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)


def write_raster(path: Path, data: np.ndarray, *, nodata: float | None = None, crs: str = "EPSG:32633",
                 transform: Affine = TRANSFORM, tags: dict[str, str] | None = None,
                 scales: list[float] | None = None) -> Path:
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata, tiled=True,
                       blockxsize=64, blockysize=64) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)
        if scales:
            dst.scales = scales
    return path


def read_layer(path: Path) -> tuple[gpd.GeoDataFrame, np.ndarray]:
    # a GeoPackage also holds its layer_styles table: read the layer by name (the file's stem)
    frame = pyogrio.read_dataframe(path, layer=path.stem if path.suffix == ".gpkg" else None)
    return frame, np.asarray(frame.geometry.values, dtype=object)


def pixel_geoms(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    inverse = ~transform
    return shapely.transform(geoms, lambda xy: np.column_stack(
        [inverse.a * xy[:, 0] + inverse.b * xy[:, 1] + inverse.c,
         inverse.d * xy[:, 0] + inverse.e * xy[:, 1] + inverse.f]))


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A class raster with objects crossing many tile borders, nodata, names and model tags, and its proba."""
    classes = blobs((300, 260), 3, seed=21)
    classes[:20, :30] = 255
    rng = np.random.default_rng(2)
    proba = rng.integers(0, 255, (3, 300, 260)).astype(np.uint8)
    proba[:, :20, :30] = 255
    tags = {"SCENEWATCH_CLASSES": "water,cleared,forest", "SCENEWATCH_MODEL": "unet", "SCENEWATCH_MODEL_VERSION": "2.1"}
    classes_path = write_raster(tmp_path / "naip_20200831.classes.tif", classes, nodata=255, tags=tags)
    proba_path = write_raster(tmp_path / "naip_20200831.proba.tif", proba, nodata=255, scales=[1 / 254] * 3)
    return classes_path, proba_path, classes, proba


@pytest.mark.slow
def test_layers_match_whole_raster_polygonizer_for_several_tile_sizes(scene, tmp_path: Path, dask_client) -> None:
    classes_path, proba_path, classes, proba = scene
    valid = classes != 255
    ref, ref_cls = whole_raster_polygons(classes, valid)
    ids = {}
    for tile_size in (32, 100):
        out = tmp_path / f"out{tile_size}"
        config = VectorizeConfig(formats="gpkg,parquet", tile_size=tile_size)
        result = vectorize_scene(classes_path, out, config, proba_path=proba_path, client=dask_client,
                                 attributes={"date_after": dt.date(2021, 1, 1)})
        assert result.paths["gpkg"] == out / "naip_20200831.gpkg" and result.features == len(ref)
        frame, geoms = read_layer(result.paths["gpkg"])
        assert_same_polygons(pixel_geoms(geoms, TRANSFORM), frame["class_id"].to_numpy(), ref, ref_cls)
        ids[tile_size] = dict(zip(frame["id"], frame["pixels"], strict=True))
        assert frame["area_m2"].sum() == valid.sum() * 100.0
        assert set(frame["class_name"]) == {"water", "cleared", "forest"}
        assert (frame["model"] == "unet").all() and (frame["model_version"] == "2.1").all()
        assert (frame["acquired"] == np.datetime64("2020-08-31")).all()
        assert (frame["date_after"] == np.datetime64("2021-01-01")).all()
        # confidence against an independent burn of the largest polygon
        big = int(frame["pixels"].idxmax())
        inside = rasterio.features.geometry_mask([geoms[big]], classes.shape, TRANSFORM, invert=True)
        p = proba[frame["class_id"][big]][inside] / 254.0
        assert frame["proba_mean"][big] == pytest.approx(p.mean(), rel=1e-5)
        assert frame["proba_max"][big] == pytest.approx(p.max(), rel=1e-5)
    assert ids[32] == ids[100]  # the same objects get the same ids whatever the tiling


@pytest.mark.slow
def test_burn_scar_mask_layers(tmp_path: Path, dask_client) -> None:
    mask_path = shared(BURN_SCAR)
    with rasterio.open(mask_path) as src:
        mask, transform, crs = src.read(1), src.transform, src.crs
    ref, ref_cls = whole_raster_polygons(mask, mask != -1)
    for tile_size in (64, 200):
        config = VectorizeConfig(formats=("fgb",), tile_size=tile_size, classes=["1"])
        result = vectorize_scene(mask_path, tmp_path / str(tile_size), config, client=dask_client)
        frame, geoms = read_layer(result.paths["fgb"])
        assert CRS.from_user_input(pyogrio.read_info(result.paths["fgb"])["crs"]) == CRS.from_user_input(crs)
        assert_same_polygons(pixel_geoms(geoms, transform), frame["class_id"].to_numpy(), ref[ref_cls == 1],
                             ref_cls[ref_cls == 1])
        assert frame["proba_mean"].isna().all()  # no probability raster for a label mask


def test_geographic_raster_areas_are_geodesic(tmp_path: Path, dask_client) -> None:
    classes = discs((200, 200), 30, seed=4)
    transform = Affine(0.0005, 0.0, -64.5, 0.0, -0.0005, -9.5)  # ~55 m pixels in Rondonia
    path = write_raster(tmp_path / "geo.tif", classes, crs="EPSG:4326", transform=transform)
    config = VectorizeConfig(formats="geojson", tile_size=64, classes=[1, 2])
    result = vectorize_scene(path, tmp_path / "out", config, client=dask_client)
    frame, _ = read_layer(result.paths["geojson"])
    # independent: the area of each pixel row in an equal-area projection, times the pixels in that row
    from pyproj import Transformer

    to_cea = Transformer.from_crs("EPSG:4326", "+proj=cea +ellps=WGS84", always_xy=True)
    rows = np.arange(201)
    _, y = to_cea.transform(np.full(201, -64.5), -9.5 - 0.0005 * rows)
    x0, _ = to_cea.transform(-64.5, -9.5)
    x1, _ = to_cea.transform(-64.4995, -9.5)
    row_area = (x1 - x0) * np.abs(np.diff(y))
    expected = float(((classes > 0).sum(axis=1) * row_area).sum())
    assert frame["area_m2"].sum() == pytest.approx(expected, rel=0.005)


@pytest.mark.slow
def test_seams_are_unioned_in_the_workers(scene, tmp_path: Path, dask_client) -> None:
    """The client groups seams from outlines; the unions run as Dask tasks on the workers."""
    from distributed import get_task_stream

    classes_path, proba_path, classes, _ = scene
    with get_task_stream(dask_client) as stream:
        result = vectorize_scene(classes_path, tmp_path / "out", VectorizeConfig(tile_size=50),
                                 proba_path=proba_path, client=dask_client)
    workers = set(dask_client.scheduler_info()["workers"])
    merges = [t for t in stream.data if str(t["key"]).startswith("vectorize-merge-")]
    assert merges and {t["worker"] for t in merges} <= workers
    ref, _ = whole_raster_polygons(classes, classes != 255)
    assert result.features == len(ref)


@pytest.mark.slow
def test_layers_are_written_by_a_worker_where_the_workers_see_the_folder(
        scene, tmp_path: Path, dask_client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers that see the output folder stage the rows in part files themselves (the merged ones by a
    task a row) and write each format from them (a task each); workers that do not leave both to the
    client: the same bytes, and nothing but the layers left in the folder."""
    from distributed import get_task_stream

    import workflows.vectorize as vectorize_module

    classes_path, proba_path, _, _ = scene
    config = VectorizeConfig(tile_size=50, formats=("gpkg", "parquet", "fgb"), min_area=2000.0,
                             max_tiles_in_flight=3)

    def run(out: Path) -> tuple[dict[str, Path], set[str], int]:
        with get_task_stream(dask_client) as stream:
            result = vectorize_scene(classes_path, out, config, proba_path=proba_path, client=dask_client,
                                     progress=False)
        keys = [str(t["key"]) for t in stream.data]
        exports = {key.rsplit("-", 1)[-1] for key in keys if key.startswith("vectorize-export-")}
        staged = sum(key.startswith("vectorize-staged-") for key in keys)
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in result.paths.values())
        return result.paths, exports, staged

    shared, exports, staged = run(tmp_path / "shared")
    assert exports == {"gpkg", "parquet", "fgb"} and staged > 0
    monkeypatch.setattr(vectorize_module, "workers_share_disk", lambda dask, folder: False)
    here, exports, staged = run(tmp_path / "here")
    assert not exports and staged == 0
    for fmt in ("gpkg", "parquet", "fgb"):
        assert shared[fmt].read_bytes() == here[fmt].read_bytes(), fmt


def test_noisy_raster_hits_the_polygon_limit(tmp_path: Path, dask_client) -> None:
    noisy = (np.random.default_rng(0).random((256, 256)) < 0.5).astype(np.uint8)
    path = write_raster(tmp_path / "noisy.tif", noisy)
    with pytest.raises(PolygonLimitError, match=r"classes noisy.tif: tile at rows .*`sieve`"):
        vectorize_scene(path, tmp_path / "out", VectorizeConfig(tile_size=64, max_polygons=500), client=dask_client)
    assert not (tmp_path / "out" / "noisy.gpkg").exists()
    assert list((tmp_path / "out").glob("*")) == []  # staging removed
    config = VectorizeConfig(tile_size=64, max_polygons=500, sieve=40, min_area="0.5ha")
    sieved = vectorize_scene(path, tmp_path / "out", config, client=dask_client)
    frame, _ = read_layer(sieved.paths["gpkg"])
    assert 0 < len(frame) <= 500 and frame["pixels"].min() >= 40 and frame["area_m2"].min() >= 5000


def test_simplify_keeps_polygons_valid_and_counts(scene, tmp_path: Path, dask_client) -> None:
    classes_path, _, classes, _ = scene
    exact = vectorize_scene(classes_path, tmp_path / "a", VectorizeConfig(tile_size=64), client=dask_client)
    simple = vectorize_scene(classes_path, tmp_path / "b", VectorizeConfig(tile_size=64, simplify=15.0),
                             client=dask_client)
    f_exact, g_exact = read_layer(exact.paths["gpkg"])
    f_simple, g_simple = read_layer(simple.paths["gpkg"])
    assert list(f_exact["id"]) == list(f_simple["id"])
    assert shapely.is_valid(g_simple).all()
    assert shapely.get_num_coordinates(g_simple).sum() < shapely.get_num_coordinates(g_exact).sum()


def test_user_errors_name_the_thing(scene, tmp_path: Path, dask_client) -> None:
    classes_path, _, _, _ = scene
    with pytest.raises(ConfigError, match="no class named 'cleard'.*1=cleared"):
        vectorize_scene(classes_path, tmp_path, VectorizeConfig(classes=["cleard"]), client=dask_client)
    floats = write_raster(tmp_path / "f.tif", np.zeros((10, 10), dtype=np.float32))
    with pytest.raises(InvalidSceneError, match="f.tif: float32 pixels are not classes"):
        vectorize_scene(floats, tmp_path, client=dask_client)
    with pytest.raises(ConfigError, match="shp"):  # refused where the config is built, before any work
        vectorize_scene(classes_path, tmp_path, VectorizeConfig.build(formats="shp"), client=dask_client)


def test_cli_vectorize(scene, tmp_path: Path, dask_client) -> None:
    classes_path, _, _, _ = scene
    address = dask_client.scheduler.address
    out = tmp_path / "cli"
    run = CliRunner().invoke(main, ["vectorize", str(classes_path), "--out", str(out), "--format", "gpkg,parquet",
                                    "--classes", "cleared", "--min-area", "0.01ha", "--attr", "campaign=2021",
                                    "--scheduler", address, "--tile-size", "64", "-q"])
    assert run.exit_code == 0, run.output
    assert "polygons from 25 tiles" in run.output
    frame, _ = read_layer(out / "naip_20200831.gpkg")
    assert set(frame["class_name"]) == {"cleared"} and frame["area_m2"].min() >= 100
    assert frame["proba_mean"].notna().all()  # the sibling proba.tif was found
    assert (frame["campaign"] == "2021").all()
    bad = CliRunner().invoke(main, ["vectorize", str(classes_path), "--out", str(out), "--min-area", "lots",
                                    "--scheduler", address])
    assert bad.exit_code == 2 and "scenewatch: error: area 'lots'" in bad.output


@pytest.mark.slow
def test_cli_predict_writes_layers_beside_the_rasters(tmp_path: Path, dask_client) -> None:
    from tests.conftest import NAIP_2020

    out = tmp_path / "pred"
    run = CliRunner().invoke(main, ["predict", str(NAIP_2020), "--bands", "naip", "--out", str(out), "--format",
                                    "gpkg,parquet", "--classes", "vegetation", "--tile-size", "256",
                                    "--scheduler", dask_client.scheduler.address, "-q"])
    assert run.exit_code == 0, run.output
    stem = "m_4709963_se_14_1_20200831"
    frame, geoms = read_layer(out / f"{stem}.gpkg")
    with rasterio.open(out / f"{stem}.classes.tif") as src:
        classes, transform = src.read(1), src.transform
    ref, ref_cls = whole_raster_polygons(classes, classes == 1)
    assert_same_polygons(pixel_geoms(geoms, transform), frame["class_id"].to_numpy(), ref, ref_cls)
    assert (frame["model"] == "vegetation").all() and frame["proba_mean"].between(0.5, 1.0).all()
    assert (frame["acquired"] == np.datetime64("2020-08-31")).all()
    import geopandas

    assert len(geopandas.read_parquet(out / f"{stem}.parquet")) == len(frame)


def test_raster_without_crs_needs_assume_crs(tmp_path: Path, dask_client) -> None:
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=1, dtype="uint8",
                       transform=TRANSFORM) as dst:
        dst.write(discs((40, 40), 3, seed=1)[None])
    with pytest.raises(InvalidSceneError, match="no CRS.*`assume_crs`"):
        vectorize_scene(path, tmp_path / "out", client=dask_client)
    config = VectorizeConfig.build(formats=("fgb", "gpkg"), tile_size=16)
    given = VectorizeConfig.build(**{**config.model_dump(), "assume_crs": "EPSG:32633", "formats": "fgb"})
    result = vectorize_scene(path, tmp_path / "out", given, client=dask_client)
    assert list(result.paths) == ["fgb"] and result.tiles == 9  # the value given wins, the rest is the config's
    assert CRS.from_user_input(pyogrio.read_info(result.paths["fgb"])["crs"]) == CRS.from_epsg(32633)


def test_merge_chunks_cut_a_large_group_off_from_the_rest() -> None:
    """A row's groups go to the workers in consecutive runs of about as many pieces each; a group larger than
    a run's share (the last row's background object) is cut off alone rather than left with all the others."""
    from workflows.vectorize import _chunks

    def groups(*sizes: int) -> list[list[tuple[int, int]]]:
        return [[(n, k) for k in range(size)] for n, size in enumerate(sizes)]

    def pieces(chunks: list[list[list[tuple[int, int]]]]) -> list[int]:
        return [sum(len(g) for g in chunk) for chunk in chunks]

    background = groups(501, *[2] * 150, *[1] * 76)
    chunks = _chunks(background, 2)
    assert pieces(chunks) == [501, 376] and [g for c in chunks for g in c] == background
    assert pieces(_chunks(groups(1, 1, 1, 100), 2)) == [3, 100]
    assert pieces(_chunks(groups(1, 1, 1, 1), 2)) == [2, 2]
    assert pieces(_chunks(groups(2, 1, 2, 1, 2), 3)) == [3, 2, 3]
    assert pieces(_chunks(groups(5), 2)) == [5]
    assert pieces(_chunks(groups(3, 3), 4)) == [3, 3]
    assert pieces(_chunks(groups(4, 4), 1)) == [8]


def test_last_row_merges_are_spread_over_the_workers() -> None:
    """The last row's merges each get a worker of their own, the one with more pieces first and where most of
    its tiles' results are; merges beyond the workers are left to Dask."""
    from types import SimpleNamespace

    from workflows.vectorize import _spread

    def future(key: str) -> SimpleNamespace:
        return SimpleNamespace(key=key)

    held = {"t0": ["tcp://b"], "t1": ["tcp://b"], "t2": ["tcp://a"], "t3": ["tcp://a", "tcp://b"]}
    client = SimpleNamespace(who_has=lambda futures: {f.key: held[f.key] for f in futures},
                             scheduler_info=lambda n_workers: {"workers": {"tcp://a": {}, "tcp://b": {}}})
    small = {2: future("t2")}
    large = {0: future("t0"), 1: future("t1"), 2: future("t2"), 3: future("t3")}
    assert _spread(client, [small, large], [3, 40]) == [["tcp://a"], ["tcp://b"]]
    assert _spread(client, [large, small, small], [40, 3, 2]) == [["tcp://b"], ["tcp://a"], None]


def test_border_pieces_travel_as_flat_coordinates_and_come_back_the_same() -> None:
    import pickle

    from pipeline.vectors.merge import split_border
    from pipeline.vectors.vectorize import CorePieces, polygonize_core
    from tiles.grid import PixelWindow
    from workflows.vectorize import _Border

    classes = blobs((64, 64), 3, seed=4)
    core = PixelWindow(0, 0, 64, 64)
    _, border = split_border(polygonize_core(classes, np.ones(classes.shape, dtype=bool), core,
                                             PixelWindow(0, 0, 128, 128)))
    assert len(border.pieces)
    for sent in (border, CorePieces(core, border.pieces.take(np.zeros(0, dtype=np.int64)), border.top,
                                    border.bottom, border.left, border.right)):
        back = pickle.loads(pickle.dumps(_Border(sent), protocol=5)).core
        assert shapely.to_wkb(back.pieces.geometry).tolist() == shapely.to_wkb(sent.pieces.geometry).tolist()
        for name in ("cls", "pixels", "proba_sum", "proba_count", "proba_max", "key_row", "key_col", "touches"):
            np.testing.assert_array_equal(getattr(back.pieces, name), getattr(sent.pieces, name))
        for name in ("top", "bottom", "left", "right"):
            np.testing.assert_array_equal(getattr(back, name), getattr(sent, name))
        assert back.core == sent.core
