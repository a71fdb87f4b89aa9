"""The engine table's NDVI and U-Net rows before and after a change, in one run (issue 20: "no regression").

Each tree (a git worktree of ``--before`` and this checkout) runs the same cases of :mod:`bench.cases` with
its own code, alternated round by round: NDVI end to end at two sizes (rate and peak memory of the process
tree, so memory flatness), the U-Net end to end on a warm cluster, the U-Net model alone on the same tiles
(best of one process of two threads and two of one, as :mod:`bench.run`), and the naive fp32 script once
(it is the same script for both). Prints one table of figures and ratios::

    python -m bench.regression --before 81168c2 --small 4096 --large 16384 --unet 4096 --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import run as harness
from bench.memory import gib
from bench.scenes import make_scene


@contextlib.contextmanager
def tree_code(tree: Path) -> Iterator[None]:
    """Cases run with the code of ``tree`` (``bench.run`` starts each case with ``REPO`` as its path)."""
    saved = harness.REPO
    harness.REPO = tree
    harness._MEMO.clear()  # the same case in another tree is another measurement
    try:
        yield
    finally:
        harness.REPO = saved
        harness._MEMO.clear()


def measure(scenes: dict[str, Path], warm_up: str, unet: str, out: str) -> dict[str, Any]:
    run_case = harness.run_case
    small = run_case("predict", scene=str(scenes["small"]), model="vegetation", out=out, workers=2,
                     options={"bands": "naip"})
    large = run_case("predict", scene=str(scenes["large"]), model="vegetation", out=out, workers=2,
                     options={"bands": "naip"})
    unet_e2e = run_case("predict", scene=str(scenes["unet"]), model=unet, out=out, workers=2, options={},
                        warm_up=warm_up)
    alone = max((run_case("model_alone", scene=str(scenes["unet"]), model=unet, tile=512, halo=32, threads=t,
                          max_tiles=24, processes=p) for t, p in ((2, 1), (1, 2))), key=lambda m: m.mps)
    return {"ndvi_small": small, "ndvi_large": large, "unet": unet_e2e, "alone": alone}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="commit to compare against (a git worktree of it)")
    parser.add_argument("--small", type=int, default=4096)
    parser.add_argument("--large", type=int, default=16384)
    parser.add_argument("--unet", type=int, default=4096, help="U-Net scene size")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="sw-regression-"))
    work.mkdir(parents=True, exist_ok=True)
    scenes = {k: make_scene(work / f"scene_{n}.tif", n) for k, n in
              (("small", args.small), ("large", args.large), ("unet", args.unet))}
    warm_up = str(make_scene(work / "scene_warm_up.tif", 1024, seed=1))
    unet = str(harness.make_bundle(work / "unet-resnet18-fitted", Path(warm_up)))
    out = str(work / "out")
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with harness.old_tree(args.before, work) as old:
        for _ in range(args.rounds):
            for label, tree in (("before", old), ("after", harness.REPO)):
                with tree_code(tree):
                    results[label].append(measure(scenes, warm_up, unet, out))
                print(f"{label} round done", file=sys.stderr, flush=True)
    naive = harness.run_case("naive", scene=str(scenes["unet"]), model=unet, out=out)

    def best(label: str, key: str) -> Any:
        return max((r[key] for r in results[label]), key=lambda m: m.mps)

    def peak(label: str, key: str) -> int:
        return min(r[key].peak for r in results[label])

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"before = {args.before}, best of {args.rounds} round(s)")
    print("| row | before | after |")
    print("|---|---|---|")
    for label_key, name in (("ndvi_small", f"NDVI {args.small}² MP/s"), ("ndvi_large", f"NDVI {args.large}² MP/s")):
        print(f"| {name} | {best('before', label_key).mps:.1f} | {best('after', label_key).mps:.1f} |")
    for label in ("before", "after"):
        results[label + "_flat"] = peak(label, "ndvi_large") / peak(label, "ndvi_small")  # type: ignore[assignment]
    print(f"| NDVI peak memory {args.large}² vs {args.small}² (<= 1.15) | "
          f"{gib(peak('before', 'ndvi_large')):.2f} vs {gib(peak('before', 'ndvi_small')):.2f} GiB = "
          f"{results['before_flat']:.2f} | {gib(peak('after', 'ndvi_large')):.2f} vs "
          f"{gib(peak('after', 'ndvi_small')):.2f} GiB = {results['after_flat']:.2f} |")
    cells = []
    for label in ("before", "after"):
        e2e, alone = best(label, "unet"), best(label, "alone")
        cells.append(f"{e2e.mps:.2f} vs {alone.mps:.2f} MP/s = {e2e.mps / alone.mps:.2f}")
    print(f"| U-Net {args.unet}² end to end (warm) vs model alone | {cells[0]} | {cells[1]} |")
    cells = [f"{best(label, 'unet').seconds:.1f} s vs {naive.seconds:.1f} s = "
             f"{naive.seconds / best(label, 'unet').seconds:.2f}x" for label in ("before", "after")]
    print(f"| U-Net {args.unet}² end to end (warm) vs naive fp32 script | {cells[0]} | {cells[1]} |")
    cells = [f"{gib(peak(label, 'unet')):.2f} vs {gib(naive.peak):.2f} GiB" for label in ("before", "after")]
    print(f"| U-Net {args.unet}² peak memory vs naive script | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
