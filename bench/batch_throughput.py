"""Archive throughput: a batch with several scenes in flight against the same scenes one at a time (single-scene
runs back to back), on the same cluster, in the same process.

    PYTHONPATH=$PWD .venv/bin/python -m bench.batch_throughput [--scenes 8] [--size 4096] [--workers 2]
        [--polygons] [--rounds 1] [--also 2] [--work /tmp/sw-bench-archive]

One LocalCluster of ``--workers`` processes; a warm-up scene first (workers started, model loaded). Then,
``--rounds`` times, alternating: the job over the archive with ``scenes_in_flight=1`` (each scene planned,
predicted, vectorized and checksummed before the next starts: what 8 single-scene runs back to back do,
without their per-run start-up) and with the default (``--in-flight``, else
:func:`workflows.cluster.default_scenes_in_flight`), then with each ``--also`` count, each with ``force``
into its own folder. Prints ``RESULT {json}`` with the best seconds of each and the ratio (throughput of
the batch over one at a time), the CPU seconds (client and workers) of every run (on a machine others
load, scenes in flight can only fill the gaps others leave) and its peak memory (the client's and every
worker's resident memory summed, sampled every 0.1 s: scenes in flight multiply what the workers hold).
Before each run the workers are restarted and warmed up again, so that a run's peak is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.cpu import CpuShare
from bench.scenes import make_scene


class PeakMemory:
    """The largest sum of resident memory of this process and its descendants (a LocalCluster's nannies
    and workers), sampled every ``interval`` seconds between ``__enter__`` and ``__exit__``."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak_bytes = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(work: Path, scenes: int, size: int, workers: int, polygons: bool, rounds: int,
            in_flight: int | None = None, also: tuple[int, ...] = ()) -> dict[str, Any]:
    from workflows.batch import run_job
    from workflows.cluster import dask_client, default_scenes_in_flight

    archive = work / f"archive-{size}"
    paths = [make_scene(archive / f"scene_{i:02d}.tif", size, seed=i) for i in range(scenes)]
    warm = make_scene(work / "warm" / "warm.tif", 512, seed=99)
    products: dict[str, Any] = {"segmentation": {"proba": True}}
    if polygons:
        products["vectors"] = {"formats": ["gpkg"]}

    def job(folder: Path, name: str) -> Path:
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "inputs": {"folder": str(folder), "pattern": "*.tif"},
                                        "model": {"name": "vegetation"}, "bands": "naip", "products": products,
                                        "outputs": {"folder": str(work / f"out-{name}"), "stac": False}}))
        return path

    archive_job, warm_job = job(archive, "archive"), job(warm.parent, "warm")
    seconds: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}  # client + workers, CPU seconds
    peak: dict[str, list[float]] = {}  # client + workers, GiB resident at the most
    with dask_client(workers) as client:
        assert run_job(warm_job, client=client, progress=False, force=True).exit_code == 0
        default = in_flight or default_scenes_in_flight(client)
        runs = [("one_at_a_time", 1), ("in_flight", default), *((f"in_flight_{n}", n) for n in also)]
        for _ in range(rounds):
            for name, n in runs:
                client.restart()  # fresh workers: each run's peak memory is its own, not the runs' before
                assert run_job(warm_job, client=client, progress=False, force=True).exit_code == 0
                start = time.perf_counter()
                with CpuShare(client) as used, PeakMemory() as memory:
                    summary = run_job(archive_job, out=work / f"out-{name}", client=client, progress=False,
                                      force=True, scenes_in_flight=n)
                seconds.setdefault(name, []).append(time.perf_counter() - start)
                cpu.setdefault(name, []).append(used.client_seconds + used.worker_seconds)
                peak.setdefault(name, []).append(memory.peak_bytes / 2**30)
                assert summary.count("done") == scenes, summary.outcomes
    one, many = min(seconds["one_at_a_time"]), min(seconds["in_flight"])
    return {"seconds": many, "pixels": size * size * len(paths), "one_at_a_time_seconds": one,
            "in_flight_seconds": many, "scenes_in_flight": default, "ratio": one / many, "all": seconds, "cpu": cpu,
            "peak_gib": peak, "ratios": {name: one / min(s) for name, s in seconds.items()},
            "scenes": scenes, "size": size, "workers": workers, "polygons": polygons}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--polygons", action="store_true", help="also a GeoPackage of polygons per scene")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=None, help="scenes in flight [default: the cluster's]")
    parser.add_argument("--also", type=int, action="append", default=[],
                        help="also this many scenes in flight, in the same rounds (repeatable)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sw-bench-archive"))
    args = parser.parse_args()
    result = measure(args.work, args.scenes, args.size, args.workers, args.polygons, args.rounds, args.in_flight,
                     tuple(args.also))
    print(f"{args.scenes} scenes of {args.size}² on {args.workers} workers: one at a time "
          f"{result['one_at_a_time_seconds']:.1f} s, {result['scenes_in_flight']} in flight "
          f"{result['in_flight_seconds']:.1f} s: {result['ratio']:.2f}x")
    for name, ratio in result["ratios"].items():
        print(f"  {name}: best {min(result['all'][name]):.1f} s, {ratio:.2f}x, CPU {min(result['cpu'][name]):.1f} s, "
              f"peak {max(result['peak_gib'][name]):.2f} GiB")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
