"""The benchmark harness: ``python -m bench [--quick]``.

Generates seeded synthetic scenes (4-band uint16 DEFLATE) in a temp folder, runs every comparison with each
case in its own process (peak memory sampled over that process tree), prints a table of ratios against
baselines measured in the same run, and rewrites the generated section of ``docs/benchmarks.md``.

``--quick`` runs every comparison at tiny sizes in well under a minute: the test suite runs it to keep the
harness working; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.memory import PeakMemory, gib
from bench.scenes import make_scene

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"



def make_bundle(path: Path, scene: Path) -> Path:
    """A seeded resnet18 U-Net for the 4-band bench scenes, as a user has it after training and
    `scenewatch models quantize`: fitted for a few steps to the NDVI > 0.3 mask of crops spread over
    ``scene`` (38 % of its pixels; BatchNorm statistics settled), with an int8 variant calibrated on that
    scene when OpenVINO and NNCF are installed. Made once per folder."""
    if (path / "model.json").exists():
        return path
    import importlib.util

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
    bands, classes = ["red", "green", "blue", "nir"], ["background", "foreground"]
    network = smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None, in_channels=4, classes=2)
    network, _ = fit_to_ndvi(network, crops, mean, std, steps=20)
    save_bundle(path, network, arch="Unet", encoder="resnet18", bands=bands, class_names=classes,
                mean=mean.tolist(), std=std.tolist())
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        from pipeline.models.quantize import quantize_bundle

        quantize_bundle(path, [scene], bands="naip")
    return path


@dataclass
class Measure:
    name: str
    seconds: float
    pixels: int
    peak: int
    extra: dict[str, Any]

    @property
    def mps(self) -> float:
        return self.pixels / self.seconds / 1e6


_MEMO: dict[str, Measure] = {}


def run_case(case: str, *, as_user: bool = False, **args: Any) -> Measure:
    """Run one case in its own process (the same case with the same arguments runs once per harness run).

    A baseline runs with the process settings scenewatch gives its local workers (glibc's allocator; numpy's
    huge pages left out on a VM whose host takes back free ones), unless ``as_user``: without them the naive
    script spent 40 % of its time in the kernel on this VM (93.5 s against 56.3, docs/benchmarks.md), which
    flattered every ratio against it. scenewatch's own run keeps the environment a user has; its workers get
    the settings."""
    key = case + json.dumps(args, sort_keys=True) + (" as user" if as_user else "")
    if key not in _MEMO:
        _MEMO[key] = _run_case(case, as_user or case == "predict", **args)
    return _MEMO[key]


def _run_case(case: str, as_user: bool, **args: Any) -> Measure:
    from workflows.cluster import worker_environ

    env = os.environ | ({} if as_user else worker_environ()) | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "bench.cases", case, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    with PeakMemory(pid=proc.pid) as mem:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bench case {case} failed:\n{err[-3000:]}")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return Measure(case, result.pop("seconds"), result.pop("pixels"), mem.peak, result)


@dataclass
class Row:
    comparison: str
    figure: str
    ratio: float
    target: str
    met: bool | None

    def cells(self) -> list[str]:
        verdict = "n/a" if self.met is None else ("met" if self.met else "**missed**")
        return [self.comparison, self.figure, f"{self.ratio:.2f}", self.target, verdict]


def comparisons(quick: bool, work: Path) -> list[Row]:
    # --quick: one tiny size everywhere, so identical cases run once (figures are meaningless there)
    small, mid, large = (384, 384, 384) if quick else (4096, 8192, 16384)
    scenes = {n: make_scene(work / f"scene_{n}.tif", n) for n in (small, mid, large)}
    warm_up = str(make_scene(work / "scene_warm_up.tif", 256 if quick else 1024, seed=1))
    unet = str(make_bundle(work / "unet-resnet18-fitted", Path(warm_up)))  # a bundle, as users pass it
    # `auto` measures the backends once per model, machine and tile shape (cached: docs/models.md), with torch
    # and every candidate loaded in the workers: a run that measured peaked at 3.3 GiB against 1.1-1.3 settled,
    # and the memory rows compared such a run (4096², the first with full 576 px tiles) with settled ones. A
    # user pays that once; the rows measure the runs after it. The warm-up scene (1024²) has no full tile, so
    # it settles on a 544 px one; the others settle on full tiles.
    for scene in (warm_up, str(scenes[small])):
        run_case("predict", scene=scene, model=unet, out=str(work / "settle"), workers=2, options={})
    out = str(work / "out")
    rows: list[Row] = []

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # 7. reading alone: the I/O floor
    floor = run_case("read_floor", scene=str(scenes[large]))
    log(f"read floor {large}^2: {floor.mps:.1f} MP/s")

    # NDVI end to end at two sizes: rate against the floor, memory flatness, 1 vs 2 workers
    ndvi_small = run_case("predict", scene=str(scenes[small]), model="vegetation", out=out, workers=2,
                          options={"bands": "naip"})
    ndvi_large = run_case("predict", scene=str(scenes[large]), model="vegetation", out=out, workers=2,
                          options={"bands": "naip"})
    log(f"ndvi {large}^2: {ndvi_large.mps:.1f} MP/s, peak {gib(ndvi_large.peak):.2f} GiB")
    rows.append(Row(f"NDVI end to end vs reading alone ({large}²)",
                    f"{ndvi_large.mps:.1f} vs {floor.mps:.1f} MP/s", ndvi_large.mps / floor.mps, ">= 0.5",
                    ndvi_large.mps / floor.mps >= 0.5))
    flat = ndvi_large.peak / ndvi_small.peak
    rows.append(Row(f"NDVI peak memory {large}² vs {small}²",
                    f"{gib(ndvi_large.peak):.2f} vs {gib(ndvi_small.peak):.2f} GiB", flat, "<= 1.15",
                    flat <= 1.15))
    rows.append(Row(f"NDVI peak memory {large}²", f"{gib(ndvi_large.peak):.2f} GiB", gib(ndvi_large.peak) / 1.5,
                    "< 1.5 GiB", gib(ndvi_large.peak) < 1.5))
    # Scaling on a warm cluster (workers started, as for every scene of a batch but the first): cluster
    # start is a fixed cost that does not scale, reported beside the ratio.
    one = run_case("predict", scene=str(scenes[mid]), model="vegetation", out=out, workers=1,
                   options={"bands": "naip"}, warm_up=warm_up)
    two = run_case("predict", scene=str(scenes[mid]), model="vegetation", out=out, workers=2,
                   options={"bands": "naip"}, warm_up=warm_up)
    rows.append(Row(f"Dask scaling, NDVI {mid}², warm cluster: 2 workers vs 1",
                    f"{two.mps:.1f} vs {one.mps:.1f} MP/s (cold, with cluster start: "
                    f"{two.pixels / two.extra['cold_seconds'] / 1e6:.1f} vs "
                    f"{one.pixels / one.extra['cold_seconds'] / 1e6:.1f})", two.mps / one.mps, ">= 1.6",
                    two.mps / one.mps >= 1.6))

    # U-Net: pipeline overhead against the model alone (on the same tiles, in the best of one process of
    # two threads and two processes of one thread), and the naive script
    unet_mid = run_case("predict", scene=str(scenes[mid]), model=unet, out=out, workers=2, options={},
                        warm_up=warm_up)
    log(f"unet {mid}^2: {unet_mid.mps:.2f} MP/s warm, peak {gib(unet_mid.peak):.2f} GiB")
    n_alone = 8 if quick else 24

    def best_alone(**options: Any) -> Any:  # the best of one process of two threads and two of one
        return max((run_case("model_alone", scene=str(scenes[mid]), model=unet, tile=512, halo=32, threads=t,
                             max_tiles=n_alone, processes=p, **options) for t, p in ((2, 1), (1, 2))),
                   key=lambda m: m.mps)

    alone = best_alone()
    rows.append(Row(f"U-Net (resnet18, precision auto) end to end, warm cluster, vs model alone ({mid}²)",
                    f"{unet_mid.mps:.2f} vs {alone.mps:.2f} MP/s (cold, with cluster start and model "
                    f"loading: {unet_mid.pixels / unet_mid.extra['cold_seconds'] / 1e6:.2f})",
                    unet_mid.mps / alone.mps, ">= 0.85", unet_mid.mps / alone.mps >= 0.85))
    # The same comparison with a model 2.4x slower per tile: the work around the model is the same per
    # tile, so its share, and the ratio, follow the model's speed (bf16 was `auto` until int8 variants).
    unet_bf16 = run_case("predict", scene=str(scenes[mid]), model=unet, out=out, workers=2,
                         options={"precision": "bf16"}, warm_up=warm_up)
    alone_bf16 = best_alone(precision="bf16")
    rows.append(Row(f"U-Net, --precision bf16, end to end, warm cluster, vs model alone in bf16 ({mid}²)",
                    f"{unet_bf16.mps:.2f} vs {alone_bf16.mps:.2f} MP/s", unet_bf16.mps / alone_bf16.mps,
                    ">= 0.85", unet_bf16.mps / alone_bf16.mps >= 0.85))
    fp32 = run_case("predict", scene=str(scenes[small]), model=unet, out=out, workers=2,
                    options={"precision": "fp32"}, warm_up=warm_up)
    auto = run_case("predict", scene=str(scenes[small]), model=unet, out=out, workers=2, options={},
                    warm_up=warm_up)
    from pipeline.models.bundle import read_spec

    variant = read_spec(unet).int8
    resolved = (f"auto = the int8 variant, held-out drift {variant.drift:.4f}" if variant else
                "auto = bf16 (no int8 variant: OpenVINO/NNCF not installed)")
    # Issue 4's goal: `auto` end to end at least 4x "fp32 eager", the bare network's rate (0.55 MP/s in the
    # issue, 2 threads). Measured here on the same tiles, best of one process of two threads and two of one.
    eager = best_alone(plain=True)
    rows.append(Row(f"U-Net end to end, precision auto, warm cluster, vs plain fp32 eager model alone ({mid}²)",
                    f"{unet_mid.mps:.2f} vs {eager.mps:.2f} MP/s ({resolved})", unet_mid.mps / eager.mps, ">= 4",
                    unet_mid.mps / eager.mps >= 4))
    # Stricter, our own aim: both ends through scenewatch, the baseline our channels-last fp32 (1.3x eager).
    rows.append(Row(f"U-Net end to end, precision auto vs --precision fp32, both warm ({small}²)",
                    f"{auto.mps:.2f} vs {fp32.mps:.2f} MP/s", auto.mps / fp32.mps, "our aim: >= 4",
                    auto.mps / fp32.mps >= 4))
    naive = run_case("naive", scene=str(scenes[mid]), model=unet, out=out)
    # and as a user runs it: slower where the VM takes its toll, but glibc's defaults give memory back, so
    # its peak is lower (3.4 against 4.1 GiB at 8192²); each row compares with the baseline's better figure
    naive_user = run_case("naive", as_user=True, scene=str(scenes[mid]), model=unet, out=out)
    log(f"naive {mid}^2: {naive.mps:.2f} MP/s, peak {gib(naive.peak):.2f} GiB; as a user runs it "
        f"{naive_user.mps:.2f} MP/s, peak {gib(naive_user.peak):.2f} GiB")
    fastest, smallest = min(naive.seconds, naive_user.seconds), min(naive.peak, naive_user.peak)
    # The issue calls this script "the baseline to beat"; 5x was our own aim (the compile figure of the
    # issue), shown beside the verdict so that it is not forgotten.
    rows.append(Row(f"U-Net end to end vs naive script (fp32, whole scene in memory) ({mid}²)",
                    f"{unet_mid.seconds:.0f} s vs {fastest:.0f} s (as a user runs it: {naive_user.seconds:.0f} s)",
                    fastest / unet_mid.seconds, "> 1 (our aim: 5)", fastest / unet_mid.seconds > 1))
    rows.append(Row(f"U-Net peak memory vs naive script ({mid}²)",
                    f"{gib(unet_mid.peak):.2f} vs {gib(smallest):.2f} GiB", unet_mid.peak / smallest, "< 1",
                    unet_mid.peak < smallest))
    peak = run_case("matmul_peak", threads=2)
    rows.append(Row("U-Net GFLOP/s (model alone, 2 threads) vs this CPU's bf16 matrix product",
                    f"{alone.extra['gflops']:.0f} vs {peak.extra['bf16_gflops']:.0f} GFLOP/s "
                    f"(fp32 product {peak.extra['fp32_gflops']:.0f})",
                    alone.extra["gflops"] / peak.extra["bf16_gflops"], "report", None))
    unet_small = run_case("predict", scene=str(scenes[small]), model=unet, out=out, workers=2, options={})
    unet_large = run_case("predict", scene=str(scenes[large]), model=unet, out=out, workers=2, options={})
    log(f"unet {small}^2: peak {gib(unet_small.peak):.2f} GiB; {large}^2: {unet_large.mps:.2f} MP/s, "
        f"peak {gib(unet_large.peak):.2f} GiB")
    rows.append(Row(f"U-Net peak memory {large}² vs {small}²",
                    f"{gib(unet_large.peak):.2f} vs {gib(unet_small.peak):.2f} GiB",
                    unet_large.peak / unet_small.peak, "<= 1.15", unet_large.peak / unet_small.peak <= 1.15))
    rows.append(Row(f"U-Net peak memory {large}², 2 workers", f"{gib(unet_large.peak):.2f} GiB",
                    gib(unet_large.peak) / 3, "< 3 GiB", gib(unet_large.peak) < 3))
    rows += archive_rows(quick, work, scenes[small], warm_up)
    rows += writer_rows(quick, work, scenes[small], warm_up, unet)
    return rows


# Issue 20 is measured against main before it: its rows run that commit's code from a git worktree, with
# today's measuring scripts copied in (they use only plan_scene, predict_scene and vectorize_scene).
BEFORE_ISSUE_20 = "81168c2"


def _script(module: str, *args: str, tree: Path = REPO) -> dict[str, Any]:
    """``python -m MODULE ARGS`` with the code of ``tree`` (this checkout, or a worktree of an older commit):
    the JSON of its ``RESULT`` line."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    run = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=tree, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{run.stderr[-3000:]}")
    return dict(json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:]))


@contextlib.contextmanager
def old_tree(commit: str, work: Path) -> Iterator[Path]:
    """A git worktree of ``commit`` with today's bench/cpu.py and bench/client_share.py copied in, removed
    (and unregistered) afterwards."""
    import shutil

    tree = work / f"tree-{commit}"
    subprocess.run(["git", "worktree", "add", "--detach", "--force", str(tree), commit], cwd=REPO, check=True,
                   capture_output=True)
    try:
        for name in ("cpu.py", "client_share.py"):
            shutil.copy(REPO / "bench" / name, tree / "bench" / name)
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)


def archive_rows(quick: bool, work: Path, scene: Path, warm_up: str) -> list[Row]:
    """Issue 20: a batch with scenes in flight against one scene at a time; the client's share of the CPU
    of a scene with polygons, before and after (``--quick``: both on this checkout, tiny)."""
    size, count = (384, 2) if quick else (4096, 8)
    batch = _script("bench.batch_throughput", "--scenes", str(count), "--size", str(size), "--workers", "2",
                    "--work", str(work / "archive"))
    rows = [Row(f"Archive throughput, {count} NDVI scenes of {size}², 2 workers: {batch['scenes_in_flight']} scenes "
                f"in flight vs one at a time (issue 20)",
                f"{batch['in_flight_seconds']:.1f} vs {batch['one_at_a_time_seconds']:.1f} s", batch["ratio"],
                ">= 1.3", batch["ratio"] >= 1.3)]
    args = ("--scene", str(scene), "--warm-up", warm_up, "--workers", "2", "--polygons")
    after = _script("bench.client_share", *args, "--out", str(work / "share-after"))
    with contextlib.nullcontext(REPO) if quick else old_tree(BEFORE_ISSUE_20, work) as tree:
        before = _script("bench.client_share", *args, "--out", str(work / "share-before"), tree=tree)
    share, was = after["total"]["share"], before["total"]["share"]
    rows.append(Row(f"Client share of the CPU, NDVI {size}² with polygons: now vs "
                    f"{BEFORE_ISSUE_20} (issue 20)",
                    f"{share:.1%} vs {was:.1%} (polygons alone {after['vectorize']['share']:.1%} vs "
                    f"{before['vectorize']['share']:.1%}; COGs alone {after['predict']['share']:.1%} vs "
                    f"{before['predict']['share']:.1%}; without Dask's event loop, where a LocalCluster's "
                    f"scheduler runs: {after['total']['own_share']:.1%} vs {before['total']['own_share']:.1%})",
                    share / was if was else 0.0, "share < 5 %", share < 0.05))
    return rows


def writer_rows(quick: bool, work: Path, scene: Path, warm_up: str, unet: str) -> list[Row]:
    """Issue 20, the writing of a scene's COGs moved to workers: the client's share of the CPU for the U-Net
    (resnet18, precision auto) with polygons and for its COGs alone, and each model's warm end-to-end time
    of the COGs, before (81168c2, from a worktree) and after, alternated in one run."""
    size = 384 if quick else 4096
    args = ("--scene", str(scene), "--warm-up", warm_up, "--workers", "2", "--polygons")
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    with contextlib.nullcontext(REPO) if quick else old_tree(BEFORE_ISSUE_20, work) as old:
        for model in ("vegetation", unet):
            for label, tree in (("before", old), ("after", REPO))[1 if quick else 0:]:  # --quick: this tree once
                figures[model, label] = _script("bench.client_share", *args, "--model", model, "--out",
                                                str(work / f"writer-{label}"), tree=tree)
            figures.setdefault((model, "before"), figures[model, "after"])
    rows = []
    after, before = figures[unet, "after"], figures[unet, "before"]
    share, was = after["total"]["share"], before["total"]["share"]
    rows.append(Row(f"Client share of the CPU, U-Net {size}² with polygons: now vs {BEFORE_ISSUE_20} (issue 20)",
                    f"{share:.1%} vs {was:.1%} (COGs alone {after['predict']['share']:.1%} vs "
                    f"{before['predict']['share']:.1%})", share / was if was else 0.0, "share < 2 %", share < 0.02))
    for model, name in (("vegetation", "NDVI"), (unet, "U-Net")):
        now, then = figures[model, "after"]["predict"], figures[model, "before"]["predict"]
        rows.append(Row(f"{name} {size}² COGs, warm cluster, 2 workers: now vs {BEFORE_ISSUE_20} (issue 20: no "
                        "regression)", f"{now['seconds']:.1f} vs {then['seconds']:.1f} s",
                        then["seconds"] / now["seconds"], ">= 0.95", then["seconds"] / now["seconds"] >= 0.95))
    return rows


# Component benchmarks, each a script of its own that prints markdown tables with ratios against its own
# baseline; the harness runs them and keeps their tables in the generated section.
COMPONENTS = {
    "Vectorize and merge vs one whole-raster rasterio.features.shapes": (
        ["bench/vectorize.py", "--size", "8192", "--repeat", "2"],
        ["bench/vectorize.py", "--size", "512", "--tile-size", "128", "--repeat", "1"]),
    "Inference precision vs fp32 eager (probability drift, GFLOP/s)": (
        ["bench/models.py", "--rounds", "3", "--train-steps", "20"],
        ["bench/models.py", "--tile", "128", "--batch", "1", "--rounds", "1", "--train-steps", "2", "--no-compile"]),
}


def components(quick: bool) -> dict[str, str]:
    from workflows.cluster import worker_environ

    out = {}
    # each script measures its baseline in its own process: with the settings scenewatch's workers get (_run_case)
    env = os.environ | worker_environ() | {"PYTHONPATH": str(REPO)}
    for title, (full, small) in COMPONENTS.items():
        args = small if quick else full
        print(f"running {' '.join(args)}", file=sys.stderr, flush=True)
        run = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{run.stderr[-3000:]}")
        out[title] = f"`python {' '.join(args)}`\n\n" + run.stdout.strip()
    return out


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import psutil

    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def table(rows: list[Row]) -> str:
    head = ["comparison", "figures", "ratio", "target", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


HISTORY_START, HISTORY_END = "<!-- bench:history:start -->", "<!-- bench:history:end -->"


def _history_line(rows: list[Row]) -> str:
    """One line per full run: the date, the load it ran under, and every ratio with its verdict."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cells = "; ".join(f"{r.comparison.split(' (')[0]} {r.ratio:.2f}" for r in rows)
    return f"- {time.strftime('%Y-%m-%d %H:%M')} (load {load:.1f}): {cells}"


def write_doc(rows: list[Row], parts: dict[str, str], command: str) -> None:
    """Rewrite the generated section of docs/benchmarks.md and add this run to its history list."""
    from workflows.cluster import worker_environ

    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    history: list[str] = []
    if HISTORY_START in text and HISTORY_END in text:
        history = [line for line in text.split(HISTORY_START, 1)[1].split(HISTORY_END, 1)[0].splitlines() if line]
    history = [_history_line(rows), *history][:20]
    settings = " ".join(f"`{k}={v}`" for k, v in worker_environ().items()) or "none needed here"
    lines = [START, f"## Engine and components (generated by `{command}`)", "",
             f"Last run: {time.strftime('%Y-%m-%d')} on {machine()}. Baselines (the naive script, the model "
             f"alone, reading alone, whole-raster polygons) ran with the process settings scenewatch's local "
             f"workers get: {settings}; the naive script also as a user runs it, each row taking its better "
             "figure.", "", table(rows), ""]
    for title, text_part in parts.items():
        lines += [f"### {title}", "", text_part, ""]
    lines += ["### History (newest first)", "", HISTORY_START, *history, HISTORY_END, END]
    section = "\n".join(lines)
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds; figures are meaningless")
    parser.add_argument("--work", type=Path, default=None, help="folder for generated scenes (kept between runs)")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scenewatch-bench-") as tmp:
        work = args.work or Path(tmp)
        rows = comparisons(args.quick, work)
        parts = components(args.quick)
    print(table(rows))
    for title, text in parts.items():
        print(f"\n### {title}\n\n{text}")
    if not args.quick and not args.no_doc:
        write_doc(rows, parts, "python -m bench" + (f" --work {args.work}" if args.work else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
