"""Flood change on the OMBRIA Sentinel-2 chips (Albania 2021) against their flood masks.

The chips are 8-bit false-colour PNGs without georeferencing, so the product is computed through the
Python API on arrays, :func:`pipeline.change.compare.compare_arrays`: the built-in ``water-swir`` model
(red/SWIR water index) classifies each date and the ``other->water`` transition is the flood. Reported: IoU
of the flooded class, pooled over all chips and as a mean per chip (chips without flooded pixels count 1.0
when nothing is predicted), against the trivial baselines "all flooded" and "nothing flooded", and against
"water on the after date" (no before image) as an ablation.

Channel order of the composites (inferred from the pixels, see docs/benchmarks.md): 1 = SWIR, 2 = NIR,
3 = red.

    PYTHONPATH=. .venv/bin/python bench/change.py [--data ../shared/data/change/flood_ombria_albania]

``--memory`` instead measures the windowed change step on generated class-raster pairs of growing size (the
after raster shifted by a few pixels, so every window is warped): peak memory of the whole process, each
size in its own process, against the baseline of reading both class rasters whole and coding them at once,
measured in the same run.

    PYTHONPATH=. .venv/bin/python bench/change.py --memory
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from pipeline.change.compare import compare_arrays
from pipeline.change.transitions import iou
from pipeline.inference.predict import predict_array
from pipeline.inference.stitch import classify
from pipeline.models.contract import ModelRef
from pipeline.models.loader import load_model

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "change" / "flood_ombria_albania"
CHANNELS = {"swir16": 0, "nir": 1, "red": 2}  # PNG channel of each band


def read_png(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read()


def water(ref: ModelRef, chip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model = load_model(ref)
    bands = np.stack([chip[CHANNELS[b]] for b in model.info.bands]).astype(np.float32)
    valid = chip.any(axis=0)  # an all-black pixel is outside the acquisition
    return classify(predict_array(model, bands, valid), valid) == 1, valid


def _write_classes(path: Path, size: int, shift: int, seed: int) -> None:
    from affine import Affine
    from rasterio.crs import CRS

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 3, (size // 64 + 1, size // 64 + 1)).astype(np.uint8)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8", "nodata": 255,
               "crs": CRS.from_epsg(32633), "transform": Affine(10, 0, 500000 + 10 * shift, 0, -10, 6000000),
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(SCENEWATCH_CLASSES="forest,cleared,water")
        for row in range(0, size, 512):  # written in strips: generating the input must not set the peak
            rows = np.arange(row, min(row + 512, size)) // 64
            strip = blocks[rows][:, np.arange(size) // 64]
            dst.write(strip[None], window=rasterio.windows.Window(0, row, size, len(rows)))


def _memory_case(kind: str, folder: Path) -> dict[str, float]:
    """One measurement, run in a fresh process: ``windowed`` (detect_change) or ``whole`` (the baseline)."""
    from bench.memory import PeakMemory
    from pipeline.change.transitions import transition_codes
    from pipeline.config import ChangeConfig
    from workflows.change import detect_change

    before, after = folder / "a.classes.tif", folder / "b.classes.tif"
    started = time.perf_counter()
    with PeakMemory(interval=0.02) as peak:
        if kind == "windowed":
            detect_change(before, after, out_dir=folder / "out", config=ChangeConfig(polygons=False, quicklook=False),
                          progress=False)
        else:
            with rasterio.open(before) as a, rasterio.open(after) as b:
                codes = transition_codes(a.read(1), b.read(1), 3)  # same grid here: the baseline skips the warp
            del codes
    return {"seconds": time.perf_counter() - started, "peak": peak.peak}


def memory(sizes: tuple[int, ...] = (2048, 4096, 8192)) -> None:
    print(f"{'size':>6s} {'windowed peak MiB':>18s} {'whole-raster peak MiB':>22s} {'ratio':>6s} {'windowed s':>10s}")
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            _write_classes(folder / "a.classes.tif", size, 0, 1)
            _write_classes(folder / "b.classes.tif", size, 3, 2)
            results = {}
            for kind in ("windowed", "whole"):
                out = subprocess.run([sys.executable, __file__, "--memory-case", kind, str(folder)], check=True,
                                     capture_output=True, text=True).stdout
                results[kind] = json.loads(out.strip().splitlines()[-1])
        w, b = results["windowed"], results["whole"]
        print(f"{size:6d} {w['peak'] / 2**20:18.0f} {b['peak'] / 2**20:22.0f} {w['peak'] / b['peak']:6.2f} "
              f"{w['seconds']:10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--threshold", type=float, default=0.0, help="water index threshold (model default 0)")
    parser.add_argument("--memory", action="store_true", help="peak memory of the windowed change step by size")
    parser.add_argument("--memory-case", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        print(json.dumps(_memory_case(args.memory_case[0], Path(args.memory_case[1]))))
        return
    if args.memory:
        memory()
        return
    model = ModelRef.of("water-swir", threshold=args.threshold)
    masks = sorted(args.data.glob("MASK/gt_*.png"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    started = time.perf_counter()
    preds: dict[str, list[np.ndarray]] = {"flood change (water after, not before)": [], "water after only": [],
                                          "baseline: all flooded": [], "baseline: nothing flooded": []}
    truths = []
    for mask_path in masks:
        n = re.findall(r"\d+", mask_path.name)[0]
        truth = read_png(mask_path)[0] > 127
        chip_before = read_png(args.data / "S2" / "BEFORE" / f"imbefore_{n}.png")
        chip_after = read_png(args.data / "S2" / "AFTER" / f"imafter_{n}.png")
        result = compare_arrays(chip_before, chip_after, model, bands=CHANNELS)
        change = (result.change == result.attrs["class_names"].index("other->water")).to_numpy()
        after, v_after = water(model, chip_after)
        truths.append(truth)
        preds["flood change (water after, not before)"].append(change)
        preds["water after only"].append(after & v_after)
        preds["baseline: all flooded"].append(np.ones_like(truth))
        preds["baseline: nothing flooded"].append(np.zeros_like(truth))
    seconds = time.perf_counter() - started
    flooded = np.mean([t.mean() for t in truths])
    print(f"OMBRIA S2 Albania: {len(truths)} chips of 256x256, {flooded:.1%} flooded; water-swir threshold "
          f"{args.threshold}; {seconds:.2f} s")
    print(f"{'method':42s} {'pooled IoU':>10s} {'mean chip IoU':>14s}")
    for name, pred in preds.items():
        pooled = iou(np.stack(pred), np.stack(truths))
        per_chip = np.mean([iou(p, t) for p, t in zip(pred, truths, strict=True)])
        print(f"{name:42s} {pooled:10.3f} {per_chip:14.3f}")


if __name__ == "__main__":
    main()
