"""Training and evaluation on real labelled scenes, against baselines measured in the same run.

    PYTHONPATH=$PWD python -m bench.train [--case atlanta|rondonia|all] [--epochs N] [--out DIR]

Each case trains on one part of the scene (``--region``), validates on held-out blocks of that part, then
predicts the **whole** scene through ``predict_scene`` and scores only the other part, which training
never saw. Baselines scored on the same held-out part:

- atlanta (SpaceNet 4 panchromatic, 43 building footprints): all-background, and a brightness threshold
  (the threshold and its direction that give the best building IoU on the *training* part);
- rondonia (Sentinel-2 B02/B8A/B11, labels = argmax of the INPE probability map, Forest vs the three
  ClearCut classes, Water/Wetland left out): the built-in ``bare`` NDMI model at its default threshold, and
  an NDMI threshold chosen on the training part.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from pipeline.config import EvaluateConfig, PredictConfig
from pipeline.inference.read import open_scene, read_window
from pipeline.models.spectral import normalized_difference
from pipeline.training.labels import IGNORE, open_labels, read_labels
from pipeline.training.metrics import confusion_matrix, pixel_metrics
from tiles.grid import PixelWindow
from workflows.evaluate import evaluate_scene
from workflows.train import TrainConfig, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "labeled"
ATLANTA = SHARED / "buildings_spacenet4_atlanta"
RONDONIA = SHARED / "deforestation_rondonia_s2_20LLQ"


def _iou(truth: np.ndarray, predicted: np.ndarray, k: int = 2) -> float | None:
    return pixel_metrics(confusion_matrix(truth, predicted, k), [str(i) for i in range(k)]).classes[1].iou


def _best_threshold(values: np.ndarray, truth: np.ndarray) -> tuple[float, bool]:
    """The threshold and direction (above?) maximizing class-1 IoU of ``values > t`` (or ``< t``)."""
    keep = truth != IGNORE
    v, t = values[keep], truth[keep]
    best = (-1.0, 0.0, True)
    for q in np.linspace(0.01, 0.99, 99):
        thr = float(np.quantile(v, q))
        for above in (True, False):
            pred = (v > thr) if above else (v < thr)
            iou = _iou(t, pred.astype(np.uint8)) or 0.0
            if iou > best[0]:
                best = (iou, thr, above)
    return best[1], best[2]


def _threshold_baseline(values: np.ndarray, truth: np.ndarray, train: PixelWindow, test: PixelWindow) -> dict[str, Any]:
    rs, cs = train.relative_to(PixelWindow(0, 0, *truth.shape))
    thr, above = _best_threshold(values[rs, cs], truth[rs, cs])
    rs, cs = test.relative_to(PixelWindow(0, 0, *truth.shape))
    v = values[rs, cs]
    pred = ((v > thr) if above else (v < thr)).astype(np.uint8)
    return {"threshold": round(thr, 4), "above": above, "iou": _iou(truth[rs, cs], pred)}


def _region(window: PixelWindow) -> tuple[int, int, int, int]:
    """A window as the configs take a region: ``(row_off, col_off, height, width)``."""
    return (window.row_off, window.col_off, window.height, window.width)


def _run_case(name: str, scene: Path, labels: Path, *, bands: str, classes: tuple[str, str], train_region: PixelWindow,
              test_region: PixelWindow, epochs: int, chip: int, out: Path, attribute: str | None = None,
              index: Any = None, spectral: tuple[str, str] | None = None, chips_per_epoch: int = 64) -> dict[str, Any]:
    region = _region(train_region)
    config = TrainConfig(scenes=(str(scene),), labels=(str(labels),), label_attribute=attribute, bands=bands,
                         classes=classes, region=region, epochs=epochs, chip_size=chip, chips_per_epoch=chips_per_epoch,
                         out=str(out / f"{name}-unet"), seed=0, patience=max(3, epochs // 2))
    t0 = time.perf_counter()
    run = train(config, progress=False)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scoring = EvaluateConfig(predict=PredictConfig(bands=bands, workers=1), label_attribute=attribute,
                             region=_region(test_region))
    ev = evaluate_scene(scene, run.bundle, labels, scoring, progress=False)
    eval_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "case": name, "train_seconds": round(train_s, 1), "evaluate_seconds": round(eval_s, 1),
        "epochs_run": len(run.result.history), "best_epoch": run.result.best_epoch,
        "first_loss": run.result.history[0]["train_loss"], "last_loss": run.result.history[-1]["train_loss"],
        "val_iou": run.result.best_score,
        "test": {c.name: {"iou": c.iou, "f1": c.f1, "precision": c.precision, "recall": c.recall}
                 for c in ev.pixels.classes},
        "test_objects": [{"class": o.name, "tp": o.true_positives, "fp": o.false_positives, "fn": o.false_negatives,
                          "f1": o.f1} for o in ev.objects],
    }
    # Baselines on the same grid and labels.
    meta = open_scene(scene)
    lab = open_labels(labels, meta, classes, attribute)
    data, valid = read_window(meta, meta.bounds, tuple(range(1, meta.count + 1)))
    truth = read_labels(lab, meta.bounds, valid)
    rs, cs = test_region.relative_to(meta.bounds)
    result["baseline_all_background_iou"] = _iou(truth[rs, cs], np.zeros_like(truth[rs, cs]))
    values = index(data) if index is not None else data[0]
    result["baseline_threshold"] = _threshold_baseline(values, truth, train_region, test_region)
    if spectral is not None:
        model, sbands = spectral
        spectral_scoring = scoring.model_copy(update={"predict": PredictConfig(bands=sbands, workers=1)})
        sev = evaluate_scene(scene, model, labels, spectral_scoring, progress=False)
        result[f"baseline_{model}_iou"] = sev.pixels.classes[1].iou
    return result


def _rondonia_inputs(tmp: Path) -> tuple[Path, Path]:
    """B02, B8A, B11 stacked (blue, nir, swir16), and labels: 0 Forest, 1 ClearCut_*, 255 Water/Wetland."""
    files = [next(RONDONIA.glob(f"*_{b}_*.tif")) for b in ("B02", "B8A", "B11")]
    with rasterio.open(files[0]) as src:
        profile = src.profile | {"count": 3, "compress": "deflate"}
    stacked = tmp / "rondonia_b02_b8a_b11.tif"
    with rasterio.open(stacked, "w", **profile) as dst:
        for i, f in enumerate(files, start=1):
            with rasterio.open(f) as src:
                dst.write(src.read(1), i)
    with rasterio.open(next(RONDONIA.glob("*probs_v0.tif"))) as src:
        probs, lprofile = src.read(), src.profile
    winner = probs.argmax(axis=0)
    labels = np.full(winner.shape, IGNORE, dtype=np.uint8)
    labels[winner == 4] = 0
    labels[np.isin(winner, (1, 2, 3))] = 1
    path = tmp / "rondonia_forest_cleared.tif"
    with rasterio.open(path, "w", **(lprofile | {"count": 1, "dtype": "uint8", "nodata": IGNORE})) as dst:
        dst.write(labels, 1)
    return stacked, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["atlanta", "rondonia", "all"], default="all")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmpdir:
        out = Path(args.out or tmpdir)
        out.mkdir(parents=True, exist_ok=True)
        if args.case in ("atlanta", "all"):
            results.append(_run_case(
                "atlanta", ATLANTA / "sample_geotiff.tif", ATLANTA / "geotiff_labels.geojson", bands="pan=1",
                classes=("background", "building"), train_region=PixelWindow(0, 0, 900, 600),
                test_region=PixelWindow(0, 600, 900, 300), epochs=args.epochs, chip=128, out=out,
                chips_per_epoch=96))
            print(json.dumps(results[-1]), flush=True)
        if args.case in ("rondonia", "all"):
            scene, labels = _rondonia_inputs(out)
            results.append(_run_case(
                "rondonia", scene, labels, bands="blue=1,nir=2,swir16=3", classes=("forest", "cleared"),
                train_region=PixelWindow(0, 0, 500, 300), test_region=PixelWindow(0, 300, 500, 200),
                epochs=args.epochs, chip=64, out=out, chips_per_epoch=128,
                index=lambda d: normalized_difference(d[1], d[2]), spectral=("bare", "nir=2,swir16=3")))
            print(json.dumps(results[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
