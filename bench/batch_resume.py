"""What resuming costs: a nightly rerun over an unchanged archive against the first full run, measured in
the same process on the same archive (ratios; shared machines are noisy).

    PYTHONPATH=. python bench/batch_resume.py [--scenes 4] [--size 2048] [--workdir /tmp/sw-bench-batch]

Runs: (1) full run, cold; (2) rerun, nothing changed (skips; no Dask cluster is started); (3) rerun after
`touch` of every input (mtime changed, content not: each file is re-hashed in full, still skipped);
(4) `--force` (everything redone). Also the time to sha256 the whole archive once, the price of content
fingerprints, against the full run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import yaml

from bench.scenes import make_scene
from workflows.batch import file_sha256, run_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workdir", default="/tmp/sw-bench-batch")
    args = parser.parse_args()

    work = Path(args.workdir)
    archive = work / f"archive-{args.size}"
    scenes = [make_scene(archive / f"scene_{i:02d}.tif", args.size, seed=i) for i in range(args.scenes)]
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    job = work / "job.yaml"
    job.write_text(yaml.safe_dump({"inputs": {"folder": str(archive)}, "model": {"name": "vegetation"},
                                   "bands": "naip", "tiling": {"tile_size": 1024}, "outputs": {"folder": str(out)}}))
    mb = sum(p.stat().st_size for p in scenes) / 1e6

    def timed(**kw: object) -> float:
        started = time.perf_counter()
        summary = run_job(job, progress=False, **kw)  # type: ignore[arg-type]
        assert summary.count("failed") == 0
        return time.perf_counter() - started

    full = timed()
    noop = timed()
    for p in scenes:
        os.utime(p)
    touched = timed()
    started = time.perf_counter()
    for p in scenes:
        file_sha256(p)
    hashing = time.perf_counter() - started
    forced = timed(force=True)
    print(f"archive: {args.scenes} scenes of {args.size}x{args.size} px x 4 bands uint16, {mb:.0f} MB on disk")
    base = min(full, forced)  # the faster of the two full computations: the conservative baseline
    print(f"full run (cold, incl. cluster start)   {full:7.2f} s")
    print(f"--force (all redone)                   {forced:7.2f} s   baseline = the faster: {base:.2f} s")
    print(f"rerun, nothing changed                 {noop:7.2f} s   {noop / base:.4f} x baseline")
    print(f"rerun after touch (re-hash, skip)      {touched:7.2f} s   {touched / base:.4f} x baseline")
    print(f"sha256 of the whole archive            {hashing:7.2f} s   {hashing / base:.4f} x baseline "
          f"({mb / hashing:.0f} MB/s)")


if __name__ == "__main__":
    main()
