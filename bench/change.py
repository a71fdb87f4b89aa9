"""Flood change on the OMBRIA Sentinel-2 chips (Albania 2021) against their flood masks.

The chips are 8-bit false-colour PNGs without georeferencing, so the product is computed through the
Python API on arrays, :func:`workflows.change.compare_arrays`: the built-in ``water`` model (red/SWIR water
index) classifies each date and the ``land->water`` transition is the flood. Reported: IoU of the flooded class, pooled over all chips and as a mean per chip (chips
without flooded pixels count 1.0 when nothing is predicted), against the trivial baselines "all flooded"
and "nothing flooded", and against "water on the after date" (no before image) as an ablation.

Channel order of the composites (inferred from the pixels, see docs/benchmarks.md): 1 = SWIR, 2 = NIR,
3 = red.

    PYTHONPATH=. .venv/bin/python bench/change.py [--data ../shared/data/change/flood_ombria_albania]
"""

from __future__ import annotations

import argparse
import re
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from pipeline.change import iou
from pipeline.model import ModelRef, load_model
from pipeline.predict import predict_array
from pipeline.stitch import classify
from workflows.change import compare_arrays

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--threshold", type=float, default=0.0, help="water index threshold (model default 0)")
    args = parser.parse_args()
    model = ModelRef.of("water", threshold=args.threshold)
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
        change = (result.change == result.attrs["class_names"].index("land->water")).to_numpy()
        after, v_after = water(model, chip_after)
        truths.append(truth)
        preds["flood change (water after, not before)"].append(change)
        preds["water after only"].append(after & v_after)
        preds["baseline: all flooded"].append(np.ones_like(truth))
        preds["baseline: nothing flooded"].append(np.zeros_like(truth))
    seconds = time.perf_counter() - started
    flooded = np.mean([t.mean() for t in truths])
    print(f"OMBRIA S2 Albania: {len(truths)} chips of 256x256, {flooded:.1%} flooded; water model threshold "
          f"{args.threshold}; {seconds:.2f} s")
    print(f"{'method':42s} {'pooled IoU':>10s} {'mean chip IoU':>14s}")
    for name, pred in preds.items():
        pooled = iou(np.stack(pred), np.stack(truths))
        per_chip = np.mean([iou(p, t) for p, t in zip(pred, truths, strict=True)])
        print(f"{name:42s} {pooled:10.3f} {per_chip:14.3f}")


if __name__ == "__main__":
    main()
