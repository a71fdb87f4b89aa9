"""`scenewatch change` on real flood chips with the defaults: water-swir (S2) and flood-sar (S1) through the CLI
give exactly what `compare_arrays` gives on the same pair, and beat "everything flooded"."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.errors import NotGeoreferencedWarning

from pipeline.change.compare import compare_arrays
from pipeline.change.transitions import iou
from pipeline.products import Tag
from tests.conftest import shared
from workflows.cli.main import main


def _png(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read()


def _tif(path: Path, data: np.ndarray) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=data.shape[0], dtype="uint8",
                       crs="EPSG:32631", transform=Affine(10, 0, 600000, 0, -10, 5000000)) as dst:
        dst.write(data)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("sensor", "model", "bands", "mapping"), [
    ("S2", "water-swir", "swir16=1,nir=2,red=3", {"swir16": 0, "nir": 1, "red": 2}),
    ("S1", "flood-sar", "vv=1", {"vv": 0}),
])
def test_flood_change_through_the_cli_equals_compare_arrays(sensor, model, bands, mapping, tmp_path: Path,
                                                             dask_client) -> None:
    folder = shared("change/flood_ombria_france/MASK").parent
    n = "55"  # a chip where both sensors see the flood (18 % of it flooded)
    before = _png(folder / sensor / "BEFORE" / f"imbefore_{n}.png")
    after = _png(folder / sensor / "AFTER" / f"imafter_{n}.png")
    truth = _png(folder / "MASK" / f"gt_{n}.png")[0] > 127
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["change", str(_tif(tmp_path / "before.tif", before)),
                                       str(_tif(tmp_path / "after.tif", after)), "--model", model, "--bands", bands,
                                       "--out", str(out), "--no-polygons", "--scheduler", dask_client.scheduler.address,
                                       "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with rasterio.open(out / "before__after.change.tif") as src:
        names = src.tags()[Tag.CLASSES].split(",")
        flooded = src.read(1) == names.index("other->water")
    with rasterio.open(out / "after.classes.tif") as src:
        assert re.match(r"-?[0-9.]+ (auto|fallback)", src.tags()[Tag.THRESHOLD])
    with rasterio.open(out / "before__after.change.tif") as src:  # both dates' thresholds, on the change too
        assert re.match(r"before: -?[0-9.]+ (auto|fallback).*; after: ", src.tags()[Tag.THRESHOLD])
    ds = compare_arrays(before, after, model, bands=mapping)
    expected = (ds.change == ds.attrs["class_names"].index("other->water")).to_numpy()
    assert (flooded == expected).mean() > 0.999  # the same thresholds, the same pixels
    assert iou(flooded, truth) > 2 * truth.mean()  # well above "everything flooded"
