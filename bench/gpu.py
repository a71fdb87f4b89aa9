"""GPU inference: each precision on the model alone, and ``predict_scene`` end to end, on a CUDA device.

Run it where torch sees a GPU (it exits with a message elsewhere)::

    python bench/gpu.py --work /tmp/swgpu --size 8192 --json gpu.json

It generates seeded scenes (:mod:`bench.scenes`) and the bench's fitted resnet18 U-Net (:func:`bench.run.make_bundle`)
in ``--work``, then prints markdown tables:

- the model alone on 512 px tiles with their 32 px halo, per precision and batch size: MP/s of tile cores,
  ratio to fp32 batch 1, probability drift and class agreement against fp32 (what ``auto`` promises: at most
  0.01 mean absolute probability);
- the stages of one worker's task, per tile: reading, the model, the blending around it;
- end to end on a warm LocalCluster (workers started and the model loaded by a small scene first), for
  each ``--runs`` pair of workers and batch size (0 workers: the default that ``scenewatch predict``
  starts for a network on a GPU): MP/s, the precision the workers resolved ``auto``
  to, the GPU memory each worker's torch held at peak, and where the writing process spent its time;
- fp16 against fp32 end to end (``auto`` against ``--precision fp32``): drift of the stored probabilities
  and class agreement over the whole raster;
- the NDVI model end to end with 1, 2, 4 and 8 workers (a CPU-only check of Dask scaling on a machine with
  more cores than this project's 2-core CI machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def model_alone(bundle: Path, scene: Path, tiles: int, batches: tuple[int, ...]) -> list[dict[str, Any]]:
    import torch

    from pipeline.inference.read import open_scene, read_window
    from pipeline.models.bundle import load_bundle
    from tiles.grid import plan_tiles

    meta = open_scene(scene)
    grid = plan_tiles(meta.height, meta.width, 512, 32)
    # full-size (non-edge) tiles spread over the grid, so that a batch stacks
    chosen = [t for t in grid if t.read_window.height == t.read_window.width == 576]
    chosen = chosen[:: max(1, len(chosen) // tiles)][:tiles]
    data = np.stack([read_window(meta, t.read_window, (1, 2, 3, 4))[0] for t in chosen])
    rows = []
    reference = None
    for precision in ("fp32", "fp16", "bf16", "auto"):
        model = load_bundle(bundle, precision=precision)
        for batch in (min(b, len(data)) for b in batches):
            usable = len(data) // batch * batch
            model.predict(data[:batch])  # warm-up: cuDNN autotune, the auto check
            torch.cuda.synchronize()
            start = time.perf_counter()
            probs = np.concatenate([model.predict(data[i : i + batch]) for i in range(0, usable, batch)])
            seconds = time.perf_counter() - start  # predict returns host arrays: the device is done
            if reference is None:
                reference = probs
            n = min(len(probs), len(reference))
            drift = float(np.abs(probs[:n] - reference[:n]).mean())
            agree = float((probs[:n].argmax(1) == reference[:n].argmax(1)).mean())
            rows.append({"precision": precision, "resolved": model.precision, "batch": batch,
                         "mps": usable * 512 * 512 / seconds / 1e6, "drift": drift, "agreement": agree})
        del model
        torch.cuda.empty_cache()
    base = rows[0]["mps"]
    for r in rows:
        r["vs_fp32"] = r["mps"] / base
    return rows


def _worker_state(bundle: str) -> dict[str, Any]:
    """Run in a worker after a scene: the precision ``auto`` resolves to there and torch's peak GPU memory."""
    import torch

    from pipeline.models.contract import ModelRef
    from pipeline.models.loader import load_model

    memory = {"gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20,
              "gpu_reserved_mib": torch.cuda.memory_reserved() / 2**20}
    return {"precision": load_model(ModelRef.of(bundle)).precision, **memory}


def stages(bundle: Path, scene: Path, tiles: int) -> dict[str, float]:
    """Milliseconds per tile of each stage of a worker's task, in one process: reading the window, the
    model (``auto``) and the blending around it."""
    from pipeline.inference.predict import TileInput, _contribution
    from pipeline.inference.read import open_scene, read_window
    from pipeline.models.bundle import load_bundle
    from tiles.grid import plan_tiles

    meta = open_scene(scene)
    grid = plan_tiles(meta.height, meta.width, 512, 32)
    chosen = list(grid)[:: max(1, len(grid) // tiles)][:tiles]
    model = load_bundle(bundle)
    model.predict(read_window(meta, chosen[0].read_window, (1, 2, 3, 4))[0][None])
    read = run = blend = 0.0
    for tile in chosen:
        t0 = time.perf_counter()
        item = TileInput(tile, *read_window(meta, tile.read_window, (1, 2, 3, 4)))
        t1 = time.perf_counter()
        probs = model.predict(item.data[None])
        t2 = time.perf_counter()
        _contribution(item, probs[0], grid, 16, "cosine", "uint8")
        t3 = time.perf_counter()
        read, run, blend = read + t1 - t0, run + t2 - t1, blend + t3 - t2
    n = len(chosen) / 1000
    return {"read_ms": read / n, "model_ms": run / n, "blend_ms": blend / n}


def end_to_end(model: str, scene: Path, warm: Path, out: Path, workers: int, threads: int = 1,
               **options: Any) -> dict[str, Any]:
    from pipeline.config import PredictConfig
    from workflows.cluster import dask_client
    from workflows.scene import plan_scene, predict_scene

    config = PredictConfig.build(bands="naip", **options)
    start = time.perf_counter()
    with dask_client(workers or None, model=model, threads=threads) as client:
        n = len(client.scheduler_info(n_workers=-1)["workers"])
        predict_scene(plan_scene(warm, model, config), out, client=client, progress=False)
        ready = time.perf_counter()
        result = predict_scene(plan_scene(scene, model, config), out, client=client, progress=False)
        seconds = time.perf_counter() - ready
        state = client.run(_worker_state, model) if Path(model).exists() else {}
    row = {"workers": n, "seconds": seconds, "mps": result.grid.height * result.grid.width / seconds / 1e6,
           "cold_seconds": time.perf_counter() - start, **{k: round(v, 2) for k, v in result.extra.items()}}
    if state:
        row["precision"] = sorted({s["precision"] for s in state.values()})
        row["gpu_peak_mib"] = max(s["gpu_peak_mib"] for s in state.values())
        row["gpu_reserved_mib_total"] = sum(s["gpu_reserved_mib"] for s in state.values())
    return row


def compare_outputs(a: Path, b: Path) -> dict[str, float]:
    """Mean absolute difference of stored probabilities and class agreement, block by block."""
    import rasterio

    from pipeline.inference.stitch import decode_proba

    diff, agree, n = 0.0, 0, 0
    with rasterio.open(a.with_suffix(".proba.tif")) as pa, rasterio.open(b.with_suffix(".proba.tif")) as pb, \
         rasterio.open(a.with_suffix(".classes.tif")) as ca, rasterio.open(b.with_suffix(".classes.tif")) as cb:
        for _, window in pa.block_windows(1):
            x, y = decode_proba(pa.read(window=window)), decode_proba(pb.read(window=window))
            ok = np.isfinite(x).all(0) & np.isfinite(y).all(0)
            diff += float(np.abs(x - y)[:, ok].sum()) / x.shape[0]
            agree += int((ca.read(1, window=window) == cb.read(1, window=window))[ok].sum())
            n += int(ok.sum())
    return {"proba_drift": diff / n, "class_agreement": agree / n}


def table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/scenewatch-gpu"))
    parser.add_argument("--size", type=int, default=8192, help="side of the end-to-end scene, px")
    parser.add_argument("--runs", default="1:1,1:8,2:1,4:1,4:4,8:1,0:1",
                        help="end-to-end runs as WORKERS:BATCH_SIZE[:THREADS per worker]; 0 workers = the default")
    parser.add_argument("--tiles", type=int, default=32, help="tiles for the model-alone rows")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: alone,stages,e2e,agreement,ndvi")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench/gpu.py: torch sees no CUDA device here; nothing to measure", file=sys.stderr)
        return 2
    from bench.run import make_bundle
    from bench.scenes import make_scene

    skip = set(filter(None, args.skip.split(",")))
    figures: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))

    def say(text: str) -> None:
        print(text, flush=True)

    say(f"# GPU bench: {figures['device']}, torch {figures['torch']}\n")
    warm = make_scene(args.work / "scene_warm_up.tif", 1024, seed=1)
    scene = make_scene(args.work / f"scene_{args.size}.tif", args.size)
    small = make_scene(args.work / "scene_2048.tif", 2048)
    bundle = make_bundle(args.work / "unet-resnet18-fitted", warm)
    out = args.work / "out"
    if "alone" not in skip:
        rows = figures["model_alone"] = model_alone(bundle, scene, args.tiles, (1, 8))
        save()
        say("## resnet18 U-Net alone, 512 px tiles + 32 px halo\n")
        say(table(rows, ["precision", "resolved", "batch", "mps", "vs_fp32", "drift", "agreement"]) + "\n")
    if "stages" not in skip:
        figures["stages"] = stages(bundle, scene, args.tiles)
        save()
        say(f"## One worker's task, per tile, in one process: {figures['stages']}\n")
    if "e2e" not in skip:
        figures["end_to_end"] = []
        say(f"## End to end, precision auto, warm cluster, {args.size}² scene\n")
        for run in args.runs.split(","):
            w, batch, threads = ([int(x) for x in run.split(":")] + [1])[:3]
            row = end_to_end(str(bundle), scene, warm, out, w, threads, batch_size=batch)
            row |= {"batch": batch, "threads": threads}
            figures["end_to_end"].append(row)
            save()
        say(table(figures["end_to_end"], ["workers", "threads", "batch", "mps", "precision", "seconds",
                                          "waiting_seconds", "writing_seconds", "finishing_seconds", "gpu_peak_mib",
                                          "gpu_reserved_mib_total", "cold_seconds"]) + "\n")
    if "agreement" not in skip:
        runs = {}
        for precision in ("auto", "fp32"):
            dest = args.work / f"agree_{precision}"
            end_to_end(str(bundle), small, warm, dest, 2, precision=precision)
            runs[precision] = dest / "scene_2048.tif"
        figures["agreement"] = compare_outputs(runs["auto"], runs["fp32"])
        save()
        say(f"## auto (fp16) vs fp32 end to end, 2048² scene: {figures['agreement']}\n")
    if "ndvi" not in skip:
        figures["ndvi"] = []
        for w in (1, 2, 4, 8):
            row = end_to_end("vegetation", scene, warm, out, w)
            figures["ndvi"].append(row)
            save()
        base = figures["ndvi"][0]["mps"]
        for r in figures["ndvi"]:
            r["vs_1_worker"] = r["mps"] / base
        save()
        say(f"## NDVI end to end, warm cluster, {args.size}² scene (CPU)\n")
        say(table(figures["ndvi"], ["workers", "mps", "vs_1_worker", "waiting_seconds", "writing_seconds",
                                    "finishing_seconds"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
