"""Archive throughput: a batch with several scenes in flight against the same scenes one at a time (single-scene
runs back to back), on the same cluster, in the same process.

    PYTHONPATH=$PWD .venv/bin/python -m bench.batch_throughput [--scenes 8] [--size 4096] [--workers 2]
        [--polygons] [--rounds 1] [--work /tmp/sw-bench-archive]

One LocalCluster of ``--workers`` processes; a warm-up scene first (workers started, model loaded). Then,
``--rounds`` times, alternating: the job over the archive with ``scenes_in_flight=1`` (each scene planned,
predicted, vectorized and checksummed before the next starts: what 8 single-scene runs back to back do,
without their per-run start-up) and with the default (``--in-flight``, else the cluster's worker threads,
at least 2), each with ``force`` into its own folder. Prints ``RESULT {json}`` with the best seconds of
each and the ratio (throughput of the batch over one at a time), and the CPU seconds (client and workers)
of every run: on a machine others load, scenes in flight can only fill the gaps others leave.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from bench.cpu import CpuShare
from bench.scenes import make_scene


def measure(work: Path, scenes: int, size: int, workers: int, polygons: bool, rounds: int,
            in_flight: int | None = None) -> dict[str, Any]:
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
    seconds: dict[str, list[float]] = {"one_at_a_time": [], "in_flight": []}
    cpu: dict[str, list[float]] = {"one_at_a_time": [], "in_flight": []}  # client + workers, CPU seconds
    with dask_client(workers) as client:
        assert run_job(warm_job, client=client, progress=False, force=True).exit_code == 0
        default = in_flight or default_scenes_in_flight(client)
        for _ in range(rounds):
            for name, n in (("one_at_a_time", 1), ("in_flight", default)):
                start = time.perf_counter()
                with CpuShare(client) as used:
                    summary = run_job(archive_job, out=work / f"out-{name}", client=client, progress=False,
                                      force=True, scenes_in_flight=n)
                seconds[name].append(time.perf_counter() - start)
                cpu[name].append(used.client_seconds + used.worker_seconds)
                assert summary.count("done") == scenes, summary.outcomes
    one, many = min(seconds["one_at_a_time"]), min(seconds["in_flight"])
    return {"seconds": many, "pixels": size * size * len(paths), "one_at_a_time_seconds": one,
            "in_flight_seconds": many, "scenes_in_flight": default, "ratio": one / many, "all": seconds, "cpu": cpu,
            "scenes": scenes, "size": size, "workers": workers, "polygons": polygons}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--polygons", action="store_true", help="also a GeoPackage of polygons per scene")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=None, help="scenes in flight [default: the cluster's]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sw-bench-archive"))
    args = parser.parse_args()
    result = measure(args.work, args.scenes, args.size, args.workers, args.polygons, args.rounds, args.in_flight)
    print(f"{args.scenes} scenes of {args.size}² on {args.workers} workers: one at a time "
          f"{result['one_at_a_time_seconds']:.1f} s, {result['scenes_in_flight']} in flight "
          f"{result['in_flight_seconds']:.1f} s: {result['ratio']:.2f}x")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
