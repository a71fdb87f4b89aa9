"""threshold=auto on a scene: the histogram pass on a real LocalCluster equals the in-memory histogram, the
threshold used is recorded in the products' tags, and the CLI's --model-option threshold=auto reaches it."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from click.testing import CliRunner

from pipeline.config import PredictConfig
from pipeline.models.contract import ModelRef
from pipeline.models.loader import load_model
from pipeline.products import Tag
from workflows.scene import plan_scene, predict_scene
from workflows.threshold import resolve_auto_threshold, scene_histogram

BANDS = "red=1,green=2,blue=3,nir=4"


def _lake(make_geotiff) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(5)
    data = rng.normal(1000, 60, (4, 300, 500)).clip(1, None)
    water = np.zeros((300, 500), bool)
    water[40:200, 60:260] = True
    data[1] = np.where(water, rng.normal(900, 40, water.shape), rng.normal(600, 40, water.shape))  # green
    data[3] = np.where(water, rng.normal(300, 30, water.shape), rng.normal(2500, 150, water.shape))  # nir
    return make_geotiff("lake.tif", data=data.astype("uint16")), water


def test_scene_histogram_on_dask_equals_the_in_memory_histogram(make_geotiff, dask_client) -> None:
    path, _ = _lake(make_geotiff)
    plan = plan_scene(path, ModelRef.of("water", threshold="auto"), PredictConfig(bands=BANDS, tile_size=128))
    assert len(plan.grid) > 4  # several tiles, several tasks
    model = load_model(plan.model)
    distributed = scene_histogram(plan, dask_client, model)
    with rasterio.open(path) as src:
        bands = src.read([2, 4]).astype(np.float32)
    np.testing.assert_array_equal(distributed, model.histogram(bands[None]))


def test_auto_threshold_is_used_and_recorded_in_the_tags(make_geotiff, dask_client, tmp_path: Path) -> None:
    path, water = _lake(make_geotiff)
    plan = plan_scene(path, "water", PredictConfig(bands=BANDS, tile_size=128))  # water's default is auto
    resolved = resolve_auto_threshold(plan, dask_client)
    assert -0.5 < dict(resolved.model.options)["threshold"] < 0.4  # between the two modes, a number
    result = predict_scene(plan, tmp_path / "out", client=dask_client, progress=False)
    with rasterio.open(result.classes_path) as src:
        tag = src.tags()[Tag.THRESHOLD]
        classes = src.read(1)
    assert " auto (Otsu" in tag and float(tag.split()[0]) != 0.0
    assert ((classes == 1) == water).mean() > 0.99
    # a fixed threshold is recorded as such; a scene with no water falls back and says so
    fixed = predict_scene(plan_scene(path, ModelRef.of("water", threshold=0.1), PredictConfig(bands=BANDS)),
                          tmp_path / "fixed", client=dask_client, progress=False)
    with rasterio.open(fixed.classes_path) as src:
        assert src.tags()[Tag.THRESHOLD] == "0.1 fixed"
    with rasterio.open(path) as src:
        dry = src.read()
    dry[1][water], dry[3][water] = 600, 2500  # the lake drained: land only
    dry_path = make_geotiff("dry.tif", data=dry)
    fallback = resolve_auto_threshold(plan_scene(dry_path, "water", PredictConfig(bands=BANDS)), dask_client)
    assert fallback.tags[Tag.THRESHOLD].startswith("0 fallback")


def test_cli_model_option_threshold_auto(make_geotiff, tmp_path: Path) -> None:
    from workflows.cli.main import main

    path, _ = _lake(make_geotiff)
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["predict", str(path), "--model", "vegetation", "--bands", BANDS,
                                       "--model-option", "threshold=auto", "--out", str(out), "--workers", "1",
                                       "--format", "gpkg", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with rasterio.open(out / "lake.classes.tif") as src:
        tag = src.tags()[Tag.THRESHOLD]
        assert tag.split()[1] in ("auto", "fallback")
    layer = gpd.read_file(out / "lake.gpkg", layer="lake")
    assert set(layer["threshold"]) == {tag}  # the vector layer says which threshold drew it


@pytest.mark.slow
def test_pucallpa_timeline_of_cleared_land_rises_with_threshold_auto(dask_client, tmp_path: Path) -> None:
    """The README's Pucallpa example: `bare` (NDMI) with each date's threshold sees the clearing (8.9 % in 1985,
    rising every period to 23.6 % in 2010; docs/accuracy.md), where NDVI stays flat near 93 %."""
    from pipeline.config import TimelineConfig
    from tests.conftest import shared
    from workflows.change import run_timeline

    scenes = sorted(shared("change/landsat_timeseries_pucallpa_peru").glob("*.tif"))
    config = TimelineConfig(predict=PredictConfig(bands="swir16=1,nir=2,red=3"), date_pattern=r"(?P<year>\d{4})",
                            watch="canopy->bare", polygons=False)
    result = run_timeline(scenes, ModelRef.of("bare", threshold="auto"), tmp_path, config, client=dask_client,
                          progress=False)
    table = pd.read_csv(result.areas_csv, dtype={"date": str, "class": str})
    bare = table[table["class"] == "bare"].set_index("date")
    share = (bare["area_m2"] / bare["valid_area_m2"]).to_numpy()
    assert share[0] < 0.10 and share[5] > 0.20  # 1985, 2010
    assert all(b > a for a, b in zip(share[:5], share[1:6], strict=True))  # 1985 -> 2010: up every period
