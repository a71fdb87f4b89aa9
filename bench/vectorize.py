"""Vectorize-and-merge throughput and memory against one whole-raster ``rasterio.features.shapes`` call.

A seeded class raster (uint8, classes 1-3 as discs of radius 8-150 px on a background 0 that is not
polygonized; thousands of objects, many crossing tile borders) is written window by window. Then, in the same
run:

- baseline: this process reads the whole raster and runs one ``rasterio.features.shapes`` over it (mask:
  the object classes), consuming every polygon;
- ours: :func:`workflows.vectorize.vectorize_scene` (per-tile polygonize in Dask workers, seam merge, areas,
  attributes, a GeoPackage written), on a LocalCluster started before the clock starts.

Printed: seconds, megapixels per second, the ratio ours / baseline, polygon counts (which must be equal),
and peak resident memory (:class:`bench.memory.PeakMemory`, sampled every 20 ms for the baseline and 0.1 s for
ours): of the baseline process, of all our processes together (client, scheduler, nannies, workers) and of the
largest worker. Run it at several sizes to see what grows with the raster. Also printed: CPU seconds used
(baseline process; our client and workers), which other processes' load does not inflate. The cluster is
warmed up on a small raster first (a worker's first task imports scipy, pyarrow and shapely).

Usage::

    PYTHONPATH=$PWD python -m bench.vectorize --size 8192 --tile-size 1024 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import tempfile
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
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0),
               "nodata": 255, "tiled": True, "blockxsize": block, "blockysize": block, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(SCENEWATCH_CLASSES="background,cleared,burnt,flooded")
        for r0 in range(0, size, block):
            for c0 in range(0, size, block):
                rows, cols = np.mgrid[r0 : r0 + block, c0 : c0 + block]
                out = np.zeros((block, block), dtype=np.uint8)
                near = (np.abs(centres[:, 0] - (r0 + block / 2)) < block / 2 + radii) & \
                       (np.abs(centres[:, 1] - (c0 + block / 2)) < block / 2 + radii)
                for (r, c), radius, value in zip(centres[near], radii[near], values[near], strict=True):
                    out[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = value
                dst.write(out, 1, window=Window(c0, r0, block, block))
    return path


def _baseline(path: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    """In a fresh process (its memory is its own): read the raster, one shapes() call over it."""
    import rasterio.features

    started, cpu = time.perf_counter(), time.process_time()
    with rasterio.open(path) as src:
        classes = src.read(1)
    count = sum(1 for _ in rasterio.features.shapes(classes, mask=(classes > 0) & (classes != 255)))
    queue.put((time.perf_counter() - started, count, time.process_time() - cpu))


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (other processes' load does not inflate it)."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest is reported")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from bench.memory import PeakMemory
    from pipeline.config import VectorizeConfig
    from workflows.vectorize import vectorize_scene

    mib = 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        path = make_classes(Path(tmp) / "bench.classes.tif", args.size)
        warmup = make_classes(Path(tmp) / "warmup.classes.tif", 512, seed=1)
        megapixels = args.size * args.size / 1e6
        ctx = mp.get_context("spawn")
        base = []
        for _ in range(args.repeat):
            queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
            proc = ctx.Process(target=_baseline, args=(str(path), queue))
            proc.start()
            with PeakMemory(interval=0.02, pid=proc.pid) as mem:
                seconds, count, cpu = queue.get()
                proc.join()
            base.append((seconds, count, mem.peak, cpu))
        base_s, base_count, base_peak, _ = min(base)
        base_cpu = min(b[3] for b in base)
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          memory_limit=0) as cluster, Client(cluster) as client:
            workers = list(client.run(os.getpid).values())
            # first use of each worker imports scipy, pyarrow, shapely: not part of the throughput
            vectorize_scene(warmup, Path(tmp) / "warm", VectorizeConfig(classes=[1, 2, 3], tile_size=256),
                            client=client, progress=False)
            config = VectorizeConfig(formats=("gpkg",), classes=[1, 2, 3], tile_size=args.tile_size)
            ours = []
            for i in range(args.repeat):
                # 0.1 s sampling: the samplers run in this process, whose CPU time is counted below
                tree, per_worker = PeakMemory(interval=0.1), [PeakMemory(interval=0.1, pid=w) for w in workers]
                with tree, contextlib.ExitStack() as stack:
                    for mem in per_worker:
                        stack.enter_context(mem)
                    started = time.perf_counter()
                    cpu_client, cpu_workers = _cpu_seconds([os.getpid()]), _cpu_seconds(workers)
                    result = vectorize_scene(path, Path(tmp) / f"out{i}", config, client=client, progress=False)
                    seconds = time.perf_counter() - started
                    cpu_client = _cpu_seconds([os.getpid()]) - cpu_client
                    cpu_workers = _cpu_seconds(workers) - cpu_workers
                ours.append((seconds, result.features, tree.peak, max(m.peak for m in per_worker), cpu_client,
                             cpu_workers))
        our_s, our_count, tree_peak, worker_peak, _, _ = min(ours)
        our_client_cpu, our_worker_cpu = min(o[4] for o in ours), min(o[5] for o in ours)
        our_cpu = our_client_cpu + our_worker_cpu
    print(f"raster {args.size} x {args.size} ({megapixels:.0f} Mpx), tiles {args.tile_size} px, "
          f"{args.workers} workers, fastest of {args.repeat}, load average {os.getloadavg()[0]:.1f}")
    print(f"baseline rasterio.features.shapes (whole raster, 1 process): {base_s:6.2f} s  "
          f"{megapixels / base_s:6.1f} Mpx/s  {base_count} polygons  peak RSS {base_peak / mib:.0f} MiB")
    print(f"scenewatch vectorize (tiles, merge, areas, gpkg):           {our_s:6.2f} s  "
          f"{megapixels / our_s:6.1f} Mpx/s  {our_count} polygons  peak RSS all processes {tree_peak / mib:.0f} MiB, "
          f"largest worker {worker_peak / mib:.0f} MiB")
    print(f"CPU seconds: baseline {base_cpu:.2f}, ours {our_cpu:.2f} (client {our_client_cpu:.2f}, workers "
          f"{our_worker_cpu:.2f}); "
          f"Mpx per CPU-second ratio ours / baseline {base_cpu / our_cpu:.2f}")
    print(f"throughput ratio ours / baseline: {base_s / our_s:.2f}")
    if our_count != base_count:
        raise SystemExit(f"polygon counts differ: {our_count} vs {base_count}")


if __name__ == "__main__":
    main()
