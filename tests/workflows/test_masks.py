"""Quality masks end to end, through the CLI on a real LocalCluster: a cloudy optical stack built from a real
Landsat scene raises alerts from its clouds without --mask and none with it; masked pixels are nodata in the
class, probability and change products; --threshold reaches the model on change and timeline."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner

from pipeline.change.transitions import ALERT_NODATA, CHANGE_NODATA
from pipeline.inference.masks import parse_quality_mask
from pipeline.products import CLASS_NODATA, Tag
from tests.conftest import shared
from workflows.cli import main
from workflows.job import load_job

PUCALLPA = "change/landsat_timeseries_pucallpa_peru/1985.tif"  # bands: 1 swir, 2 nir, 3 red, 4 green; uint8
YEARS = (2015, 2016, 2017, 2018, 2019, 2020)
# cloud centre (row, col), radius and the years it covers: B overlaps A a year later (two observations of
# "cleared" on the same pixels: a confirmed alert without a mask), C is alone, D is on the last date
CLOUDS = {"A": ((150, 200), 14, (2017,)), "B": ((156, 206), 14, (2018,)), "C": ((250, 450), 12, (2018,)),
          "D": ((90, 560), 12, (2020,))}
EDGE = 3  # a cloud's soft edge, px: its mask band marks only where it is at least half opaque


def _opacity(shape: tuple[int, int], year: int) -> np.ndarray:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    alpha = np.zeros(shape)
    for (r, c), radius, years in CLOUDS.values():
        if year in years:
            d = np.hypot(rows - r, cols - c)
            alpha = np.maximum(alpha, np.clip((radius + EDGE - d) / EDGE, 0, 1))
    return alpha


@pytest.fixture(scope="module")
def cloudy_stack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Six dates of the real 1985 Pucallpa scene (a stable landscape: every date the same pixels), clouds
    painted into three of them as a cloud looks in reflectance (bright and flat in every band, so NDVI
    drops to about 0 over forest, which reads as clearing), and a fifth band ``clm`` (1 = cloud) that marks
    each cloud where it is at least half opaque. Returns the folder and where any cloud touches."""
    folder = tmp_path_factory.mktemp("cloudy")
    with rasterio.open(shared(PUCALLPA)) as src:
        profile, clear = src.profile, src.read()
    profile.update(count=5, photometric="minisblack")
    touched = np.zeros(clear.shape[1:], bool)
    cloud_value = np.array([205, 215, 220, 225], np.float64)[:, None, None]  # swir, nir, red, green
    for year in YEARS:
        alpha = _opacity(clear.shape[1:], year)
        touched |= alpha > 0
        data = clear * (1 - alpha) + cloud_value * alpha
        data = np.where(clear == 0, 0, np.clip(np.rint(data), 1, 255))  # keep the scene's nodata collar
        clm = (alpha >= 0.5).astype(np.uint8)
        with rasterio.open(folder / f"site_{year}.tif", "w", **profile) as dst:
            dst.write(np.concatenate([data, clm[None]]).astype(np.uint8))
    return folder, touched


def _run(*args: object) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _timeline(folder: Path, out: Path, scheduler: str, *extra: object) -> tuple[np.ndarray, ...]:
    scenes = sorted(folder.glob("site_*.tif"))
    _run("timeline", *scenes, "--model", "vegetation", "--bands", "swir16=1,nir=2,red=3,green=4,clm=5",
         "--date-pattern", r"(?P<year>\d{4})", "--watch", "vegetation->other", "--out", out, "--scheduler",
         scheduler, "-q", *extra)
    with rasterio.open(out / "timeline.alerts.tif") as src:
        return tuple(src.read())


@pytest.mark.slow
def test_clouds_raise_alerts_without_mask_and_none_with_it(cloudy_stack, dask_client, tmp_path: Path) -> None:
    folder, touched = cloudy_stack
    address = dask_client.scheduler.address
    # without the mask, the clouds over stable forest are read as clearing: alerts, some confirmed (A then B)
    first_day, count, confidence, _ = _timeline(folder, tmp_path / "plain", address)
    alerting = (confidence > 0) & (confidence != ALERT_NODATA)
    assert alerting[touched].sum() > 500, "the painted clouds must look like clearing, or this test proves nothing"
    assert (count[touched] >= 2).sum() > 100  # the overlap of A and B: confirmed
    assert not alerting[~touched].any()  # nothing else changes between the dates
    plain_events = gpd.read_file(tmp_path / "plain" / "timeline.events.gpkg", layer="timeline.events")
    assert len(plain_events) == 2  # A and B overlap: confirmed; D on the last date: provisional (C withdrawn)

    # with the mask (and its dilation over the soft cloud edges): no alert anywhere
    first_day, count, confidence, last_day = _timeline(folder, tmp_path / "masked", address, "--mask", "clm=1",
                                                       "--mask-dilate", EDGE + 1)
    assert not ((confidence > 0) & (confidence != ALERT_NODATA)).any()
    assert not ((first_day > 0) & (first_day != ALERT_NODATA)).any()
    assert len(gpd.read_file(tmp_path / "masked" / "timeline.events.gpkg", layer="timeline.events")) == 0
    # a masked date is no observation: under cloud D (2020, the last date) the last valid day is 2019's
    day_2019 = (dt.date(2019, 1, 1) - dt.date(1970, 1, 1)).days
    assert (last_day[90, 560] == day_2019) and (last_day[0, 0] == ALERT_NODATA or last_day[0, 0] > day_2019)
    # the cloudy date's class and probability rasters are nodata under the (dilated) mask, tagged with it
    with rasterio.open(tmp_path / "masked" / "site_2017.classes.tif") as src:
        classes, tags = src.read(1), src.tags()
    with rasterio.open(tmp_path / "masked" / "site_2017.proba.tif") as src:
        proba, proba_nodata = src.read(1), src.nodata
    assert classes[150, 200] == CLASS_NODATA and proba[150, 200] == proba_nodata
    assert classes[150, 200 + 14 + EDGE + 1] == CLASS_NODATA  # the dilated edge
    assert classes[150, 200 + 14 + EDGE + 6] != CLASS_NODATA
    assert tags[Tag.MASK] == f"clm=1 dilate={EDGE + 1}"
    # the area table counts the masked pixels as no observation (valid area drops on the cloudy dates)
    areas = _areas(tmp_path / "masked")
    assert areas["2017-01-01"] < areas["2016-01-01"] and areas["2019-01-01"] == areas["2016-01-01"]


def _areas(out: Path) -> dict[str, float]:
    import pandas as pd

    table = pd.read_csv(out / "timeline.areas.csv", dtype={"date": str})
    return table.groupby("date")["valid_area_m2"].first().to_dict()


@pytest.mark.slow
def test_change_masks_clouds_and_threshold_reaches_the_model(cloudy_stack, dask_client, tmp_path: Path) -> None:
    folder, _ = cloudy_stack
    before, after = folder / "site_2016.tif", folder / "site_2017.tif"
    address = dask_client.scheduler.address
    bands = "swir16=1,nir=2,red=3,green=4,clm=5"
    _run("change", before, after, "--bands", bands, "--out", tmp_path / "plain", "--scheduler", address, "-q")
    _run("change", before, after, "--bands", bands, "--mask", "clm=1", "--mask-dilate", EDGE + 1,
         "--out", tmp_path / "masked", "--scheduler", address, "-q")
    name = "site_2016__site_2017.change.tif"
    with rasterio.open(tmp_path / "plain" / name) as src:
        plain = src.read(1)
    with rasterio.open(tmp_path / "masked" / name) as src:
        masked = src.read(1)
    assert plain[150, 200] not in (0, CHANGE_NODATA)  # the cloud reads as change
    assert masked[150, 200] == CHANGE_NODATA  # masked: no data, never change
    assert ((masked != 0) & (masked != CHANGE_NODATA)).sum() == 0  # nothing else changed
    # an index difference reads the mask band too
    _run("change", before, after, "--model", "dndvi", "--bands", bands, "--mask", "clm=1", "--out",
         tmp_path / "dndvi", "-q", "--no-polygons")
    with rasterio.open(tmp_path / "dndvi" / name) as src:
        assert src.read(1)[150, 200] == CHANGE_NODATA and src.tags()[Tag.MASK] == "clm=1"
    # an index difference takes --threshold too: the cloud's NDVI drop is change at 0.2, not at 1.9
    for threshold in ("0.2", "1.9"):
        _run("change", before, after, "--model", "dndvi", "--bands", bands, "--threshold", threshold, "--out",
             tmp_path / f"dndvi{threshold}", "-q", "--no-polygons")
    with rasterio.open(tmp_path / "dndvi0.2" / name) as low, rasterio.open(tmp_path / "dndvi1.9" / name) as high:
        assert low.read(1)[150, 200] != 0 and high.read(1)[150, 200] == 0
        assert "loss > 1.9" in high.tags()[Tag.DESCRIPTION]
    refused = CliRunner().invoke(main, ["change", str(before), str(after), "--model", "dnbr", "--bands", bands,
                                        "--threshold", "0.3", "--out", str(tmp_path / "dnbr")])
    assert refused.exit_code == 2 and "model dnbr: has fixed, published class edges" in refused.output
    # --threshold reaches the model: at 0.99 nothing is vegetation on either date
    _run("change", before, after, "--bands", bands, "--threshold", "0.99", "--out", tmp_path / "strict",
         "--scheduler", address, "-q", "--no-polygons")
    with rasterio.open(tmp_path / "strict" / "site_2016.classes.tif") as src:
        strict = src.read(1)
    assert not (strict == 1).any() and (strict == 0).any()
    with rasterio.open(tmp_path / "plain" / "site_2016.classes.tif") as src:
        assert (src.read(1) == 1).mean() > 0.5


def test_threshold_and_model_option_that_disagree_are_one_line(tmp_path: Path) -> None:
    for command in (["change", "a.tif", "b.tif"], ["timeline", "a.tif", "b.tif"], ["predict", "a.tif"],
                    ["evaluate", "a.tif", "--model", "vegetation", "--labels", "l.tif"]):
        result = CliRunner().invoke(main, [*command, "--threshold", "0.5", "--model-option", "threshold=0.6",
                                           "--out", str(tmp_path)])
        assert result.exit_code == 2
        assert result.output.strip() == ("scenewatch: error: --threshold 0.5 and --model-option threshold=0.6 "
                                         "disagree; give one of them")
    result = CliRunner().invoke(main, ["timeline", "a.tif", "b.tif", "--mask", "scl=clouds", "--out", str(tmp_path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("scenewatch: error: --mask 'scl=clouds': 'clouds' is not a scl class")
    result = CliRunner().invoke(main, ["change", "a.tif", "b.tif", "--min-area", "half", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "area 'half'" in result.output


def test_job_file_takes_mask_and_model_options(tmp_path: Path) -> None:
    (tmp_path / "scenes").mkdir()
    job = {"inputs": {"folder": "scenes"}, "model": {"name": "vegetation", "options": {"threshold": 0.6}},
           "bands": "landsat8", "mask": ["qa_pixel=cloud,shadow"], "mask_dilate": 2,
           "products": {"timeline": {"options": {"sieve": 4, "min_area": "0.5ha"}}}, "outputs": {"folder": "out"}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    spec = load_job(path).spec
    config = spec.predict_config()
    assert config.mask == parse_quality_mask("qa_pixel=cloud,shadow") and config.mask_dilate == 2
    assert spec.products.timeline is not None and spec.products.timeline.options.min_area == 5000.0
    job["tiling"] = {"mask": "scl"}
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(Exception, match="mask belongs at the top level"):
        load_job(path)
    del job["tiling"]
    job["mask"] = "qa_pixel=clouds"
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(Exception, match=r"line \d+: mask: 'qa_pixel=clouds': 'clouds' is not a qa_pixel class"):
        load_job(path)


def test_train_leaves_masked_pixels_out_of_its_labels(make_geotiff, tmp_path: Path) -> None:
    """Masked pixels become the ignore label (255): neither the loss, the band statistics nor validation see
    them; and the mask band is never a model input."""
    from pipeline.inference.masks import bind_mask
    from pipeline.inference.read import open_scene, parse_band_map
    from pipeline.training.chips import Block, Split
    from pipeline.training.labels import IGNORE, open_labels
    from pipeline.training.train import TrainingScene, prepare_data
    from tiles.grid import PixelWindow

    data = np.ones((3, 64, 64), np.uint16) * 500
    data[2, 10:20, 10:30] = 1  # cloud in the mask band
    scene = make_geotiff("train.tif", data=data)
    labels = make_geotiff("labels.tif", data=np.ones((1, 64, 64)), dtype="uint8")
    meta = open_scene(scene)
    band_map = parse_band_map("red=1,nir=2,clm=3")
    mask = bind_mask(parse_quality_mask("clm=1"), band_map.indexes, 1)
    truth = open_labels(labels, meta, ["other", "vegetation"])
    window = PixelWindow(0, 0, 64, 64)
    split = Split((Block(0, window),), (Block(0, window),))
    prepared = prepare_data([TrainingScene(meta, (1, 2), truth, mask)], split, ["other", "vegetation"])
    expected = np.ones((64, 64), np.uint8)
    expected[9:21, 9:31] = IGNORE
    np.testing.assert_array_equal(prepared.train_labels[0], expected)
    np.testing.assert_array_equal(prepared.val_labels[0], expected)
    from workflows.train import TrainConfig

    config = TrainConfig(scenes=(str(scene),), labels=(str(labels),), out=str(tmp_path / "b"),
                         bands="red=1,nir=2,clm=3", classes="other,vegetation", mask="clm=1", mask_dilate=1)
    assert config.mask is not None and config.mask.bands == ("clm",)
    from pipeline.inference.masks import model_band_names

    assert model_band_names(band_map.indexes, config.mask) == ("red", "nir")


@pytest.mark.slow
def test_evaluate_leaves_masked_pixels_out_of_the_score(cloudy_stack, dask_client, tmp_path: Path) -> None:
    folder, _ = cloudy_stack
    scene = folder / "site_2017.tif"
    with rasterio.open(scene) as src:
        profile, clm = src.profile, src.read(5)
    profile.update(count=1, nodata=None)
    labels = tmp_path / "labels.tif"
    with rasterio.open(labels, "w", **profile) as dst:
        dst.write(np.ones((1, *clm.shape), np.uint8))  # all vegetation
    args = ["evaluate", str(scene), "--model", "vegetation", "--labels", str(labels), "--bands",
            "swir16=1,nir=2,red=3,green=4,clm=5", "--scheduler", dask_client.scheduler.address, "--json", "-q"]
    import json

    plain = json.loads(_run(*args))
    masked = json.loads(_run(*args, "--mask", "clm=1"))
    assert masked["pixels"]["unknown_pixels"] - plain["pixels"]["unknown_pixels"] == int(clm.sum())
    iou = {c["name"]: c["iou"] for c in plain["pixels"]["classes"]}["vegetation"]
    assert {c["name"]: c["iou"] for c in masked["pixels"]["classes"]}["vegetation"] > iou  # clouds scored no more
