"""Archive throughput as the issue words it (issue 20): 8 single-scene ``scenewatch predict`` runs back to back
against one ``scenewatch run`` of the same scenes, on the same workers, alternated in one run.

    PYTHONPATH=$PWD .venv/bin/python -m bench.batch_cli [--scenes 8] [--size 4096] [--workers 2] [--rounds 2]

One Dask scheduler and ``--workers`` worker processes of one thread (``dask scheduler``, ``dask worker``) for
the whole run: every command connects to it (``predict --scheduler``, the job's ``dask.scheduler``), as a user
who keeps a cluster up would. A warm-up scene first. Then, ``--rounds`` times: each scene through its own
``scenewatch predict SCENE --model vegetation --bands naip --scheduler ADDRESS`` (defaults: COGs, polygons,
quicklook, report), one after the other, then ``scenewatch run JOB --force`` over the same scenes (scenes in
flight by default, its run report). Unlike :mod:`bench.batch_throughput`, whose one-at-a-time run is the batch
runner with one scene in flight inside one process, the single-scene side here pays what each command pays:
starting Python, connecting, planning, its summary and report. Prints ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.scenes import make_scene
from bench.stac_read import _free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _cli(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([str(BIN / "scenewatch"), *args, "-q"], cwd=REPO, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def measure(work: Path, scenes: int, size: int, workers: int, rounds: int) -> dict[str, Any]:
    paths = [make_scene(work / f"archive-{size}" / f"scene_{i:02d}.tif", size, seed=i) for i in range(scenes)]
    warm = make_scene(work / "warm" / "warm.tif", 512, seed=99)
    address = f"tcp://127.0.0.1:{_free_port()}"
    job = work / "cli-archive.yaml"
    job.write_text(yaml.safe_dump({
        "name": "cli-archive", "inputs": {"folder": str(paths[0].parent), "pattern": "*.tif"},
        "model": {"name": "vegetation"}, "bands": "naip", "dask": {"scheduler": address},
        "products": {"segmentation": {"proba": True}, "vectors": {"formats": ["gpkg"]}},
        "outputs": {"folder": str(work / "out-cli-batch"), "stac": False}}))
    env = os.environ | {"PYTHONPATH": str(REPO)}
    host, port = address.removeprefix("tcp://").split(":")
    scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", host, "--port", port, "--no-dashboard"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pool = subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", str(workers), "--nthreads", "1",
                             "--memory-limit", "0", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    singles: list[float] = []
    batches: list[float] = []
    try:
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=60)
        _cli("predict", str(warm), "--model", "vegetation", "--bands", "naip", "--out", str(work / "out-cli-warm"),
             "--scheduler", address)
        for _ in range(rounds):
            singles.append(sum(_cli("predict", str(p), "--model", "vegetation", "--bands", "naip", "--out",
                                    str(work / "out-cli-single"), "--scheduler", address) for p in paths))
            batches.append(_cli("run", str(job), "--force"))
    finally:
        for proc in (pool, scheduler):
            proc.terminate()
            proc.wait(timeout=30)
    one, many = min(singles), min(batches)
    return {"scenes": scenes, "size": size, "workers": workers, "singles_seconds": singles,
            "batch_seconds": batches, "ratio": one / many}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sw-bench-archive"))
    args = parser.parse_args()
    result = measure(args.work, args.scenes, args.size, args.workers, args.rounds)
    print(f"{args.scenes} scenes of {args.size}² on {args.workers} workers: {args.scenes} x scenewatch predict "
          f"{min(result['singles_seconds']):.1f} s, scenewatch run {min(result['batch_seconds']):.1f} s: "
          f"{result['ratio']:.2f}x (best of {args.rounds}; load average {os.getloadavg()[0]:.1f})")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
