"""The Dask client's share of the CPU time of one scene: COGs (predict), then polygons (vectorize).

    PYTHONPATH=$PWD .venv/bin/python -m bench.client_share --scene scene_4096.tif --out /tmp/o [--polygons]

Prints ``RESULT {json}``: per stage (``predict``, ``vectorize``, ``total``) the client process's CPU
seconds, the workers' and the share (client / all), and the wall seconds; ``client_loop`` of the client's
seconds went to Dask's event loop (a LocalCluster's scheduler runs there, and costs CPU per second of wall
time even idle), ``own_share`` is the share without it: scenewatch's own work in the client;
``scheduler`` of the others' seconds went to the scheduler's process where it has one of its own (0 with
the scheduler in the client). ``start`` is the local cluster's start-up: wall seconds until the client is
connected with every worker, and the client's CPU seconds meanwhile. A warm-up scene runs first on the same
cluster (workers started, model loaded), as every scene of a batch but the first. Uses only
``dask_client``, ``plan_scene``, ``predict_scene`` and ``vectorize_scene``, so the same script measures an
older checkout: ``bench/run.py`` copies it and ``bench/cpu.py`` into a git worktree of that commit and runs
it there.

Side by side in one run: ``--before COMMIT`` (and ``--model`` as often as needed) runs each model on a
worktree of COMMIT and on this checkout, alternated, ``--rounds`` times each, every run a process of its
own, and prints a markdown table of the figures beside the ``RESULT`` line of all runs::

    PYTHONPATH=$PWD .venv/bin/python -m bench.client_share --scene scene_4096.tif --warm-up warm.tif \\
        --polygons --model vegetation --model unet-bundle --before 8b34163 --out /tmp/o
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.cpu import CpuShare


def _stage(cpu: CpuShare, seconds: float) -> dict[str, float]:
    return {"client": cpu.client_seconds, "workers": cpu.worker_seconds, "share": cpu.share, "seconds": seconds,
            "client_loop": cpu.loop_seconds, "scheduler": getattr(cpu, "scheduler_seconds", 0.0),
            "own_share": (cpu.client_seconds - cpu.loop_seconds) / max(cpu.client_seconds + cpu.worker_seconds, 1e-9)}


def measure(scene: str, out: str, workers: int, polygons: bool, warm_up: str | None,
            model: str = "vegetation") -> dict[str, Any]:
    import psutil

    from pipeline.config import PredictConfig, VectorizeConfig
    from workflows.cluster import dask_client
    from workflows.scene import plan_scene, predict_scene
    from workflows.vectorize import vectorize_scene

    config = PredictConfig(bands="naip")
    vectors = VectorizeConfig(formats=("gpkg",))
    result: dict[str, Any] = {}
    me = psutil.Process()
    cpu, wall = sum(me.cpu_times()[:2]), time.perf_counter()
    with dask_client(workers) as client:
        result["start"] = {"seconds": time.perf_counter() - wall, "client": sum(me.cpu_times()[:2]) - cpu}
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


def side_by_side(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every model on the ``--before`` commit's worktree and on this checkout, alternated, each run a
    process of its own (``bench.run._script``); one dict per run, with ``model``, ``code`` and ``round``."""
    from bench.run import REPO, _script, old_tree

    common = ["--scene", args.scene, "--workers", str(args.workers), *(["--polygons"] if args.polygons else []),
              *(["--warm-up", args.warm_up] if args.warm_up else [])]
    runs = []
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    with old_tree(args.before, work) as tree:
        for model in args.model:
            for round_ in range(args.rounds):
                for code, where in ((args.before, tree), ("now", REPO)):
                    figures = _script("bench.client_share", *common, "--model", model, "--out",
                                      str(work / f"{code}-{round_}"), tree=where)
                    runs.append({**figures, "model": model, "code": code, "round": round_})
    return runs


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown rows: per run, the client's CPU seconds (its event loop's), the scheduler's process, the
    workers' (every process but the client, the scheduler's included), the client's share, the share without
    its event loop, the wall seconds of the scene and of the cluster's start-up."""
    lines = ["| model | code | stage | client CPU s (loop) | scheduler process CPU s | others CPU s | client share "
             "| share without the loop | wall s | start-up s (client CPU s) |", "|" + "---|" * 10]
    for run in runs:
        for stage, name in (("predict", "COGs"), *((("total", "COGs + polygons"),) if "vectorize" in run else ())):
            s = run[stage]
            model = "NDVI" if run["model"] == "vegetation" else Path(run["model"]).name
            start = run.get("start", {})
            lines.append(f"| {model} | {run['code']} | {name} | {s['client']:.2f} ({s['client_loop']:.2f}) | "
                         f"{s.get('scheduler', 0.0):.2f} | {s['workers']:.2f} | {s['share']:.1%} | "
                         f"{s['own_share']:.1%} | {s['seconds']:.1f} | {start.get('seconds', float('nan')):.2f} "
                         f"({start.get('client', float('nan')):.2f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--polygons", action="store_true", help="also vectorize the classes (gpkg)")
    parser.add_argument("--warm-up", default=None, help="a small scene run first on the same cluster")
    parser.add_argument("--model", action="append", help="a model (as often as needed; default vegetation)")
    parser.add_argument("--before", default=None, help="a commit to run side by side with this checkout")
    parser.add_argument("--rounds", type=int, default=1, help="with --before: runs of each per model")
    args = parser.parse_args()
    args.model = args.model or ["vegetation"]
    if args.before is None and len(args.model) == 1:
        print("RESULT " + json.dumps(measure(args.scene, args.out, args.workers, args.polygons, args.warm_up,
                                             args.model[0])))
        return
    if args.before is None:
        parser.error("more than one --model: only side by side with --before")
    load = os.getloadavg()
    runs = side_by_side(args)
    print(table(runs))
    print(f"load average before and after: {load[0]:.1f} / {os.getloadavg()[0]:.1f}")
    print("RESULT " + json.dumps(runs))


if __name__ == "__main__":
    main()
