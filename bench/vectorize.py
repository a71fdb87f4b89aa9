"""Vectorize-and-merge throughput and memory against one whole-raster ``rasterio.features.shapes`` call.

A seeded class raster (uint8, classes 1-3 as discs of radius 8-150 px on a background 0 that is not
polygonized; thousands of objects, many crossing tile borders) is written window by window. Then, in the same
run:

- baseline: this process reads the whole raster and runs one ``rasterio.features.shapes`` over it (mask:
  the object classes), consuming every polygon;
- ours: :func:`workflows.vectorize.vectorize_scene` (per-tile polygonize in Dask workers, seam merge, areas,
  attributes, a GeoPackage written), on a LocalCluster started before the clock starts.

Printed: seconds, megapixels per second, the ratio ours / baseline, polygon counts (which must be equal),
and peak resident memory: of the baseline process (its growth over the start), and of our client process
and largest worker, each sampled every 20 ms. Run it at two sizes to see what grows with the raster.

Usage::

    PYTHONPATH=$PWD python bench/vectorize.py --size 8192 --tile-size 1024 --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import rasterio
from affine import Affine
from rasterio.windows import Window


def make_classes(path: Path, size: int, seed: int = 0, block: int = 512) -> Path:
    """Discs (about one per 12,000 px²) drawn block by block, so the raster never sits whole in memory."""
    rng = np.random.default_rng(seed)
    count = size * size // 12_000
    centres = rng.integers(0, size, (count, 2))
    radii = rng.integers(8, 150, count)
    values = rng.integers(1, 4, count)
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0), nodata=255, tiled=True,
                   blockxsize=block, blockysize=block, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(SCENEWATCH_CLASSES="background,cleared,burnt,flooded")
        for r0 in range(0, size, block):
            for c0 in range(0, size, block):
                rows, cols = np.mgrid[r0 : r0 + block, c0 : c0 + block]
                out = np.zeros((block, block), dtype=np.uint8)
                near = (np.abs(centres[:, 0] - (r0 + block / 2)) < block / 2 + radii) & \
                       (np.abs(centres[:, 1] - (c0 + block / 2)) < block / 2 + radii)
                for (r, c), radius, value in zip(centres[near], radii[near], values[near]):
                    out[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = value
                dst.write(out, 1, window=Window(c0, r0, block, block))
    return path


class PeakRSS:
    """Samples the resident memory of some processes every 20 ms; keeps each one's peak."""

    def __init__(self, pids: list[int]) -> None:
        self.peaks = {pid: 0 for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        procs = {pid: psutil.Process(pid) for pid in self.peaks}
        while not self._stop.is_set():
            for pid, proc in procs.items():
                try:
                    self.peaks[pid] = max(self.peaks[pid], proc.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _baseline(path: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    """In a fresh process, so its memory is its own: read the raster, one shapes() call."""
    import rasterio.features

    start_rss = psutil.Process().memory_info().rss
    with PeakRSS([psutil.Process().pid]) as peak:
        started = time.perf_counter()
        with rasterio.open(path) as src:
            classes = src.read(1)
        count = sum(1 for _ in rasterio.features.shapes(classes, mask=(classes > 0) & (classes != 255)))
        seconds = time.perf_counter() - started
    queue.put((seconds, count, max(peak.peaks.values()) - start_rss))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best is reported")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from workflows.vectorize import vectorize_scene

    with tempfile.TemporaryDirectory() as tmp:
        path = make_classes(Path(tmp) / "bench.classes.tif", args.size)
        megapixels = args.size * args.size / 1e6
        ctx = mp.get_context("spawn")
        base = []
        for _ in range(args.repeat):
            queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
            proc = ctx.Process(target=_baseline, args=(str(path), queue))
            proc.start()
            base.append(queue.get())
            proc.join()
        base_s, base_count, base_rss = min(base)
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          memory_limit=0) as cluster, Client(cluster) as client:
            workers = list(client.run(os.getpid).values())
            ours = []
            for i in range(args.repeat):
                with PeakRSS([psutil.Process().pid, *workers]) as peak:
                    started = time.perf_counter()
                    result = vectorize_scene(path, Path(tmp) / f"out{i}", formats=("gpkg",), classes=[1, 2, 3],
                                             tile_size=args.tile_size, client=client, progress=False)
                    seconds = time.perf_counter() - started
                client_peak = peak.peaks[psutil.Process().pid]
                worker_peak = max(peak.peaks[w] for w in workers)
                ours.append((seconds, result.features, client_peak, worker_peak))
        our_s, our_count, client_peak, worker_peak = min(ours)
    mib = 1024 * 1024
    print(f"raster {args.size} x {args.size} ({megapixels:.0f} Mpx), tiles {args.tile_size} px, "
          f"{args.workers} workers, best of {args.repeat}")
    print(f"baseline rasterio.features.shapes (whole raster, 1 process): {base_s:6.2f} s  "
          f"{megapixels / base_s:6.1f} Mpx/s  {base_count} polygons  peak RSS growth {base_rss / mib:6.0f} MiB")
    print(f"scenewatch vectorize (tiles, merge, areas, gpkg):           {our_s:6.2f} s  "
          f"{megapixels / our_s:6.1f} Mpx/s  {our_count} polygons  peak RSS client {client_peak / mib:.0f} MiB, "
          f"largest worker {worker_peak / mib:.0f} MiB")
    print(f"throughput ratio ours / baseline: {base_s / our_s:.2f}")
    if our_count != base_count:
        raise SystemExit(f"polygon counts differ: {our_count} vs {base_count}")


if __name__ == "__main__":
    main()
