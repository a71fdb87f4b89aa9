"""One measured case per process: ``python -m bench.cases CASE JSON_ARGS`` prints a JSON result line.

Each case runs in its own process so that its peak memory (sampled from outside, over the whole process
tree) includes nothing of the harness.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np

__all__ = ["CASES"]


def _ref(model: dict[str, Any] | str):
    from pipeline.model import ModelRef

    if isinstance(model, str):
        return ModelRef.of(model)
    return ModelRef.from_factory("pipeline.model:build_smp_model", **model)


def read_floor(scene: str, tile: int = 512, bands: tuple[int, ...] = (1, 2, 3, 4)) -> dict[str, Any]:
    """Reading alone: every window of the scene with rasterio in one process."""
    import rasterio
    from rasterio.windows import Window

    start = time.perf_counter()
    with rasterio.open(scene) as src:
        for r in range(0, src.height, tile):
            for c in range(0, src.width, tile):
                src.read(list(bands), window=Window(c, r, min(tile, src.width - c), min(tile, src.height - r)))
        pixels = src.width * src.height
    return {"seconds": time.perf_counter() - start, "pixels": pixels}


def predict(scene: str, model: dict[str, Any] | str, out: str, workers: int, options: dict[str, Any]) -> dict[str, Any]:
    """scenewatch end to end: LocalCluster start, tiles, model, stitch, COGs."""
    from workflows.scene import predict_scene

    start = time.perf_counter()
    result = predict_scene(scene, _ref(model), out, workers=workers, progress=False, **options)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "pixels": result.grid.height * result.grid.width, "tiles": result.tiles_planned,
            **result.extra}


def model_alone(scene: str, model: dict[str, Any] | str, tile: int, halo: int, threads: int,
                max_tiles: int | None = None) -> dict[str, Any]:
    """The model alone on the same tiles as the pipeline (read beforehand, not timed), all cores."""
    import torch

    from pipeline.model import load_model
    from pipeline.read import open_scene, read_window
    from tiles.grid import plan_tiles

    torch.set_num_threads(threads)
    meta = open_scene(scene)
    m = load_model(_ref(model))
    indexes = tuple(range(1, len(m.info.bands) + 1))
    tiles = list(plan_tiles(meta.height, meta.width, tile, halo))[:max_tiles]
    first = read_window(meta, tiles[0].read_window, indexes)[0][None]
    m.predict(first)  # warm-up (lazy init, autotune)
    flops_per_pixel = _forward_flops(m, first) / first.shape[-1] / first.shape[-2]
    seconds, pixels, input_pixels = 0.0, 0, 0
    for t in tiles:
        data, _ = read_window(meta, t.read_window, indexes)
        start = time.perf_counter()
        m.predict(data[None])
        seconds += time.perf_counter() - start
        pixels += t.core_window.size
        input_pixels += t.read_window.size
    return {"seconds": seconds, "pixels": pixels, "gflops": flops_per_pixel * input_pixels / seconds / 1e9}


def _forward_flops(model: Any, batch: np.ndarray) -> float:
    """FLOPs of one forward pass (torch's own counter; 0 for a model that is not a torch network)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    network = getattr(model, "network", None)
    if network is None:
        return 0.0
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network(torch.from_numpy(np.ascontiguousarray(batch)))
    return float(counter.get_total_flops())


def matmul_peak(threads: int, size: int = 2048, repeat: int = 5) -> dict[str, Any]:
    """This CPU's measured matrix-product throughput, fp32 and bf16, with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    out: dict[str, Any] = {"seconds": 1.0, "pixels": 0}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(repeat))
        out[f"{name}_gflops"] = 2 * size**3 / best / 1e9
    return out


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def naive(scene: str, model: dict[str, Any] | str, out: str) -> dict[str, Any]:
    from bench.naive import run_naive

    start = time.perf_counter()
    polygons = run_naive(scene, out, _ref(model), (1, 2, 3, 4))
    import rasterio

    with rasterio.open(scene) as src:
        pixels = src.width * src.height
    return {"seconds": time.perf_counter() - start, "pixels": pixels, "polygons": polygons}


CASES = {"read_floor": read_floor, "predict": predict, "model_alone": model_alone, "naive": naive,
         "matmul_peak": matmul_peak}


def main() -> None:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    result = CASES[name](**args)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
