"""The baseline a user would write by hand: the script scenewatch has to beat.

Read the whole scene, loop over tiles in one process (no halo, hard crop), run the model, write the float32
probability raster and the class raster, polygonize the whole class raster. Run it as a script::

    python -m bench.naive SCENE OUT_DIR --model unet
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import shapes

from pipeline.models.contract import ModelRef
from pipeline.models.loader import load_model

__all__ = ["run_naive"]


def run_naive(scene: str | Path, out_dir: str | Path, ref: ModelRef, band_indexes: tuple[int, ...],
              tile: int = 512) -> int:
    """Returns the number of polygons. Everything in one process, whole rasters in memory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(ref)
    with rasterio.open(scene) as src:
        data = src.read(list(band_indexes)).astype(np.float32)
        profile = src.profile
    _, height, width = data.shape
    k = model.info.num_classes
    proba = np.zeros((k, height, width), dtype=np.float32)
    for r in range(0, height, tile):
        for c in range(0, width, tile):
            chunk = data[:, r : r + tile, c : c + tile]
            proba[:, r : r + tile, c : c + tile] = model.predict(chunk[None])[0]
    classes = np.argmax(proba, axis=0).astype(np.uint8)
    profile.update(count=k, dtype="float32", nodata=None, compress="deflate", tiled=True)
    with rasterio.open(out_dir / "naive.proba.tif", "w", **profile) as dst:
        dst.write(proba)
    profile.update(count=1, dtype="uint8")
    with rasterio.open(out_dir / "naive.classes.tif", "w", **profile) as dst:
        dst.write(classes, 1)
    return sum(1 for _ in shapes(classes, transform=profile["transform"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene")
    parser.add_argument("out_dir")
    parser.add_argument("--model", default="{}", help="JSON kwargs for build_smp_model, or a built-in name")
    parser.add_argument("--bands", default="1,2,3,4")
    args = parser.parse_args()
    if args.model.startswith("{"):
        ref = ModelRef.from_factory("pipeline.models.network:build_smp_model", **json.loads(args.model))
    else:
        ref = ModelRef.of(args.model)
    print(run_naive(args.scene, args.out_dir, ref, tuple(int(b) for b in args.bands.split(","))))


if __name__ == "__main__":
    main()
