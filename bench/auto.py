"""``--precision auto`` on this CPU (issue 21): each backend's MP/s as auto measured it, then ``scenewatch
predict`` end to end with defaults (COGs and polygons) against the naive fp32 script (:mod:`bench.naive`) and
against the chosen backend's model-alone rate, on one scene and one fitted network, in one run.

The network is a resnet18 U-Net fitted for 20 steps to the NDVI > 0.3 mask of a bench scene, saved as a
bundle *without* an int8 variant, as a user has it after training: auto calibrates int8 itself on the scene's
first tiles. The backend table is measured with the workers' settings (one thread, 576 px input tiles) into a
fresh cache, so the end-to-end run that follows finds the choice there and pays nothing for it; the first
run's extra seconds (measuring, calibrating) are shown apart. The naive script runs twice: as a user runs
it, and with the process settings scenewatch gives its local workers (``workflows.cluster``: glibc's
allocator, and numpy's huge pages where the host takes free ones back), the fair baseline for the code
itself. Run while the machine is otherwise idle for absolute figures; the ratios are what this bench
reports::

    python -m bench.auto --size 4096 --onnx     # --size 8192 for the issue's scene
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TILE, HALO, SAMPLES = 512, 32, 4


def fitted_bundle(path: Path, scene: Path) -> Path:
    """A resnet18 U-Net fitted to ``scene``'s NDVI mask (bench/run.py's recipe), saved without int8."""
    if (path / "model.json").exists():
        return path
    import numpy as np
    import rasterio
    import segmentation_models_pytorch as smp
    import torch

    from bench.models import fit_to_ndvi
    from pipeline.models.bundle import save_bundle

    with rasterio.open(scene) as src:
        data = src.read(out_dtype="float32")
    mean, std = data.mean(axis=(1, 2)), data.std(axis=(1, 2))
    n = data.shape[1] - 128
    crops = np.stack([data[:, r : r + 128, c : c + 128] for r, c in
                      ((0, 0), (0, n), (n, 0), (n, n), (n // 2, n // 2), (n // 4, 3 * n // 4))])
    torch.manual_seed(0)
    network = smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None, in_channels=4, classes=2)
    network, _ = fit_to_ndvi(network, crops, mean, std, steps=20)
    save_bundle(path, network, arch="Unet", encoder="resnet18", bands=["red", "green", "blue", "nir"],
                class_names=["background", "foreground"], mean=mean.tolist(), std=std.tolist())
    return path


def _first_tiles(scene: str) -> tuple[Any, Any, list[Any]]:
    from pipeline.inference.read import open_scene
    from tiles.grid import plan_tiles

    meta = open_scene(scene)
    grid = plan_tiles(meta.height, meta.width, TILE, HALO)
    return meta, grid, [grid.tile(i // grid.cols, i % grid.cols) for i in range(len(grid))]


def measure_backends(scene: str, bundle: str, threads: int) -> dict[str, Any]:
    """In this process: auto's measurement, as a worker makes it (workflows.backends.settle_backend)."""
    import torch

    from pipeline.models.contract import ModelRef
    from workflows.backends import settle_backend

    torch.set_num_threads(threads)
    meta, grid, _ = _first_tiles(scene)
    ref = ModelRef.of(bundle).with_threads(threads)
    started = time.perf_counter()
    settle_backend(meta, grid, (1, 2, 3, 4), ref)
    from pipeline.models.loader import load_model

    model: Any = load_model(ref)
    return {"seconds": time.perf_counter() - started, "backend": model.backend, "summary": model.choice.summary(),
            "measurements": [m.as_json() for m in model.choice.measurements]}


def model_alone(scene: str, bundle: str, part: int, parts: int, max_tiles: int) -> dict[str, Any]:
    """The chosen backend alone (from the cache) on every ``parts``-th of ``max_tiles`` full tiles spread over
    the grid, read beforehand; one thread."""
    import numpy as np
    import torch

    from pipeline.inference.read import read_window
    from pipeline.models.contract import ModelRef
    from pipeline.models.loader import load_model
    from workflows.backends import settle_backend

    torch.set_num_threads(1)
    meta, grid, tiles = _first_tiles(scene)
    ref = ModelRef.of(bundle).with_threads(1)
    settle_backend(meta, grid, (1, 2, 3, 4), ref)  # reads the cache
    model: Any = load_model(ref)
    tiles = tiles[:: max(1, len(tiles) // max_tiles)][:max_tiles][part::parts]
    inputs = [(t, read_window(meta, t.read_window, (1, 2, 3, 4))[0][None]) for t in tiles]
    model.predict(inputs[0][1])
    seconds, pixels = 0.0, 0
    for t, x in inputs:
        start = time.perf_counter()
        model.predict(np.ascontiguousarray(x))
        seconds += time.perf_counter() - start
        pixels += t.core_window.size
    return {"seconds": seconds, "pixels": pixels, "backend": model.backend, "cached": model.choice.cached}


def _in_process(func: str, *args: Any, env: dict[str, str] | None = None) -> Any:
    """``func(*args)`` of this module in a fresh Python process (nothing of the harness shared), with ``env``
    added to its environment."""
    code = f"import json,sys; from bench.auto import {func}; print(json.dumps({func}(*json.loads(sys.argv[1]))))"
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=REPO, check=True, text=True,
                         capture_output=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _timed_cli(*args: str) -> tuple[float, list[float], float]:
    """Wall seconds of a ``scenewatch`` command, the seconds its result lines report (scene, polygons), and
    its CPU seconds: its own and those of the processes it waited for (its local workers)."""
    import re
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).with_name("scenewatch")), *args], cwd=REPO, check=True,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    parts = [float(m) for m in re.findall(r" in ([0-9.]+) s -> ", done.stdout)]
    return wall, parts, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "scenewatch-bench-auto")
    parser.add_argument("--alone-tiles", type=int, default=16)
    parser.add_argument("--onnx", action="store_true", help="also ONNX Runtime fp32/int8 in the same rounds "
                        "(pip install onnxruntime onnx onnxscript)")
    args = parser.parse_args()
    from bench.scenes import make_scene
    from pipeline.models.backends import cpu_identity

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    os.environ["SCENEWATCH_CACHE_DIR"] = str(cache)  # inherited by every process below
    scene = str(make_scene(work / f"scene-{args.size}.tif", args.size))
    bundle = str(fitted_bundle(work / "unet-fitted", make_scene(work / "fit-1024.tif", 1024, seed=1)))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; CPU: {cpu_identity()}; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}")

    table = _in_process("measure_backends", scene, bundle, 1)
    print(f"auto measured in {table['seconds']:.0f} s (1 thread): {table['summary']}")
    print("| backend | MP/s | vs torch fp32 eager | drift vs fp32 | class agreement |")
    print("|---|---|---|---|---|")
    rates = {m["name"]: m["mp_s"] for m in table["measurements"]}
    for m in sorted(table["measurements"], key=lambda m: -(m["mp_s"] or 0)):
        drift = "" if m["drift"] is None else f"{m['drift']:.4f}"
        agree = "" if m["agreement"] is None else f"{m['agreement']:.2%}"
        if m["refused"]:
            print(f"| {m['name']} | refused: {m['refused']} | | {drift} | {agree} |")
        else:
            print(f"| {m['name']}{' (chosen)' if m['name'] == table['backend'] else ''} | {m['mp_s']:.2f} | "
                  f"{m['mp_s'] / rates['torch-fp32']:.2f} | {drift} | {agree} |")

    if args.onnx:
        onnx = _in_process("measure_onnx", scene, bundle, 1)
        print("with ONNX Runtime, same rounds: " + ", ".join(
            f"{m['name']} {m['mp_s']:.2f}" if not m["refused"] else f"{m['name']} refused ({m['refused']})"
            for m in sorted(onnx["measurements"], key=lambda m: -(m["mp_s"] or 0))))
    from workflows.cluster import worker_environ

    # The process settings scenewatch's local workers get (glibc's allocator; numpy's huge pages left out on a
    # VM whose host takes back free ones), for the model alone (as the workers run it) and for a second run
    # of the naive script: the fair baseline for what the code does, beside the script as a user runs it.
    worker_env = worker_environ()
    parts = [_in_process("model_alone", scene, bundle, i, 2, args.alone_tiles, env=worker_env) for i in range(2)]
    alone = sum(p["pixels"] for p in parts) / sum(p["seconds"] for p in parts) / 1e6 * 2  # two workers' worth
    out = Path(tempfile.mkdtemp(prefix="out-", dir=work))
    e2e, (scene_s, polygons_s), e2e_cpu = _timed_cli("predict", scene, "--model", bundle, "--bands", "naip",
                                                     "--out", str(out))
    naive = _in_process("naive_run", scene, bundle, str(work / "naive"))
    # On a VM whose host takes back free huge pages, the naive script's whole-scene arrays (1.5 GB at 8192²)
    # pay numpy's huge pages a fault per 4 KiB at the host (88.9 s against 64.9 without, docs/benchmarks.md)
    fair = _in_process("naive_run", scene, bundle, str(work / "naive"), env=worker_env)
    mp = args.size**2 / 1e6
    print(f"model alone ({parts[0]['backend']}, 2 processes x 1 thread, {args.alone_tiles} tiles): {alone:.2f} MP/s")
    print(f"scenewatch predict (defaults, COGs and polygons, {args.size}²): {e2e:.1f} s = {mp / e2e:.2f} MP/s "
          f"(COGs {scene_s:.1f} s from cluster start, polygons {polygons_s:.1f} s; the rest: start-up, quicklook, "
          "report)")
    print(f"naive fp32 script: {naive['seconds']:.1f} s = {mp / naive['seconds']:.2f} MP/s")
    settings = " ".join(f"{k}={v}" for k, v in worker_env.items())
    print(f"naive fp32 script with the workers' process settings ({settings or 'none'}): {fair['seconds']:.1f} s "
          f"= {mp / fair['seconds']:.2f} MP/s")
    print(f"end to end vs naive: {naive['seconds'] / e2e:.2f}x (vs the naive script with the workers' settings: "
          f"{fair['seconds'] / e2e:.2f}x); end to end vs model alone: {mp / e2e / alone:.2f}")
    # the run's CPU cannot take less than CPU / cores of wall, however well its parts overlap
    cores = os.cpu_count() or 1
    print(f"end to end CPU: {e2e_cpu:.1f} s (the command and the workers it waited for); on {cores} cores it "
          f"cannot finish in under {e2e_cpu / cores:.1f} s: at most {mp / (e2e_cpu / cores) / alone:.2f} of the "
          "model alone with every part overlapped")
    print(f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} (1, 5, 15 min)")


def naive_run(scene: str, bundle: str, out: str) -> dict[str, Any]:
    from bench.cases import naive

    return naive(scene, bundle, out)


if __name__ == "__main__":
    main()


def measure_onnx(scene: str, bundle: str, threads: int) -> dict[str, Any]:
    """ONNX Runtime (fp32, and static int8 calibrated on the same 2 tiles as OpenVINO's) measured beside
    auto's candidates, in the same interleaved rounds (``pip install onnxruntime onnx onnxscript`` first:
    not a dependency). The answer to "is ONNX Runtime the fastest anywhere": it would be a candidate if so."""
    import numpy as np
    import torch

    from bench.models import OnnxForward, export_onnx
    from pipeline.inference.read import read_window
    from pipeline.models import backends
    from pipeline.models.bundle import load_bundle
    from pipeline.models.network import AUTO_DRIFT_LIMIT

    torch.set_num_threads(threads)
    meta, _, tiles = _first_tiles(scene)
    full = [t for t in tiles if (t.read_window.height, t.read_window.width) == (TILE + 2 * HALO,) * 2][:SAMPLES]
    model: Any = load_bundle(bundle)
    x = model.prepare(np.stack([read_window(meta, t.read_window, (1, 2, 3, 4))[0] for t in full]))
    samples = [x[i : i + 1].contiguous() for i in range(len(x))]
    candidates, _ = backends.offer(model, samples, model.identity)
    with tempfile.TemporaryDirectory() as folder:
        fp32 = OnnxForward(export_onnx(model.network, samples[0], Path(folder)), threads)
        sub = Path(folder) / "q"
        sub.mkdir()
        int8 = OnnxForward(export_onnx(model.network, samples[0], sub, list(samples[0::2])), threads)
        candidates += [backends.Backend("onnxruntime-fp32", "fp32", False, fp32),
                       backends.Backend("onnxruntime-int8", "int8", False, int8, judge_on=(1, 3))]
        measured = backends.measure(model, candidates, samples, AUTO_DRIFT_LIMIT)
    return {"measurements": [m.as_json() for m in measured]}


def model_side(scene: str, bundle: str, tiles: int = 8) -> dict[str, float]:
    """Milliseconds per full tile, one thread, for each step a worker takes around the network: reading,
    normalising and padding (prepare), the chosen backend's forward, softmax and crop, and the rest of
    ``predict_tiles`` (checks, blend weights, class and probability encoding)."""
    import torch

    from pipeline.inference.predict import TileInput, predict_tiles
    from pipeline.inference.read import read_window
    from pipeline.models.contract import ModelRef
    from pipeline.models.loader import load_model
    from pipeline.models.warm import OpenVinoModel, softmax
    from workflows.backends import settle_backend

    torch.set_num_threads(1)
    meta, grid, all_tiles = _first_tiles(scene)
    ref = ModelRef.of(bundle).with_threads(1)
    settle_backend(meta, grid, (1, 2, 3, 4), ref)
    model: Any = load_model(ref)
    full = [t for t in all_tiles if (t.read_window.height, t.read_window.width) == (TILE + 2 * HALO,) * 2]
    chosen = full[:: max(1, len(full) // tiles)][:tiles]
    spent = dict.fromkeys(("read", "prepare", "forward", "softmax_crop", "predict_tiles_rest"), 0.0)
    warm = getattr(model, "_settled", None)  # an OpenVINO choice started without torch (pipeline.models.warm)
    for t in chosen:
        start = time.perf_counter()
        data, valid = read_window(meta, t.read_window, (1, 2, 3, 4))
        a = time.perf_counter()
        x = model.prepare(data[None])
        b = time.perf_counter()
        if isinstance(warm, OpenVinoModel):
            logits = warm.forward.infer(x)
            c = time.perf_counter()
            softmax(logits)[..., : data.shape[1], : data.shape[2]]
        else:
            backend = model._backend
            with torch.no_grad():
                logits = backend.forward(x) if backend.forward is not None else model.network(x)
            c = time.perf_counter()
            torch.softmax(logits.float(), dim=1)[..., : data.shape[1], : data.shape[2]].numpy()
        d = time.perf_counter()
        predict_tiles(model, [TileInput(t, data, valid)], grid, grid.halo // 2)
        e = time.perf_counter()
        whole = e - d
        spent["read"] += a - start
        spent["prepare"] += b - a
        spent["forward"] += c - b
        spent["softmax_crop"] += d - c
        spent["predict_tiles_rest"] += max(0.0, whole - (d - a))
    return {k: 1000 * v / len(chosen) for k, v in spent.items()} | {"backend": model.backend}  # type: ignore[dict-item]
