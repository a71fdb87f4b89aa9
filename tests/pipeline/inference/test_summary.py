"""The area per class and the preview read from a class COG: memory that does not grow with the raster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from pipeline.products import Tag

REPO = Path(__file__).resolve().parents[3]

# In a fresh process: the peak resident memory added by reading the areas and the preview of a class raster,
# after a warm-up read of a small one (imports, GDAL's drivers), and GDAL's cache size before and after.
# The peak is the kernel's VmHWM of this process's memory, not getrusage's ru_maxrss, which a process started
# from a larger one (pytest after making the raster) inherits across exec.
_CHILD = """
import json, re, sys
from rasterio.env import get_gdal_config
from pipeline.inference.summary import read_class_areas, read_classes_preview
def peak_kib():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1))
read_class_areas(sys.argv[2]); read_classes_preview(sys.argv[2])
cache = get_gdal_config("GDAL_CACHEMAX")
start = peak_kib()
areas = read_class_areas(sys.argv[1])
preview = read_classes_preview(sys.argv[1])
grown = peak_kib() - start
print(json.dumps({"grown_kib": grown, "pixels": list(areas.pixels), "nodata": areas.nodata_pixels,
                  "preview": list(preview.shape), "cache": [cache, get_gdal_config("GDAL_CACHEMAX")]}))
"""


def _classes(path: Path, rows: int, cols: int) -> np.ndarray:
    """A two-class raster (tiled GeoTIFF, DEFLATE, 512 px blocks, nodata 255, no overviews) of diagonal bands."""
    period = np.arange(74, dtype=np.uint8) // 37  # (row + column) // 37 % 2, in uint8 throughout
    row, col = (np.arange(n, dtype=np.int64) % 74 for n in (rows, cols))
    classes = period[np.add.outer(row.astype(np.uint8), col.astype(np.uint8)) % 74]
    classes[:100, :100] = 255
    profile = {"driver": "GTiff", "width": cols, "height": rows, "count": 1, "dtype": "uint8", "nodata": 255,
               "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 10, 10), "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(classes, 1)
        dst.update_tags(**{Tag.CLASSES: "land,water"})
    return classes


def test_reading_a_large_class_raster_keeps_memory_flat(tmp_path: Path) -> None:
    """128 MiB of decoded classes, read for their areas and preview: GDAL's block cache (5 % of RAM by
    default) had kept every block, 140 MiB more at the peak; capped, the peak grows by the strip read and
    the small cache only, and the cache's size is given back after."""
    small, large = tmp_path / "small.tif", tmp_path / "large.tif"
    _classes(small, 512, 512)
    classes = _classes(large, 8192, 16384)
    expected = [int((classes == v).sum()) for v in (0, 1)]
    del classes
    run = subprocess.run([sys.executable, "-c", _CHILD, str(large), str(small)], cwd=REPO, capture_output=True,
                         text=True, check=True)
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["pixels"] == expected
    assert got["nodata"] == 100 * 100
    assert got["preview"] == [512, 1024]
    assert got["cache"][0] == got["cache"][1]
    assert got["grown_kib"] < 64 * 1024, f"peak grew by {got['grown_kib'] / 1024:.0f} MiB"
