"""Agreement of the built-in spectral models, run through the whole pipeline, with independent references.

1. Plumbing: each model through ``predict_scene`` (tiled, Dask, COG) against the same index computed here
   with numpy in float64 on a plain whole-scene rasterio read, on the real scenes of ../shared/data.
2. Meaning: the ``bare`` (NDMI) clearing map on Rondonia (Sentinel-2 B8A, B11) against INPE's
   random-forest class map (argmax of its probabilities): forest vs clear-cut (burn, soil, vegetation),
   at several thresholds; and ``water-mndwi`` (B02 standing in for green) against its Water class.

Usage::

    python bench/spectral_agreement.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
RONDONIA = DATA / "labeled" / "deforestation_rondonia_s2_20LLQ"
SAMPLE = REPO / "examples" / "data"
INPE = ("Water", "ClearCut_Burn", "ClearCut_Soil", "ClearCut_Veg", "Forest", "Wetland")


def nd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a - b) / (a + b)


def stack_rondonia(out: Path) -> Path:
    bands = [RONDONIA / f"SENTINEL-2_MSI_20LLQ_{b}_2021-09-22.tif" for b in ("B02", "B8A", "B11")]
    with rasterio.open(bands[0]) as src:
        profile = src.profile | {"count": 3}
    with rasterio.open(out, "w", **profile) as dst:
        for i, band in enumerate(bands, start=1):
            with rasterio.open(band) as src:
                dst.write(src.read(1), i)
    return out


def main() -> None:
    from distributed import Client, LocalCluster

    from pipeline.config import PredictConfig
    from pipeline.models.contract import ModelRef
    from workflows.scene import plan_scene, predict_scene

    with (tempfile.TemporaryDirectory() as tmp,
          LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
          Client(cluster) as client):
        rondonia = stack_rondonia(Path(tmp) / "rondonia_20LLQ.tif")
        cases = [
            ("vegetation", SAMPLE / "m_4709963_se_14_1_20200831.tif", "naip", 0.3, True, lambda d: nd(d[3], d[0])),
            ("vegetation", SAMPLE / "m_4709963_se_14_1_20090818.tif", "naip", 0.3, True, lambda d: nd(d[3], d[0])),
            ("vegetation", DATA / "scenes/spacenet6_rotterdam/ms1.tif", "bgrn", 0.3, True, lambda d: nd(d[3], d[2])),
            ("water", SAMPLE / "m_4709963_se_14_1_20200831.tif", "naip", 0.0, True, lambda d: nd(d[1], d[3])),
            ("water-mndwi", rondonia, "green=1,swir16=3", 0.0, True, lambda d: nd(d[0], d[2])),
            ("burn", rondonia, "nir=2,swir22=3", 0.1, False, lambda d: nd(d[1], d[2])),
            ("bare", rondonia, "nir=2,swir16=3", 0.25, False, lambda d: nd(d[1], d[2])),
        ]
        print("| model | scene | bands | pixels compared | class-1 share | agreement with numpy float64 |")
        print("|---|---|---|---|---|---|")
        for name, scene, bands, threshold, above, index in cases:
            out = Path(tmp) / name
            plan = plan_scene(scene, name, PredictConfig(bands=bands, tile_size=256))
            result = predict_scene(plan, out, client=client, progress=False)
            with rasterio.open(result.classes_path) as src:
                classes = src.read(1)
            with rasterio.open(scene) as src:
                data = src.read(out_dtype="float64")
                valid = np.all(src.read_masks() > 0, axis=0)
            value = index(data)
            expected = value > threshold if above else value < threshold
            decided = valid & np.isfinite(value)
            agreement = (classes[decided] == expected[decided]).mean()
            print(f"| {name} | {Path(scene).name} | {bands} | {decided.sum():,} | {classes[decided].mean():.3f} | "
                  f"{agreement:.5f} |")

        with rasterio.open(RONDONIA / "SENTINEL-2_MSI_20LLQ_2020-06-04_2021-08-26_probs_v0.tif") as src:
            reference = src.read().argmax(axis=0)
        forest = reference == INPE.index("Forest")
        cleared = np.isin(reference, [INPE.index(c) for c in ("ClearCut_Burn", "ClearCut_Soil", "ClearCut_Veg")])
        water = reference == INPE.index("Water")
        print("\n| Rondonia model (threshold) | reference classes | agreement | IoU of class 1 |")
        print("|---|---|---|---|")
        for name, threshold, bands, target, compared_mask, label in [
            *[("bare", t, "nir=2,swir16=3", cleared, forest | cleared, "Forest vs ClearCut_* (3)")
              for t in (0.2, 0.25, 0.3, 0.35)],
            *[("water-mndwi", t, "green=1,swir16=3", water, np.ones_like(water), "Water vs all others")
              for t in (-0.2, 0.0)],
        ]:
            out = Path(tmp) / f"{name}-{threshold}"
            ref = ModelRef.of(name, threshold=threshold)
            result = predict_scene(plan_scene(rondonia, ref, PredictConfig(bands=bands)), out, client=client,
                                   progress=False)
            with rasterio.open(result.classes_path) as src:
                classes = src.read(1)
            compared = compared_mask & (classes != 255)
            predicted = classes == 1
            agreement = (predicted == target)[compared].mean()
            iou = (predicted & target & compared).sum() / ((predicted | target) & compared).sum()
            print(f"| {name} ({threshold}) | {label} | {agreement:.3f} | {iou:.3f} |")


if __name__ == "__main__":
    main()
