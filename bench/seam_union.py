"""The seam union of pixel-aligned pieces against shapely's overlay union, on a real class raster, in one run.

1. Per group: the class raster is polygonized tile by tile and grouped into objects as the pipeline does
   (:class:`pipeline.vectors.merge.SeamGroups`); every group of several pieces is unioned both ways
   (``shapely.union_all``, what the merge ran before, and :func:`pipeline.vectors.merge.union_pieces`), timed
   in CPU seconds, and checked: equal (``shapely.equals``), valid, the same holes. With ``--before``, the
   ``union_pieces`` of that commit's ``merge.py`` too, in the same loop, checked byte for byte (WKB) against
   this checkout's.
2. The vectorize stage end to end: ``scenewatch vectorize CLASSES`` (defaults: 1024 px tiles, a GeoPackage,
   the probability raster beside it) on this checkout's last commit and on the same tree with
   ``pipeline/vectors/merge.py`` as of ``--before``, alternated, wall seconds; the two layers' features are
   compared (ids, classes, geometries equal).

Usage::

    PYTHONPATH=$PWD .venv/bin/python -m bench.seam_union OUT/scene.classes.tif --before 2b931a2 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from types import ModuleType

import numpy as np
import rasterio
import shapely

from pipeline.vectors.merge import SeamGroups, outline, split_border, union_pieces
from pipeline.vectors.vectorize import polygonize_core
from tiles.grid import TileGrid


def merge_module_of(commit: str) -> ModuleType:
    """``pipeline/vectors/merge.py`` as of ``commit``, loaded beside this checkout's."""
    source = subprocess.run(["git", "show", f"{commit}:pipeline/vectors/merge.py"], check=True,
                            capture_output=True, text=True).stdout
    module = ModuleType(f"merge_{commit}")
    exec(compile(source, f"{commit}:pipeline/vectors/merge.py", "exec"), module.__dict__)
    return module


def time_groups(path: str, tile_size: int, before: str | None = None) -> None:
    with rasterio.open(path) as src:
        classes = src.read(1)
        valid = src.read_masks(1) > 0
    grid = TileGrid(classes.shape[0], classes.shape[1], tile_size, 0)
    seams, held, rows = SeamGroups(grid), {}, []
    old = merge_module_of(before) if before else None
    earlier: list[float] = []
    for tile in grid:
        r, c = tile.core_window.relative_to(grid.bounds)
        _, border = split_border(polygonize_core(classes[r, c], valid[r, c], tile.core_window, grid.bounds))
        if len(border.pieces):
            held[tile.row * grid.cols + tile.col] = border.pieces
        for members in seams.add(tile, outline(border)):
            if len(members) == 1:
                continue
            pieces = np.array([held[i].geometry[k] for i, k in members], dtype=object)
            started = time.process_time()
            overlay = shapely.union_all(pieces)
            middle = time.process_time()
            ours = union_pieces(pieces)
            done = time.process_time()
            if old is not None:
                theirs = old.union_pieces(pieces)
                earlier.append(time.process_time() - done)
                if shapely.to_wkb(theirs) != shapely.to_wkb(ours):
                    raise SystemExit(f"group of {len(pieces)} pieces: union_pieces of {before} differs")
            if not (shapely.is_valid(ours) and shapely.equals(ours, overlay)
                    and len(ours.interiors) == len(overlay.interiors)):
                raise SystemExit(f"group of {len(pieces)} pieces: the unions differ")
            rows.append((len(pieces), int(shapely.get_num_coordinates(pieces).sum()), len(ours.interiors),
                         middle - started, done - middle))
    table = np.array(rows, dtype=np.float64)
    k = int(np.argmax(table[:, 1]))
    print(f"{Path(path).name}, {tile_size} px tiles: {len(table)} groups of several pieces, all equal "
          f"(shapely.equals, valid, same holes)")
    print(f"  largest group: {table[k, 0]:.0f} pieces, {table[k, 1]:,.0f} coordinates, {table[k, 2]:.0f} holes: "
          f"union_all {table[k, 3]:.2f} s CPU, union_pieces {table[k, 4]:.2f} s ({table[k, 3] / table[k, 4]:.1f}x)")
    rest = np.ones(len(table), dtype=bool)
    rest[k] = False
    print(f"  the other {rest.sum()} groups: union_all {table[rest, 3].sum():.2f} s, union_pieces "
          f"{table[rest, 4].sum():.2f} s; all groups {table[:, 3].sum():.2f} -> {table[:, 4].sum():.2f} s "
          f"({table[:, 3].sum() / table[:, 4].sum():.1f}x)")
    if earlier:
        was = np.array(earlier)
        print(f"  union_pieces of {before} (byte-identical, all groups): largest group {was[k]:.2f} -> "
              f"{table[k, 4]:.2f} s ({was[k] / table[k, 4]:.1f}x); the others {was[rest].sum():.2f} -> "
              f"{table[rest, 4].sum():.2f} s; all {was.sum():.2f} -> {table[:, 4].sum():.2f} s")


def export_tree(commit: str, dest: Path, merge_from: str | None = None) -> None:
    """The repository at ``commit`` into ``dest``; with ``merge_from``, merge.py as of that commit instead."""
    data = subprocess.run(["git", "archive", commit], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    if merge_from:
        old = subprocess.run(["git", "show", f"{merge_from}:pipeline/vectors/merge.py"], check=True,
                             capture_output=True).stdout
        (dest / "pipeline/vectors/merge.py").write_bytes(old)


def time_vectorize(path: str, before: str, rounds: int, work: Path) -> None:
    trees = {"before": work / "before", "after": work / "after"}
    export_tree("HEAD", trees["after"])
    export_tree("HEAD", trees["before"], merge_from=before)
    times: dict[str, list[float]] = {"before": [], "after": []}
    for n in range(rounds):
        for name, tree in trees.items():
            out = work / f"out-{name}-{n}"
            env = {**os.environ, "PYTHONPATH": str(tree), "OGR_CURRENT_DATE": "2000-01-01T00:00:00Z"}
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "workflows.cli", "vectorize", path, "--out", str(out), "-q"],
                           check=True, env=env, cwd=tree)
            times[name].append(time.perf_counter() - started)
    layers = {name: next((work / f"out-{name}-0").glob("*.gpkg")) for name in trees}
    import pyogrio

    old, new = (pyogrio.read_dataframe(layers[name], layer=layers[name].stem) for name in ("before", "after"))
    same_rows = len(old) == len(new) and (old.drop(columns="geometry").equals(new.drop(columns="geometry")))
    equal = bool(np.all(shapely.equals(old.geometry.values, new.geometry.values))) if same_rows else False
    identical = layers["before"].read_bytes() == layers["after"].read_bytes()
    print(f"scenewatch vectorize {Path(path).name} (defaults), wall seconds, alternated: before "
          f"{', '.join(f'{t:.1f}' for t in times['before'])}; after {', '.join(f'{t:.1f}' for t in times['after'])}")
    print(f"  layers: {len(new)} features, attributes equal {same_rows}, geometries equal {equal}, "
          f"GeoPackage byte-identical {identical}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("classes")
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--before", default=None, help="commit whose merge.py is the baseline of part 2")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print("load average at start:", " ".join(f"{x:.1f}" for x in os.getloadavg()))
    time_groups(args.classes, args.tile_size, args.before)
    if args.before and args.rounds:  # --rounds 0: the per-group part only
        with tempfile.TemporaryDirectory() as work:
            time_vectorize(args.classes, args.before, args.rounds, Path(work))
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load average at end:",
          " ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
