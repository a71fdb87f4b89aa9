"""A batch scene's fixed costs outside the tile and polygon passes (issue 20): the client's CPU per piece of
``run_job``, and the CPU of the run's report over finished scenes.

    PYTHONPATH=$PWD .venv/bin/python -m bench.batch_fixed_costs client [--archive DIR] [--workers 2]
    PYTHONPATH=$PWD .venv/bin/python -m bench.batch_fixed_costs report [--out DIR]

``client``: the job over ``--archive`` (NDVI, classes, probabilities and a GeoPackage, one scene at a time) on a
warm cluster, run twice (the first hashes the inputs into the manifest's cache); of the second, the client
process's CPU seconds and each piece's thread CPU seconds (planning, the predict and vectorize calls as the
client sees them, checksums, footprint), per scene, with the scheduler's and the workers' CPU seconds.
``report``: :func:`workflows.report.batch_sections` (area per class and a picture per scene, as
``scenewatch run`` writes ``report.html``) over the ``*.classes.tif`` in ``--out``, best CPU seconds of 3.
Run it from a worktree of an older commit (copy this file there) for the before row.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import resource
import time
from pathlib import Path
from typing import Any

import yaml

from bench.cpu import CpuShare

WORK = Path("/tmp/sw-bench-archive")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client_costs(archive: Path, workers: int, work: Path) -> dict[str, Any]:
    import workflows.batch as batch
    from workflows.cluster import dask_client

    spent: dict[str, float] = collections.defaultdict(float)

    def timed(name: str) -> None:
        inner = getattr(batch, name)

        @functools.wraps(inner)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[name] += time.thread_time() - start

        setattr(batch, name, wrapper)

    for name in ("plan_scene", "predict_scene", "_vectorize", "_output_record", "_bbox_4326"):
        timed(name)
    work.mkdir(parents=True, exist_ok=True)

    def job(folder: Path, name: str) -> Path:
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "name": name, "inputs": {"folder": str(folder), "pattern": "*.tif"}, "model": {"name": "vegetation"},
            "bands": "naip", "products": {"segmentation": {"proba": True}, "vectors": {"formats": ["gpkg"]}},
            "outputs": {"folder": str(work / f"out-{name}"), "stac": False}}))
        return path

    scenes = len(list(archive.glob("*.tif")))
    warm, archive_job = job(WORK / "warm", "warm"), job(archive, "fixed-costs")
    with dask_client(workers) as client:
        batch.run_job(warm, client=client, progress=False, force=True)
        batch.run_job(archive_job, client=client, progress=False, force=True, scenes_in_flight=1)
        spent.clear()
        start = time.perf_counter()
        with CpuShare(client) as used:
            summary = batch.run_job(archive_job, client=client, progress=False, force=True, scenes_in_flight=1)
        assert summary.count("done") == scenes, summary.outcomes
    return {"scenes": scenes, "wall_s": time.perf_counter() - start,
            "per_scene_cpu_s": {"client": used.client_seconds / scenes, "scheduler": used.scheduler_seconds / scenes,
                                "workers": (used.worker_seconds - used.scheduler_seconds) / scenes,
                                **{f"client {k}": v / scenes for k, v in spent.items()}}}


def report_costs(out: Path) -> dict[str, Any]:
    from workflows.batch import ItemOutcome, RunSummary
    from workflows.report import batch_sections

    ids = sorted(p.name.removesuffix(".classes.tif") for p in out.glob("*.classes.tif"))
    summary = RunSummary("bench", out, 1, tuple(ItemOutcome(i, "scene", "done", "done", 1.0, 1) for i in ids))
    batch_sections(summary)  # imports, once
    best = float("inf")
    for _ in range(3):
        start = _cpu()
        batch_sections(summary)
        best = min(best, _cpu() - start)
    return {"scenes": len(ids), "report_cpu_s": best, "per_scene_cpu_s": best / max(1, len(ids))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("client", "report"))
    parser.add_argument("--archive", type=Path, default=WORK / "archive-4096")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WORK / "out-one_at_a_time")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sw-bench-fixed-costs"))
    args = parser.parse_args()
    result = (client_costs(args.archive, args.workers, args.work) if args.what == "client"
              else report_costs(args.out))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
