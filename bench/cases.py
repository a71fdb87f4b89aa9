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


def _ref(model: dict[str, Any] | str, precision: str | None = None):
    """A built-in name or bundle path (what users pass), or the keywords of ``build_smp_model``."""
    from pipeline.models.contract import ModelRef

    if isinstance(model, str):
        return ModelRef.of(model, precision=precision)
    return ModelRef.from_factory("pipeline.models.network:build_smp_model", **model, **({"precision": precision}
                                                                                if precision else {}))


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


def predict(scene: str, model: dict[str, Any] | str, out: str, workers: int, options: dict[str, Any],
            warm_up: str | None = None) -> dict[str, Any]:
    """scenewatch end to end: LocalCluster start, tiles, model, stitch, COGs.

    ``seconds`` is the whole run, cluster start included. With ``warm_up`` (a small scene), that scene runs
    first on the same cluster, as the first scene of a batch does (workers started, model loaded and
    checked), and ``seconds`` is the measured scene alone; ``cold_seconds`` is everything.
    """
    from pipeline.config import PredictConfig
    from workflows.cluster import dask_client
    from workflows.scene import plan_scene, predict_scene

    config = PredictConfig.build(**options)  # the case's options (JSON-friendly) become a value once
    start = time.perf_counter()
    with dask_client(workers) as client:
        started = time.perf_counter()
        if warm_up:
            predict_scene(plan_scene(warm_up, _ref(model), config), out, client=client, progress=False)
        warm = time.perf_counter()
        result = predict_scene(plan_scene(scene, _ref(model), config), out, client=client, progress=False)
        end = time.perf_counter()
    seconds = end - warm if warm_up else end - start
    return {"seconds": seconds, "pixels": result.grid.height * result.grid.width, "tiles": result.tiles_planned,
            "cluster_seconds": started - start, "warm_up_seconds": warm - started, "cold_seconds": end - start,
            **result.extra}


def model_alone(scene: str, model: dict[str, Any] | str, tile: int, halo: int, threads: int,
                max_tiles: int | None = None, processes: int = 1, plain: bool = False,
                precision: str | None = None) -> dict[str, Any]:
    """The model alone on the same tiles as the pipeline (``max_tiles`` of them spread over the grid; read
    beforehand, not timed): one process with ``threads`` threads, or ``processes`` processes of ``threads``
    threads each taking every n-th tile (the rate is all their pixels over the slowest one's model time).

    ``precision``: as ``--precision`` (default ``auto``). ``plain``: the issue's "fp32 eager" instead: the bare
    network, contiguous fp32 under ``no_grad``, then softmax, on input normalized beforehand (as
    ``bench/models.py``'s baseline).
    """
    if processes == 1:
        return _model_alone(scene, model, tile, halo, threads, max_tiles, 0, 1, plain, precision)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [(scene, model, tile, halo, threads, max_tiles, i, processes, plain, precision)
                for i in range(processes)]
        parts = list(pool.map(_model_alone, *zip(*jobs, strict=True)))
    seconds = max(p["seconds"] for p in parts)
    pixels = sum(p["pixels"] for p in parts)
    return {"seconds": seconds, "pixels": pixels, "gflops": sum(p["gflops"] * p["seconds"] for p in parts) / seconds}


def _model_alone(scene: str, model: dict[str, Any] | str, tile: int, halo: int, threads: int,
                 max_tiles: int | None, part: int, parts: int, plain: bool = False,
                 precision: str | None = None) -> dict[str, Any]:
    import torch

    from pipeline.inference.read import open_scene, read_window
    from pipeline.models.loader import load_model
    from tiles.grid import plan_tiles

    torch.set_num_threads(threads)
    meta = open_scene(scene)
    m = load_model(_ref(model, precision="fp32" if plain else precision))
    indexes = tuple(range(1, len(m.info.bands) + 1))
    tiles = list(plan_tiles(meta.height, meta.width, tile, halo))
    if max_tiles and len(tiles) > max_tiles:
        # spread over the grid, so that edge tiles (smaller: no halo beyond the scene) weigh as in a run;
        # the first tiles of a grid are the whole top row, all edge tiles, which made the model look faster
        tiles = tiles[:: len(tiles) // max_tiles][:max_tiles]
    tiles = tiles[part::parts]
    if not tiles:  # more processes than tiles (--quick)
        return {"seconds": 0.0, "pixels": 0, "gflops": 0.0}
    prepare, predict = _plain_fp32(m) if plain else ((lambda batch: batch), m.predict)
    first = read_window(meta, tiles[0].read_window, indexes)[0][None]
    predict(prepare(first))  # warm-up (lazy init, autotune, the auto precision check)
    flops_per_pixel = _forward_flops(m, first) / first.shape[-1] / first.shape[-2]
    seconds, pixels, input_pixels = 0.0, 0, 0
    for t in tiles:
        x = prepare(read_window(meta, t.read_window, indexes)[0][None])
        start = time.perf_counter()
        predict(x)
        seconds += time.perf_counter() - start
        pixels += t.core_window.size
        input_pixels += t.read_window.size
    return {"seconds": seconds, "pixels": pixels, "gflops": flops_per_pixel * input_pixels / seconds / 1e9}


def _plain_fp32(model: Any) -> tuple[Any, Any]:
    """(prepare, predict) for ``model``'s network as plain fp32 eager: contiguous weights and input,
    ``no_grad``, softmax. Normalizing and padding (``prepare``) are left out of the timed call."""
    import torch

    network = model.network.to(memory_format=torch.contiguous_format)

    def prepare(batch: np.ndarray) -> Any:
        return model.prepare(batch).contiguous()

    def predict(x: Any) -> Any:
        with torch.no_grad():
            return torch.softmax(network(x), dim=1)

    return prepare, predict


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
        best = min(_timed(lambda a=a, b=b: a @ b) for _ in range(repeat))
        out[f"{name}_gflops"] = 2 * size**3 / best / 1e9
    return out


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def naive(scene: str, model: dict[str, Any] | str, out: str) -> dict[str, Any]:
    """The hand-written single-process script (fp32, whole scene in memory): :mod:`bench.naive`."""
    from bench.naive import run_naive

    start = time.perf_counter()
    polygons = run_naive(scene, out, _ref(model, precision="fp32"), (1, 2, 3, 4))
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
