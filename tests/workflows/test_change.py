"""Change between two dates and alert timelines, end to end on real files (generated and real scenes)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.crs import CRS
from shapely.geometry import box

from pipeline import colours
from pipeline.change.align import grid_of
from pipeline.change.transitions import ALERT_HIGH, ALERT_NODATA, CHANGE_NODATA, transition_codes, transition_names
from pipeline.config import DEFAULT_CHANGE_SIEVE, ChangeConfig, PredictConfig, TimelineConfig
from pipeline.inference.predict import predict_array
from pipeline.inference.stitch import classify
from pipeline.models.contract import ModelRef
from pipeline.models.loader import load_model
from tests.conftest import NAIP_2009, NAIP_2020, shared
from workflows.change import detect_change, run_timeline

NAMES = ("forest", "cleared", "water")
ORIGIN = Affine(10, 0, 600000, 0, -10, 5000000)


def write_classes(path: Path, classes: np.ndarray, names=NAMES, transform: Affine = ORIGIN) -> Path:
    """A class raster as predict_scene writes them: uint8, nodata 255, class names in the tags."""
    with rasterio.open(path, "w", driver="GTiff", width=classes.shape[1], height=classes.shape[0], count=1,
                       dtype="uint8", crs=CRS.from_epsg(32633), transform=transform, nodata=255) as dst:
        dst.write(classes.astype(np.uint8), 1)
        dst.update_tags(SCENEWATCH_CLASSES=",".join(names), SCENEWATCH_MODEL="handmade",
                        SCENEWATCH_MODEL_VERSION="1")
    return path


def read_band(path: Path, band: int = 1) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(band)


@pytest.fixture
def known_pair(tmp_path: Path) -> tuple[Path, Path]:
    before = np.zeros((60, 80), np.uint8)  # forest
    before[40:50, 60:75] = 1  # a clearing that regrows
    after = before.copy()
    after[10:20, 10:30] = 1  # 200 px forest -> cleared
    after[40:50, 60:75] = 0  # 150 px cleared -> forest
    after[30:35, 0:8] = 2  # 40 px forest -> water
    after[0:5, 70:80] = 255  # nodata on the after date only
    before[55:60, 0:10] = 255  # nodata on the before date only
    after[55:60, 0:10] = 1  # ...where the after date looks changed
    return (write_classes(tmp_path / "site_20010601.classes.tif", before),
            write_classes(tmp_path / "site_20110601.classes.tif", after))


def test_known_changes_give_exactly_those_codes_polygons_and_areas(known_pair, dask_client, tmp_path: Path) -> None:
    before, after = known_pair
    result = detect_change(before, after, out_dir=tmp_path / "out", client=dask_client, progress=False)
    names = transition_names(NAMES)
    expected = np.zeros((60, 80), np.uint8)
    expected[10:20, 10:30] = names.index("forest->cleared")
    expected[40:50, 60:75] = names.index("cleared->forest")
    expected[30:35, 0:8] = names.index("forest->water")
    expected[0:5, 70:80] = CHANGE_NODATA
    expected[55:60, 0:10] = CHANGE_NODATA
    assert np.array_equal(read_band(result.change_path), expected)
    assert result.before_date == dt.date(2001, 6, 1) and result.after_date == dt.date(2011, 6, 1)

    polys = result.polygons().sort_values("area_m2").reset_index(drop=True)
    assert polys["class_name"].tolist() == ["forest->water", "cleared->forest", "forest->cleared"]
    assert polys["class_id"].tolist() == [names.index(n) for n in polys["class_name"]]
    assert polys["pixels"].tolist() == [40, 150, 200] and polys["perimeter_m"][2] == 600.0
    assert polys["area_m2"].tolist() == [4000.0, 15000.0, 20000.0]
    assert polys.crs == CRS.from_epsg(32633)
    x0, y0 = 600000, 5000000
    assert polys.geometry[2].equals(box(x0 + 100, y0 - 200, x0 + 300, y0 - 100))
    assert (pd.to_datetime(polys["before_date"]) == pd.Timestamp("2001-06-01")).all()
    assert (pd.to_datetime(polys["after_date"]) == pd.Timestamp("2011-06-01")).all()
    # no probabilities given: both class maps are taken as certain
    assert (polys["proba_mean"] == 1.0).all() and (polys["proba_max"] == 1.0).all()
    assert (polys["model"] == "handmade").all()
    assert (pd.to_datetime(polys["acquired"]) == pd.Timestamp("2011-06-01")).all()  # the after date
    palette = dict(zip(names, colours.change_colours(names), strict=True))
    assert _style_fills(result.polygons_path) == {n: palette[n] for n in polys["class_name"]}
    assert palette["forest->cleared"] == colours.LOSS and palette["cleared->forest"] == colours.GAIN
    areas = result.areas.set_index("transition")["area_m2"]
    assert areas["forest->cleared"] == 20000.0 and areas["no change"] == (4800 - 100 - 390) * 100.0


def test_swapping_dates_swaps_loss_and_gain(known_pair, dask_client, tmp_path: Path) -> None:
    before, after = known_pair
    config = ChangeConfig(quicklook=False)
    forward = detect_change(before, after, out_dir=tmp_path / "f", config=config, client=dask_client,
                            progress=False).polygons()
    backward = detect_change(after, before, out_dir=tmp_path / "b", config=config, client=dask_client,
                             progress=False).polygons()
    flip = {t: "->".join(reversed(t.split("->"))) for t in forward["class_name"]}
    f = forward.assign(class_name=forward["class_name"].map(flip)).sort_values("area_m2")
    b = backward.sort_values("area_m2")
    assert f["class_name"].tolist() == b["class_name"].tolist()
    assert f["area_m2"].tolist() == b["area_m2"].tolist()
    assert all(g1.equals(g2) for g1, g2 in zip(f.geometry, b.geometry, strict=True))


def test_scenes_are_classified_and_compared_against_whole_array_reference(make_geotiff, dask_client,
                                                                          tmp_path: Path) -> None:
    before_path = make_geotiff("before_20150701.tif", shape=(4, 150, 190), seed=4)
    with rasterio.open(before_path) as src:
        data = src.read().astype(np.float64)
    after_data = data.copy()
    after_data[0, 20:60, 30:90] = 2500  # red up, nir down: vegetation cleared
    after_data[3, 20:60, 30:90] = 700
    after_path = make_geotiff("after_20200701.tif", data=after_data, nodata=0, nodata_box=(100, 130, 0, 50))
    config = ChangeConfig(predict=PredictConfig(bands="rgbn", tile_size=64, halo=0))
    result = detect_change(before_path, after_path, "vegetation", tmp_path / "out", config, client=dask_client,
                           progress=False)
    model = load_model(ModelRef.of("vegetation"))
    cls, pmax = [], []
    for path in (before_path, after_path):
        with rasterio.open(path) as src:
            bands = src.read([1, 4]).astype(np.float32)
            valid = src.read_masks(1) > 0
        proba = predict_array(model, bands, valid)
        cls.append(classify(proba, valid))
        pmax.append(np.nanmax(np.where(valid, proba, 0.0), axis=0))
    expected = transition_codes(cls[0], cls[1], 2)
    got = read_band(result.change_path)
    assert np.array_equal(got, expected)
    assert (got[100:130, 0:50] == CHANGE_NODATA).all()  # nodata on one date is never change
    assert (got[20:60, 30:90] == transition_names(("other", "vegetation")).index("vegetation->other")).mean() > 0.5
    conf = read_band(result.change_path, 2)
    assert (conf[got == CHANGE_NODATA] == 255).all()
    # confidence = p(class before) x p(class after); the probabilities pass through uint8 storage (1/254 steps)
    expected_conf = np.rint(pmax[0] * pmax[1] * 254)
    ok = got != CHANGE_NODATA
    assert np.abs(conf[ok].astype(int) - expected_conf[ok]).max() <= 2

    # an index-difference model on the same pair sees the same clearing
    config = ChangeConfig(predict=PredictConfig(bands="rgbn"), name="dndvi", polygons=False, quicklook=False)
    diff = detect_change(before_path, after_path, "dndvi", tmp_path / "out", config, progress=False)
    codes = read_band(diff.change_path)
    assert (codes[20:60, 30:90] == diff.class_names.index("vegetation loss")).mean() > 0.9
    assert (codes[100:130, 0:50] == CHANGE_NODATA).all()


@pytest.mark.slow
def test_shifted_copy_of_a_real_scene_shows_no_change(dask_client, tmp_path: Path) -> None:
    with rasterio.open(NAIP_2020) as src:
        window = rasterio.windows.Window(300, 200, 240, 200)
        data, transform, crs = src.read(window=window), src.window_transform(window), src.crs

    def write(name: str, array: np.ndarray, t: Affine) -> Path:
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=array.shape[2], height=array.shape[1],
                           count=4, dtype="uint8", crs=crs, transform=t, nodata=0) as dst:
            dst.write(array)
        return tmp_path / name

    a = write("a_20200831.tif", data, transform)
    b = write("b_20200831.tif", data[:, 7:, 11:].copy(), transform @ Affine.translation(11, 7))
    config = ChangeConfig(predict=PredictConfig(bands="naip"), quicklook=False)
    result = detect_change(a, b, "vegetation", tmp_path / "out", config, client=dask_client, progress=False)
    codes = read_band(result.change_path)
    inside = np.zeros(codes.shape, bool)
    inside[7:, 11:] = True
    assert (codes[inside & (data[0] > 0)] == 0).all()
    assert (codes[~inside] == CHANGE_NODATA).all()
    assert len(result.polygons()) == 0


@pytest.mark.slow
def test_naip_pair_end_to_end_lines_up_with_the_inputs(dask_client, tmp_path: Path) -> None:
    config = ChangeConfig(predict=PredictConfig(bands="naip"))
    result = detect_change(NAIP_2009, NAIP_2020, "vegetation", tmp_path, config, client=dask_client, progress=False)
    grid = grid_of(NAIP_2009)
    with rasterio.open(result.change_path) as src:
        assert (src.crs, src.transform, src.height, src.width) == (grid.crs, grid.transform, grid.height, grid.width)
        codes = src.read(1)
        assert src.tags()["SCENEWATCH_CLASSES"] == "no change,other->vegetation,vegetation->other"
    assert not (codes[-1] != CHANGE_NODATA).any()  # the 2020 scene is one row shorter: nodata, not no change
    polys = result.polygons()
    assert polys.crs == grid.crs
    # the default sieve (9 px) against GDAL's sieve run on the change raster itself: the same pixels, and no
    # one-pixel polygon (10,168 polygons and 5,032 of one pixel without it)
    from rasterio.features import sieve

    sieved = sieve(codes, DEFAULT_CHANGE_SIEVE, mask=codes != CHANGE_NODATA, connectivity=4)
    changed = np.count_nonzero((sieved != 0) & (sieved != CHANGE_NODATA))
    assert polys["area_m2"].sum() == pytest.approx(changed * 25.0)
    assert polys["pixels"].min() >= 2 and len(polys) < 2000
    assert result.areas["area_m2"].sum() == pytest.approx(np.count_nonzero(codes != CHANGE_NODATA) * 25.0)
    assert result.quicklook_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from rio_cogeo.cogeo import cog_validate

    assert cog_validate(str(result.change_path), quiet=True)[0]
    array = result.change_array(max_size=200)
    assert array.sizes["band"] == 2 and max(array.sizes["y"], array.sizes["x"]) == 200


@pytest.mark.slow
def test_pucallpa_timeline_end_to_end(dask_client, tmp_path: Path) -> None:
    scenes = [shared(f"change/landsat_timeseries_pucallpa_peru/{y}.tif") for y in range(2020, 1984, -5)]
    config = TimelineConfig(predict=PredictConfig(bands="red=3,nir=2"), date_pattern=r"(?P<year>\d{4})",
                            watch="vegetation->other")
    result = run_timeline(scenes, "vegetation", tmp_path, config, client=dask_client, progress=False)
    assert [d.date.year for d in result.dates] == list(range(1985, 2021, 5))
    grid = grid_of(scenes[-1])  # 1985, the earliest
    assert result.grid == grid and grid.crs == CRS.from_epsg(4326)
    with rasterio.open(result.alerts_path) as src:
        assert (src.crs, src.transform, src.count, src.dtypes[0]) == (grid.crs, grid.transform, 4, "uint16")
        first_day, confidence = src.read(1), src.read(3)
    days = {(d.date - dt.date(1970, 1, 1)).days for d in result.dates[1:]}
    assert set(np.unique(first_day[(confidence > 0) & (confidence != ALERT_NODATA)]).tolist()) <= days
    table = pd.read_parquet(result.areas_parquet)
    assert len(table) == 8 * 2
    csv = pd.read_csv(result.areas_csv, dtype={"scene_id": str, "date": str, "class": str})
    pd.testing.assert_frame_equal(csv, table, check_dtype=False, atol=1e-3)
    # per-date class counts against the class rasters themselves (same grid: a plain read)
    for item in result.dates:
        classes = read_band(item.classes_path)
        rows = table[table["date"] == item.date.isoformat()].set_index("class")["pixels"]
        assert rows["vegetation"] == np.count_nonzero(classes == 1)
        assert rows["other"] == np.count_nonzero(classes == 0)
    events = result.events()
    assert events.crs == grid.crs and set(events["class_name"]) <= {d.date.isoformat() for d in result.dates}
    assert result.plot_path.read_bytes()[:4] == b"\x89PNG"


def test_stack_with_an_empty_and_a_cloudy_date_creates_no_false_alerts(dask_client, tmp_path: Path) -> None:
    base = np.zeros((40, 50), np.uint8)  # forest everywhere
    dates = []
    for year in (2016, 2017, 2018, 2019, 2020):
        classes = base.copy()
        if year == 2017:
            classes[:] = 255  # an empty date
        if year == 2018:
            classes[0:15, 0:20] = 255  # a masked cloud
            classes[30:40, 40:50] = 1  # an unmasked cloud, read as cleared on this date only
        if year >= 2019:
            classes[20:30, 10:20] = 1  # a real clearing, seen twice
        dates.append(write_classes(tmp_path / f"{year}.classes.tif", classes))
    config = TimelineConfig(date_pattern=r"(?P<year>\d{4})", watch="forest->cleared")
    result = run_timeline(dates[::-1], out_dir=tmp_path / "out", config=config, client=dask_client, progress=False)
    with rasterio.open(result.alerts_path) as src:
        first_day, count, confidence, last_day = src.read()
    clearing = np.zeros(base.shape, bool)
    clearing[20:30, 10:20] = True
    assert (confidence[clearing] == ALERT_HIGH).all() and (count[clearing] == 2).all()
    assert (first_day[clearing] == (dt.date(2019, 1, 1) - dt.date(1970, 1, 1)).days).all()
    assert (confidence[~clearing] == 0).all() and (first_day[~clearing] == 0).all()
    assert (last_day == (dt.date(2020, 1, 1) - dt.date(1970, 1, 1)).days).all()
    events = result.events()
    assert len(events) == 1 and events["class_name"][0] == "2019-01-01" and events["area_m2"][0] == 10000.0
    assert events["proba_mean"][0] == 1.0  # confirmed alert: high confidence
    assert events.geometry[0].equals(box(600100, 5000000 - 300, 600200, 5000000 - 200))
    # the first-detection date is a real date field (filterable in QGIS), and the layer's date
    info = pyogrio.read_info(result.events_polygons_path, layer=result.events_polygons_path.stem)
    types = dict(zip(info["fields"], info["ogr_types"], strict=True))
    assert types["first_detected"] == "OFTDate" and types["acquired"] == "OFTDate"
    assert pd.Timestamp(events["first_detected"][0]) == pd.Timestamp("2019-01-01")
    assert pd.Timestamp(events["acquired"][0]) == pd.Timestamp("2019-01-01")
    # styled with the date ramp of pipeline.colours, like the events raster's colour table
    names = ["no alert", *(d.date.isoformat() for d in result.dates)]
    ramp = dict(zip(names, colours.layer_colours(names), strict=True))
    assert _style_fills(result.events_polygons_path) == {"2019-01-01": ramp["2019-01-01"]}
    with rasterio.open(result.events_path) as src:
        assert src.colormap(1)[names.index("2019-01-01")] == colours.rgba(ramp["2019-01-01"])


def _style_fills(gpkg: Path) -> dict[str, str]:
    """class_name -> fill colour of the GeoPackage's default SLD style."""
    import sqlite3
    import xml.etree.ElementTree as ET

    with sqlite3.connect(gpkg) as db:
        (sld,) = db.execute("SELECT styleSLD FROM layer_styles WHERE useAsDefault = 1 AND f_table_name = ?",
                            (gpkg.stem,)).fetchone()
    ns = {"se": "http://www.opengis.net/se", "ogc": "http://www.opengis.net/ogc"}
    return {r.find("ogc:Filter/ogc:PropertyIsEqualTo/ogc:Literal", ns).text:
            r.find("se:PolygonSymbolizer/se:Fill/se:SvgParameter[@name='fill']", ns).text
            for r in ET.fromstring(sld.encode()).findall(".//se:Rule", ns)}


def test_cli_change_and_timeline(known_pair, tmp_path: Path) -> None:
    from workflows.cli import main

    before, after = known_pair
    runner = CliRunner()
    res = runner.invoke(main, ["change", str(before), str(after), "--out", str(tmp_path / "cli"), "-q"])
    assert res.exit_code == 0, res.output
    assert "forest->cleared: 2.00 ha" in res.output
    gpkg = next((tmp_path / "cli").glob("*.change.gpkg"))
    assert gpd.read_file(gpkg, layer=gpkg.stem).shape[0] == 3
    res = runner.invoke(main, ["timeline", str(before), "--out", str(tmp_path / "cli")])
    assert res.exit_code != 0 and "scenewatch: error: timeline: 1 scene(s) given" in res.output
    res = runner.invoke(main, ["change", str(before), str(tmp_path / "missing.tif"), "--out", str(tmp_path)])
    assert res.exit_code != 0 and "scenewatch: error: scene missing.tif: no such file" in res.output
    for command in ("change", "timeline"):
        assert "Examples:" in runner.invoke(main, [command, "--help"]).output


def test_reprojected_resampled_copy_is_aligned_and_shows_change_only_at_block_edges(tmp_path: Path) -> None:
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    rng = np.random.default_rng(5)
    blocks = rng.integers(0, 3, (6, 8)).astype(np.uint8)
    classes = np.kron(blocks, np.ones((20, 20), np.uint8))  # 120 x 160 px of 20 x 20 px blocks
    original = write_classes(tmp_path / "a.classes.tif", classes)
    dst_crs = CRS.from_epsg(3857)
    transform, width, height = calculate_default_transform(CRS.from_epsg(32633), dst_crs, 160, 120,
                                                           *rasterio.transform.array_bounds(120, 160, ORIGIN),
                                                           resolution=7.0)
    warped = np.full((height, width), 255, np.uint8)
    reproject(classes, warped, src_transform=ORIGIN, src_crs=CRS.from_epsg(32633), dst_transform=transform,
              dst_crs=dst_crs, resampling=Resampling.nearest, src_nodata=255, dst_nodata=255)
    copy = tmp_path / "b.classes.tif"
    with rasterio.open(copy, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs=dst_crs,
                       transform=transform, nodata=255) as dst:
        dst.write(warped, 1)
        dst.update_tags(SCENEWATCH_CLASSES=",".join(NAMES))
    result = detect_change(original, copy, out_dir=tmp_path / "out",
                           config=ChangeConfig(quicklook=False, polygons=False), progress=False)
    codes = read_band(result.change_path)
    assert codes.shape == classes.shape  # on the first scene's grid
    valid = codes != CHANGE_NODATA
    assert valid.mean() > 0.95  # the reprojected footprint covers nearly all of the first grid
    edges = np.zeros(classes.shape, bool)  # within 2 px of a block border (two nearest-neighbour resamplings)
    for axis in (0, 1):
        border = np.diff(classes.astype(int), axis=axis) != 0
        idx = np.argwhere(border)
        for r, c in idx:
            edges[max(r - 2, 0): r + 4, max(c - 2, 0): c + 4] = True
    assert (codes[valid & ~edges] == 0).all()
    assert (codes[valid] == 0).mean() > 0.95
    # the same comparison on the copy's grid: outputs line up with that grid instead
    on_copy = detect_change(original, copy, out_dir=tmp_path / "out2",
                            config=ChangeConfig(grid=str(copy), polygons=False, quicklook=False), progress=False)
    with rasterio.open(on_copy.change_path) as src:
        assert (src.crs, src.transform, src.shape) == (dst_crs, transform, (height, width))


def test_compare_arrays_on_ombria_flood_chips_beats_the_trivial_baseline() -> None:
    import re

    from pipeline.change.compare import compare_arrays
    from pipeline.change.transitions import iou

    folder = shared("change/flood_ombria_albania/MASK").parent
    predicted, truth = [], []
    for mask in sorted(folder.glob("MASK/gt_*.png")):
        n = re.findall(r"\d+", mask.name)[0]
        chips = []
        for path in (folder / "S2/BEFORE" / f"imbefore_{n}.png", folder / "S2/AFTER" / f"imafter_{n}.png", mask):
            with rasterio.open(path) as src:  # PNGs without georeferencing (the warning is filtered in pyproject)
                chips.append(src.read())
        result = compare_arrays(chips[0], chips[1], "water-swir", bands={"swir16": 0, "nir": 1, "red": 2})
        predicted.append((result.change == result.attrs["class_names"].index("other->water")).to_numpy())
        truth.append(chips[2][0] > 127)
    flood_iou = iou(np.stack(predicted), np.stack(truth))
    baseline = iou(np.ones((len(truth), 256, 256), bool), np.stack(truth))
    assert baseline < 0.25 and flood_iou > 0.6  # docs/benchmarks.md: 0.649 vs 0.229


def test_compare_arrays_index_difference_and_errors() -> None:
    from pipeline.change.compare import compare_arrays
    from pipeline.errors import ConfigError

    before = np.zeros((2, 4, 4), np.float32)
    before[0], before[1] = 100, 500  # red, nir: vegetated
    after = before.copy()
    after[:, :2] = [[[400.0]], [[420.0]]]  # top half cleared
    after[:, 3, 3] = 0  # no data on the after date
    ds = compare_arrays(before, after, "dndvi")
    names = ds.attrs["class_names"]
    assert (ds.change.to_numpy()[:2] == names.index("vegetation loss")).all()
    assert (ds.change.to_numpy()[2, :] == 0).all() and ds.change.to_numpy()[3, 3] == CHANGE_NODATA
    with pytest.raises(ConfigError, match="swir16"):
        compare_arrays(before, after, "water-swir", bands={"red": 0})


def test_pairs_that_cannot_be_compared_are_refused_in_the_users_words(known_pair, make_geotiff,
                                                                       tmp_path: Path) -> None:
    from pipeline.errors import ConfigError, InvalidSceneError

    before, _ = known_pair
    other_model = write_classes(tmp_path / "x_20120101.classes.tif", np.zeros((60, 80), np.uint8), names=("a", "b"))
    with pytest.raises(InvalidSceneError, match="different classes.*compare rasters of one model"):
        detect_change(before, other_model, out_dir=tmp_path / "o", progress=False)
    far = write_classes(tmp_path / "far_20120101.classes.tif", np.zeros((60, 80), np.uint8),
                        transform=Affine(10, 0, 900000, 0, -10, 5000000))
    with pytest.raises(InvalidSceneError, match="far_20120101.classes.tif: does not overlap"):
        detect_change(before, far, out_dir=tmp_path / "o", progress=False)
    scene = make_geotiff("scene.tif", shape=(4, 20, 20))
    (tmp_path / "2019").mkdir()
    twin = make_geotiff("2019/scene.tif", shape=(4, 20, 20))
    with pytest.raises(ConfigError, match="would both write scene.classes.tif"):
        detect_change(scene, twin, out_dir=tmp_path / "o", config=ChangeConfig(predict=PredictConfig(bands="rgbn")),
                      progress=False)
    untagged = tmp_path / "plain.classes.tif"
    with rasterio.open(untagged, "w", driver="GTiff", width=80, height=60, count=1, dtype="uint8",
                       crs=CRS.from_epsg(32633), transform=ORIGIN, nodata=255) as dst:
        dst.write(np.zeros((1, 60, 80), np.uint8))
    with pytest.raises(InvalidSceneError, match="no SCENEWATCH_CLASSES tag"):
        detect_change(before, untagged, out_dir=tmp_path / "o", progress=False)
