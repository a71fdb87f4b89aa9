"""The Dask client's share of the CPU time of one scene: COGs (predict), then polygons (vectorize).

    PYTHONPATH=$PWD .venv/bin/python -m bench.client_share --scene scene_4096.tif --out /tmp/o [--polygons]

Prints ``RESULT {json}``: per stage (``predict``, ``vectorize``, ``total``) the client process's CPU
seconds, the workers' and the share (client / all), and the wall seconds; ``client_loop`` of the client's
seconds went to Dask's event loop (a LocalCluster's scheduler runs there, and costs CPU per second of wall
time even idle), ``own_share`` is the share without it: scenewatch's own work in the client. A warm-up
scene runs first on the same cluster (workers started, model loaded), as every scene of a batch but the
first. Uses only
``plan_scene``, ``predict_scene`` and ``vectorize_scene``, so the same script measures an older checkout:
``bench/run.py`` copies it and ``bench/cpu.py`` into a git worktree of that commit and runs it there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.cpu import CpuShare


def _stage(cpu: CpuShare, seconds: float) -> dict[str, float]:
    return {"client": cpu.client_seconds, "workers": cpu.worker_seconds, "share": cpu.share, "seconds": seconds,
            "client_loop": cpu.loop_seconds,
            "own_share": (cpu.client_seconds - cpu.loop_seconds) / max(cpu.client_seconds + cpu.worker_seconds, 1e-9)}


def measure(scene: str, out: str, workers: int, polygons: bool, warm_up: str | None,
            model: str = "vegetation") -> dict[str, Any]:
    from pipeline.config import PredictConfig, VectorizeConfig
    from workflows.cluster import dask_client
    from workflows.scene import plan_scene, predict_scene
    from workflows.vectorize import vectorize_scene

    config = PredictConfig(bands="naip")
    vectors = VectorizeConfig(formats=("gpkg",))
    result: dict[str, Any] = {}
    with dask_client(workers) as client:
        if warm_up:
            done = predict_scene(plan_scene(warm_up, model, config), out, client=client, progress=False)
            if polygons:
                vectorize_scene(done.classes_path, out, vectors, proba_path=done.proba_path, client=client,
                                progress=False)
        with CpuShare(client) as total:
            start = time.perf_counter()
            with CpuShare(client) as cpu:
                done = predict_scene(plan_scene(scene, model, config), out, client=client, progress=False)
            result["predict"] = _stage(cpu, time.perf_counter() - start)
            if polygons:
                tick = time.perf_counter()
                with CpuShare(client) as cpu:
                    vectorize_scene(done.classes_path, out, vectors, proba_path=done.proba_path, client=client,
                                    progress=False)
                result["vectorize"] = _stage(cpu, time.perf_counter() - tick)
        result["total"] = _stage(total, time.perf_counter() - start)
    import workflows

    result["code"] = str(Path(workflows.__file__).resolve().parents[1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--polygons", action="store_true", help="also vectorize the classes (gpkg)")
    parser.add_argument("--warm-up", default=None, help="a small scene run first on the same cluster")
    parser.add_argument("--model", default="vegetation")
    args = parser.parse_args()
    print("RESULT " + json.dumps(measure(args.scene, args.out, args.workers, args.polygons, args.warm_up,
                                         args.model)))


if __name__ == "__main__":
    main()
