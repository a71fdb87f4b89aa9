"""`scenewatch evaluate` on change products: a change raster, and a change layer, against a real flood mask."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
from affine import Affine
from click.testing import CliRunner
from rasterio.errors import NotGeoreferencedWarning
from shapely.geometry import shape

from pipeline.change.compare import compare_arrays
from pipeline.change.transitions import iou
from pipeline.products import Tag
from tests.conftest import shared
from workflows.cli.main import main

PROFILE = {"driver": "GTiff", "width": 256, "height": 256, "count": 1, "dtype": "uint8", "crs": "EPSG:32631",
           "transform": Affine(10, 0, 600000, 0, -10, 5000000)}


def _png(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read()


@pytest.fixture
def flood_chip(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """The water-swir change of a real OMBRIA France chip as a georeferenced change raster, and its mask."""
    folder = shared("change/flood_ombria_france/MASK").parent
    n = max((re.findall(r"\d+", p.name)[0] for p in folder.glob("MASK/gt_*.png")),
            key=lambda k: (_png(folder / "MASK" / f"gt_{k}.png") > 127).sum())  # the most flooded chip
    before, after = _png(folder / "S2/BEFORE" / f"imbefore_{n}.png"), _png(folder / "S2/AFTER" / f"imafter_{n}.png")
    ds = compare_arrays(before, after, "water-swir", bands={"swir16": 0, "nir": 1, "red": 2})
    codes = ds.change.to_numpy()
    change = tmp_path / "chip.change.tif"
    with rasterio.open(change, "w", **PROFILE, nodata=255) as dst:
        dst.write(codes[None])
        dst.update_tags(**{Tag.CLASSES: ",".join(ds.attrs["class_names"])})
    truth = _png(folder / "MASK" / f"gt_{n}.png")[0] > 127
    mask = tmp_path / "mask.tif"
    with rasterio.open(mask, "w", **PROFILE) as dst:
        dst.write(truth[None].astype("uint8") * 255)
    flooded = codes == ds.attrs["class_names"].index("other->water")
    return change, mask, flooded, truth


def _evaluate(*args: str | Path) -> dict:
    result = CliRunner().invoke(main, ["evaluate", *map(str, args), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_change_raster_and_layer_scored_against_a_mask_and_polygons(flood_chip, tmp_path: Path) -> None:
    change, mask, flooded, truth = flood_chip
    expected = iou(flooded, truth)  # independent reference: the pixels compared here
    report = _evaluate(change, "--labels", mask, "--transition", "other->water")
    scored = {c["name"]: c for c in report["pixels"]["classes"]}
    assert scored["change"]["iou"] == pytest.approx(expected, abs=1e-9) and expected > 0.3
    # the same reference as polygons: the pixels whose centre is inside them are flooded
    with rasterio.open(mask) as src:
        polys = [shape(g) for g, v in rasterio.features.shapes(src.read(1), transform=src.transform) if v == 255]
    labels = tmp_path / "flood.gpkg"
    gpd.GeoDataFrame(geometry=polys, crs="EPSG:32631").to_file(labels)
    assert _evaluate(change, "--labels", labels, "--transition", "other->water")["pixels"]["classes"][1]["iou"] \
        == pytest.approx(expected, abs=1e-9)
    # a change layer (polygons of the flooded pixels) against the mask raster
    with rasterio.open(change) as src:
        layer = [shape(g) for g, v in rasterio.features.shapes(flooded.astype("uint8"), transform=src.transform) if v]
    layer_path = tmp_path / "chip.change.gpkg"
    names = {"class_name": ["other->water"] * len(layer)}
    gpd.GeoDataFrame(names, geometry=layer, crs="EPSG:32631").to_file(layer_path)
    assert _evaluate(layer_path, "--labels", mask)["pixels"]["classes"][1]["iou"] == pytest.approx(expected, abs=1e-9)


def test_change_scoring_refuses_what_it_cannot_score(flood_chip, tmp_path: Path) -> None:
    change, mask, _, _ = flood_chip
    result = CliRunner().invoke(main, ["evaluate", str(change), "--labels", str(mask), "--transition", "a->b"])
    assert result.exit_code != 0 and "no transition a->b" in result.output
    result = CliRunner().invoke(main, ["evaluate", str(mask), "--labels", str(mask)])
    assert result.exit_code != 0 and "--model" in result.output


@pytest.mark.slow
def test_evaluating_a_bundle_prints_the_best_builtin_index_beside_it(tmp_path: Path, dask_client) -> None:
    """A (random) network for forest/cleared on Rondonia against INPE's map: `bare` (NDMI) is its baseline."""
    folder = shared("labeled/deforestation_rondonia_s2_20LLQ")
    bands = []
    for band in ("B8A", "B11"):
        with rasterio.open(folder / f"SENTINEL-2_MSI_20LLQ_{band}_2021-09-22.tif") as src:
            bands.append(src.read(1))
            profile = src.profile
    scene = tmp_path / "rondonia.tif"
    with rasterio.open(scene, "w", **(profile | {"count": 2})) as dst:
        dst.write(np.stack(bands))
    with rasterio.open(next(folder.glob("*probs_v0.tif"))) as src:
        argmax = src.read().argmax(axis=0)  # Water, ClearCut_Burn, ClearCut_Soil, ClearCut_Veg, Forest, Wetland
    labels = np.full(argmax.shape, 255, np.uint8)
    labels[argmax == 4], labels[np.isin(argmax, [1, 2, 3])] = 0, 1
    label_path = tmp_path / "labels.tif"
    with rasterio.open(label_path, "w", **(profile | {"count": 1, "dtype": "uint8", "nodata": 255})) as dst:
        dst.write(labels[None])
    runner = CliRunner()
    made = runner.invoke(main, ["models", "init", "--arch", "Unet", "--encoder", "resnet18", "--bands", "nir,swir16",
                                "--classes", "forest,cleared", "--out", str(tmp_path / "net")], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    text = runner.invoke(main, ["evaluate", str(scene), "--model", str(tmp_path / "net"), "--labels", str(label_path),
                                "--bands", "nir=1,swir16=2", "--scheduler", dask_client.scheduler.address],
                         catch_exceptions=False).output
    line = next(line for line in text.splitlines() if line.startswith("baseline cleared: built-in index bare"))
    assert float(re.search(r"IoU ([0-9.]+)", line).group(1)) > 0.8  # docs/accuracy.md: 0.851
    assert "worse than the index" in line  # a random network
