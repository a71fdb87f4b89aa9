"""One polygon tile task's CPU, this checkout against an older commit's code, interleaved in one run.

The tile task of the polygon pass (``workflows.vectorize._vectorize_tile``): read a core's classes and
stored probabilities, keep mask, each pixel's own-class probability, :func:`polygonize_core`,
:func:`split_border`, and the interior rows (:func:`pipeline.vectors.export.feature_table`). The older
code is ``pipeline/vectors/vectorize.py`` and ``pipeline/vectors/merge.py`` of ``--before`` (``git show``),
loaded beside this checkout's as modules of their own; ``feature_table`` is this checkout's for both, so
what differs is the path up to ``split_border``. Per tile the two run alternately (which goes first
alternates too), each timed in CPU seconds of this process (other processes' load does not count).

Every tile's results are checked equal: the interior rows (every column, geometry WKB included) and the
border pieces (geometry WKB, every attribute array, the four edge strips).

Usage::

    PYTHONPATH=$PWD .venv/bin/python -m bench.vectorize_tile /tmp/o8/scene-8192.classes.tif \\
        --before 8e5d367 --repeat 3
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import shapely

from pipeline.config import VectorizeConfig
from pipeline.inference.read import open_scene
from pipeline.products import class_names_from_tags
from pipeline.vectors import merge as merge_now
from pipeline.vectors import vectorize as vectorize_now
from pipeline.vectors.export import LayerSpec, feature_table
from pipeline.vectors.measure import area_basis
from tiles.grid import Tile, TileGrid, plan_tiles

_REPO = Path(__file__).resolve().parent.parent


def load_before(rev: str, folder: Path) -> tuple[ModuleType, ModuleType]:
    """``pipeline/vectors/vectorize.py`` and ``merge.py`` as of ``rev``, as modules beside this checkout's."""
    modules = []
    for name in ("vectorize", "merge"):
        text = subprocess.run(["git", "show", f"{rev}:pipeline/vectors/{name}.py"], cwd=_REPO, check=True,
                              capture_output=True, text=True).stdout
        path = folder / f"before_{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(f"before_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return modules[0], modules[1]


def tile_task(vec: ModuleType, mrg: ModuleType, classes_path: str, proba_path: str, grid: TileGrid,
              tile: Tile, spec: LayerSpec) -> tuple[tuple[Any, Any], float, float]:
    """``_vectorize_tile`` (no sieve, every class kept) with ``vec``'s and ``mrg``'s functions; also the CPU
    seconds up to ``split_border`` and in all."""
    start = time.process_time()
    classes, valid = vec.read_class_window(classes_path, tile.core_window)
    keep = vec.keep_mask(classes, valid, None)
    stored = vec.read_stored_proba(proba_path, tile.core_window)
    if hasattr(vec, "own_class_stored"):  # picks the own band from the stored bands (this checkout)
        proba = vec.own_class_stored(stored, classes)
    else:
        proba = vec.own_class_proba(vec.decode_proba(stored), classes)
    pieces = vec.polygonize_core(classes, keep, tile.core_window, grid.bounds, proba=proba)
    interior, border = mrg.split_border(pieces)
    middle = time.process_time()
    table = feature_table(interior, spec)
    return (table, border), middle - start, time.process_time() - start


def _wkb(geometry: np.ndarray) -> list[bytes]:
    return list(shapely.to_wkb(geometry))


def check_same(tile: Tile, a: tuple[pa.Table, Any], b: tuple[pa.Table, Any]) -> None:
    (table_a, border_a), (table_b, border_b) = a, b
    where = f"tile {tile.row},{tile.col}"
    if not table_a.equals(table_b):
        raise AssertionError(f"{where}: interior rows differ")
    pa_, pb = border_a.pieces, border_b.pieces
    if _wkb(pa_.geometry) != _wkb(pb.geometry):
        raise AssertionError(f"{where}: border geometry differs")
    for field in pa_.__slots__[1:]:
        x, y = getattr(pa_, field), getattr(pb, field)
        if x.dtype != y.dtype or x.tobytes() != y.tobytes():
            raise AssertionError(f"{where}: border {field} differs")
    for edge in ("top", "bottom", "left", "right"):
        x, y = getattr(border_a, edge), getattr(border_b, edge)
        if x.dtype != y.dtype or not np.array_equal(x, y):
            raise AssertionError(f"{where}: {edge} strip differs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("classes", help="a class raster with its .proba.tif beside it")
    parser.add_argument("--before", default="8e5d367", help="the commit whose tile code is the baseline")
    parser.add_argument("--tile-size", type=int, default=VectorizeConfig().tile_size, help="default: the polygon pass'")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the tiles")
    parser.add_argument("--tiles", type=int, default=0, help="only the first N tiles (0: all)")
    args = parser.parse_args()

    classes_path = args.classes
    proba_path = classes_path.replace(".classes.tif", ".proba.tif")
    meta = open_scene(classes_path)
    grid = plan_tiles(meta.height, meta.width, args.tile_size, 0)
    tiles = list(grid)[: args.tiles or None]
    spec = LayerSpec(scene_id="bench", crs_wkt=meta.crs.to_wkt(), transform=meta.transform,
                     basis=area_basis(meta.crs, meta.transform, meta.height, meta.width),
                     class_names=dict(enumerate(class_names_from_tags(meta.tags))))
    with tempfile.TemporaryDirectory() as folder:
        before = load_before(args.before, Path(folder))
        now = (vectorize_now, merge_now)
        tile_task(*now, classes_path, proba_path, grid, tiles[0], spec)  # warm: imports, GDAL's caches
        tile_task(*before, classes_path, proba_path, grid, tiles[0], spec)
        cpu: dict[str, list[float]] = {"before": [], "now": [], "before_all": [], "now_all": []}
        for rep in range(args.repeat):
            for i, tile in enumerate(tiles):
                order = [("before", before), ("now", now)]
                if (rep + i) % 2:
                    order.reverse()
                results = {}
                for name, mods in order:
                    results[name], part, whole = tile_task(*mods, classes_path, proba_path, grid, tile, spec)
                    cpu[name].append(part)
                    cpu[f"{name}_all"].append(whole)
                if rep == 0:
                    check_same(tile, results["before"], results["now"])
    n = len(tiles) * args.repeat
    print(f"{len(tiles)} tiles of {args.tile_size}² x {args.repeat} passes, {classes_path}; outputs identical")
    for label, b, a in (("up to split_border", "before", "now"), ("with feature_table", "before_all", "now_all")):
        tb, ta = 1e3 * sum(cpu[b]) / n, 1e3 * sum(cpu[a]) / n
        mb, ma = 1e3 * float(np.median(cpu[b])), 1e3 * float(np.median(cpu[a]))
        print(f"{label:20s} before {tb:6.1f} ms/tile (median {mb:6.1f}), now {ta:6.1f} ms/tile (median {ma:6.1f}): "
              f"{tb / ta:.2f}x")


if __name__ == "__main__":
    main()
