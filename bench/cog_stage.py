"""A tile's CPU in the workers outside the model (issue 21), this checkout against an older one, in one run.

One process and one thread do what the two workers of ``scenewatch predict`` do for the first ``--rows``
tile rows of a scene (512 px tiles, 32 px halo, 16 px overlap, uint8 probabilities): every stripe top to
bottom in the stripe width of the code under test (``workflows.scene._stripe_tiles``), a fresh GDAL block
cache per stripe as in another worker, tasks of 4 tiles (``read_window``, ``predict_tiles`` with the bundle's
settled backend, one thread), then the piece tasks of the rows whose neighbours were predicted
(``workflows.scene._stitch_piece``: blend, compress, halve). CPU seconds per tile: reading, the rest of
``predict_tiles`` outside the compiled graph's ``infer``, and the pieces; and a sha256 of every COG block the
pieces made, which must be the same for both checkouts (the pieces may be cut differently; the blocks not).

    git worktree add /tmp/before-c 8e5d367
    SCENEWATCH_CACHE_DIR=<the bundle's warm choice cache> python bench/cog_stage.py \\
        --scene /tmp/scenewatch-bench-auto/scene-8192.tif --bundle /tmp/scenewatch-bench-auto/unet-fitted \\
        --before /tmp/before-c --rounds 2

Each run is a fresh process with ``PYTHONPATH`` set to its checkout, alternated before/after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


def measure(scene: str, bundle: str, rows: int) -> dict[str, Any]:
    """In this process (imports from ``PYTHONPATH``): milliseconds of CPU per tile and the blocks' hash."""
    import numpy as np  # noqa: F401 - the checkout's numpy, loaded before its modules
    from rasterio.env import set_gdal_config

    import pipeline.inference.read as rd
    import workflows.scene as ws
    from pipeline.inference.predict import TileInput, predict_tiles
    from pipeline.models.contract import ModelRef
    from pipeline.models.loader import load_model
    from tiles.grid import PixelWindow, plan_tiles
    from workflows.backends import settle_backend

    meta = rd.open_scene(scene)
    grid = plan_tiles(meta.height, meta.width, 512, 32)
    bands = (1, 2, 3, 4)
    ref = ModelRef.of(bundle).with_threads(1)
    settle_backend(meta, grid, bands, ref)
    model: Any = load_model(ref)
    model.predict(rd.read_window(meta, grid.tile(0, 0).read_window, bands)[0][None])  # settled now
    forward = type(model._settled.forward)
    infer, graph = forward.infer, [0.0]

    def timed(self: Any, x: Any) -> Any:
        start = time.process_time()
        try:
            return infer(self, x)
        finally:
            graph[0] += time.process_time() - start

    forward.infer = timed
    try:
        stripe = ws._stripe_tiles(4, grid, 2)
    except TypeError:  # a checkout whose stripes do not depend on the grid
        stripe = ws._stripe_tiles(4)
    spent = dict.fromkeys(("read", "predict", "piece"), 0.0)
    results: dict[tuple[int, int], Any] = {}
    starts = list(range(0, grid.cols, stripe))
    for s0 in starts:
        rd._local.__dict__.pop("handles", None)
        set_gdal_config("GDAL_CACHEMAX", 0)  # another worker: nothing cached
        for r in range(rows):
            for c0 in range(s0, min(s0 + stripe, grid.cols), 4):
                tiles = [grid.tile(r, c) for c in range(c0, min(c0 + 4, grid.cols))]
                t0 = time.process_time()
                rd.use_read_cache(meta, grid.halo, stripe * grid.tile_size + 2 * grid.halo)
                inputs = [TileInput(t, *rd.read_window(meta, t.read_window, bands)) for t in tiles]
                t1 = time.process_time()
                results[r, c0] = (tiles, predict_tiles(model, inputs, grid, 16, "cosine", "uint8", max_batch=1))
                spent["read"] += t1 - t0
                spent["predict"] += time.process_time() - t1
    spec = {"crs": meta.crs, "transform": meta.transform, "height": meta.height, "width": meta.width,
            "dtype": "uint8", "nodata": 255}
    specs = {"classes": ws.CogSpec(**spec, count=1, resampling="mode"),
             "proba": ws.CogSpec(**spec, count=2, resampling="average")}
    blocks: dict[Any, bytes] = {}
    piece_tiles = 0
    with tempfile.TemporaryDirectory(prefix="cog-stage-") as tmp:
        for r in range(1, rows - 1):
            for s0 in starts:
                window = PixelWindow(r * 512, s0 * 512, 512, min(stripe, grid.cols - s0) * 512)
                keys = [k for k in results if abs(k[0] - r) <= 1 and s0 - 4 <= k[1] < s0 + stripe + 4]
                t0 = time.process_time()
                piece = ws._stitch_piece(specs, window, grid, 16, 2, [results[k][0] for k in keys],
                                         [results[k][1] for k in keys], Path(tmp), f"bench.{r}.{s0}")
                spent["piece"] += time.process_time() - t0
                piece_tiles += min(stripe, grid.cols - s0)
                for key, (part, offset, length) in piece.blocks.items():
                    with open(part, "rb") as f:
                        f.seek(offset)
                        blocks[key] = f.read(length)
    digest = hashlib.sha256()
    for key in sorted(blocks):
        digest.update(repr(key).encode() + blocks[key])
    n = rows * grid.cols
    ms = {"read": 1e3 * spent["read"] / n, "predict_rest": 1e3 * (spent["predict"] - graph[0]) / n,
          "graph": 1e3 * graph[0] / n, "piece": 1e3 * spent["piece"] / piece_tiles}
    ms["outside_graph"] = ms["read"] + ms["predict_rest"] + ms["piece"]
    return {"stripe": stripe, "ms": ms, "blocks": len(blocks), "sha256": digest.hexdigest()[:16]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--before", help="an older checkout (git worktree) run alternately with this one")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.scene, args.bundle, args.rows)))
        return
    trees = [("before", args.before)] if args.before else []
    trees.append(("after", str(REPO)))
    for i in range(args.rounds):
        for name, tree in trees if i % 2 == 0 else trees[::-1]:
            out = subprocess.run([sys.executable, str(HERE), "--worker", "--scene", args.scene, "--bundle",
                                  args.bundle, "--rows", str(args.rows)], env={**os.environ, "PYTHONPATH": tree},
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            got = json.loads(out)
            ms = got["ms"]
            print(f"{name:6s} stripe {got['stripe']:2d}: read {ms['read']:5.2f}  predict_tiles outside the graph "
                  f"{ms['predict_rest']:4.2f}  pieces {ms['piece']:4.2f}  outside the graph {ms['outside_graph']:5.2f}"
                  f"  (graph {ms['graph']:5.2f}) ms CPU a tile; {got['blocks']} blocks, sha256 {got['sha256']}",
                  flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
