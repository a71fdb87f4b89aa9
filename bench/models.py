"""Model inference speed: megapixels per second per model and precision, against fp32 eager in the same run.

For a seeded smp network (default a resnet18 U-Net) on real imagery (the bundled NAIP sample, 4 bands,
z-scored with the scene's statistics) it times :class:`pipeline.models.model.TorchSegmentationModel.predict` at
each precision (eager fp32 = the baseline; bf16 autocast + channels-last; auto; torch.compile), interleaving
the variants round by round so that load from other processes hits them alike, and prints:

- MP/s (median round) and the ratio to fp32 eager,
- GFLOP/s reached (FLOPs of one forward counted by torch.utils.flop_counter at fp32),
- probability drift: mean absolute difference to the fp32 probabilities, on the random-init network and
  on the same network briefly fitted to an NDVI mask, BatchNorm statistics settled (a "trained" network has
  peaked logits; random-init nets can be degenerate, so both are reported),
- int8 (when OpenVINO and NNCF are installed): calibrated on 4 other tiles of the scene, without the
  drift limit that ``scenewatch models quantize`` applies, so that its drift on a random network shows,
- OpenVINO without quantizing (with int8's extras): the precision it picks itself (bf16 on a CPU with
  AMX or AVX512-BF16),
- ONNX Runtime (when ``onnxruntime``, ``onnx`` and ``onnxscript`` are installed; not a dependency of
  scenewatch): the network exported with ``torch.onnx.export`` (dynamic batch, height and width) in fp32,
  and a static int8 copy (QDQ, per-channel weights, min-max ranges over the same calibration tiles as
  OpenVINO's), each run through the same ``predict`` (normalisation, padding, softmax) as the others,
- the spectral models' MP/s,
- optionally (``--scene``) the end-to-end ``predict_scene`` time, fp32 vs auto, on an existing 2-worker
  LocalCluster (cluster start excluded).

Usage::

    python bench/models.py --threads 2 --rounds 5 --train-steps 40 --scene examples/data/m_4709963_se_14_1_20200831.tif
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NAIP = REPO / "examples" / "data" / "m_4709963_se_14_1_20200831.tif"


def load_imagery(path: Path, tile: int, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``batch`` tiles of ``tile`` px from the scene (raw values), and its per-band mean and std."""
    import rasterio

    with rasterio.open(path) as src:
        data = src.read(out_dtype="float32")
    mean = data.reshape(data.shape[0], -1).mean(axis=1)
    std = data.reshape(data.shape[0], -1).std(axis=1)
    tiles = []
    for i in range(batch):
        r0 = (i * 137) % max(1, data.shape[1] - tile)
        c0 = (i * 211) % max(1, data.shape[2] - tile)
        tiles.append(data[:, r0 : r0 + tile, c0 : c0 + tile])
    return np.stack(tiles), mean, std


def fit_to_ndvi(network, data: np.ndarray, mean: np.ndarray, std: np.ndarray, steps: int, seed: int = 0):
    """A few Adam steps towards the NDVI > 0.3 mask: enough to give the network peaked, data-driven logits."""
    import torch

    torch.manual_seed(seed)
    red, nir = data[:, 0], data[:, 3]
    target = torch.from_numpy(((nir - red) / np.maximum(nir + red, 1e-6) > 0.3).astype(np.int64))
    x = torch.from_numpy((data - mean[None, :, None, None]) / std[None, :, None, None]).float()
    net = copy.deepcopy(network).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        crop = slice(0, 256)
        loss = torch.nn.functional.cross_entropy(net(x[:, :, crop, crop]), target[:, crop, crop])
        loss.backward()
        opt.step()
    # BatchNorm statistics recomputed over the data, as training to convergence leaves them: after a few
    # steps they lag the weights, and int8 calibrated on such a network drifts 0.06 instead of 0.004
    torch.optim.swa_utils.update_bn([x], net)
    return net.eval(), float(loss.detach())


class OnnxForward:
    """An ONNX Runtime session as the forward of :class:`TorchSegmentationModel` (normalized, padded input
    to logits), in the slot that an int8 variant takes, so that both run the same ``predict`` around it."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x):
        import torch

        return torch.from_numpy(self._session.run(None, {"x": np.ascontiguousarray(x.cpu().numpy())})[0])


def export_onnx(network, example, folder: Path, calibration: list | None = None) -> Path:
    """The network as ONNX in ``folder``: fp32, or, given ``calibration`` (prepared inputs), static int8
    (QDQ) calibrated on them. Returns the file to run."""
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, pre, int8 = folder / "fp32.onnx", folder / "pre.onnx", folder / "int8.onnx"
    example = torch.cat([example[:1], example[:1]])  # batch 2: a batch of 1 would be fixed at 1
    dims = {0: torch.export.Dim("batch", max=64), 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    with contextlib.redirect_stdout(sys.stderr):  # the exporter reports its steps on stdout
        torch.onnx.export(copy.deepcopy(network).eval(), (example,), dynamo=True, input_names=["x"],
                          dynamic_shapes=(dims,)).save(str(fp32))
    if calibration is None:
        return fp32

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self._tiles = iter(calibration)

        def get_next(self):
            tile = next(self._tiles, None)
            return None if tile is None else {"x": np.ascontiguousarray(tile.cpu().numpy())}

    cwd = os.getcwd()
    os.chdir(folder)  # both write scratch files into the working directory
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # it cannot follow dynamic H, W
        quantize_static(str(pre), str(int8), Tiles(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        os.chdir(cwd)
    return int8


def count_flops(network, shape: tuple[int, ...]) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(shape))
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="Unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--scene", type=Path, default=None, help="also time predict_scene end to end")
    args = parser.parse_args()

    import segmentation_models_pytorch as smp
    import torch

    from pipeline.models.contract import BUILTIN_MODELS, ModelInfo, ModelRef
    from pipeline.models.loader import load_model
    from pipeline.models.network import TorchSegmentationModel

    torch.set_num_threads(args.threads)
    data, mean, std = load_imagery(NAIP, args.tile, args.batch)
    bands = ("red", "green", "blue", "nir")
    info = ModelInfo("bench", "0", bands, ("other", "vegetation"))
    torch.manual_seed(0)
    network = smp.create_model(args.arch, encoder_name=args.encoder, encoder_weights=None, in_channels=4, classes=2)
    network.eval()
    flops = count_flops(network, (args.batch, 4, args.tile, args.tile))
    mp = args.batch * args.tile * args.tile / 1e6
    print(f"# {args.arch}/{args.encoder}, batch {args.batch} x {args.tile} px ({mp:.3f} MP), {args.threads} "
          f"threads, {flops / 1e9:.1f} GFLOP per batch, torch {torch.__version__}, "
          f"mkldnn bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")

    trained, loss = fit_to_ndvi(network, data, mean, std, args.train_steps) if args.train_steps else (None, 0.0)

    int8_ok = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
    calibration = load_imagery(NAIP, args.tile, args.batch + 4)[0][args.batch:]  # other tiles than those timed

    onnx_ok = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript"))

    def make(net, precision: str, compile: bool = False) -> TorchSegmentationModel:
        variant = None
        if precision.startswith("onnx "):  # ONNX Runtime in the forward's slot; see OnnxForward
            fp32 = make(net, "fp32")
            tiles = [fp32.prepare(t[None]) for t in calibration] if precision == "onnx int8" else None
            with tempfile.TemporaryDirectory() as folder:  # a session keeps no hold on its file
                forward = OnnxForward(export_onnx(net, fp32.prepare(data), Path(folder), tiles), args.threads)
            return TorchSegmentationModel(copy.deepcopy(net), info, mean=mean, std=std, precision="int8",
                                          device="cpu", int8=forward)
        if precision == "openvino":  # OpenVINO without quantizing: its own choice of precision on this CPU
            import openvino as ov

            from pipeline.models.int8 import OpenVinoForward, _export

            fp32 = make(net, "fp32")
            variant = OpenVinoForward(ov.convert_model(_export(fp32.network, fp32.prepare(data))))
            return TorchSegmentationModel(copy.deepcopy(net), info, mean=mean, std=std, precision="int8",
                                          device="cpu", int8=variant)
        if precision == "int8":  # calibrated on other tiles of the scene, as `scenewatch models quantize` does
            from pipeline.models.int8 import OpenVinoForward, calibrate

            fp32 = make(net, "fp32")
            # NNCF draws progress bars on stdout, which is this script's table
            with contextlib.redirect_stdout(sys.stderr):
                variant = OpenVinoForward(calibrate(fp32, [fp32.prepare(t[None]) for t in calibration]))
        return TorchSegmentationModel(copy.deepcopy(net), info, mean=mean, std=std, precision=precision,
                                      compile=compile, device="cpu", int8=variant)

    variants = {"fp32 channels-last": ("fp32", False), "bf16 eager": ("bf16", False), "auto": ("auto", False)}
    if int8_ok:
        variants["int8 (OpenVINO)"] = ("int8", False)
        variants["OpenVINO, not quantized"] = ("openvino", False)
    if onnx_ok:
        variants["ONNX Runtime fp32"] = ("onnx fp32", False)
        variants["ONNX Runtime int8"] = ("onnx int8", False)
    plain = copy.deepcopy(network)
    plain_x = torch.from_numpy((data - mean[None, :, None, None]) / std[None, :, None, None]).float()

    def plain_fp32() -> None:  # the baseline: the bare network, contiguous fp32, no_grad
        with torch.no_grad():
            torch.softmax(plain(plain_x), dim=1)

    if not args.no_compile:
        variants["bf16 compiled"] = ("bf16", True)
    models = {name: make(network, p, c) for name, (p, c) in variants.items()}
    compile_s = {}
    for name, model in models.items():  # warm-up (and compile) outside the timed rounds
        t0 = time.perf_counter()
        model.predict(data)
        compile_s[name] = time.perf_counter() - t0
    plain_fp32()
    times: dict[str, list[float]] = {name: [] for name in ["plain fp32", *models]}
    cpu: dict[str, list[float]] = {name: [] for name in times}  # process CPU time: robust to other load
    for _ in range(args.rounds):
        for name, run in [("plain fp32", plain_fp32),
                          *[(n, lambda m=m: m.predict(data)) for n, m in models.items()]]:
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    reference = models["fp32 channels-last"].predict(data)
    trained_ref = make(trained, "fp32").predict(data) if trained is not None else None
    base = statistics.median(times["plain fp32"])
    cpu_base = statistics.median(cpu["plain fp32"])
    print(f"\n| variant | resolved | MP/s | x fp32 eager | GFLOP/s | MP per CPU-s | x fp32 (CPU time) | "
          f"drift (random init) | drift (fitted {args.train_steps} steps) | first call s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| plain torch fp32 (baseline) | fp32 contiguous | {mp / base:.2f} | 1.00 | {flops / base / 1e9:.0f} | "
          f"{mp / cpu_base:.2f} | 1.00 | 0 | 0 | - |")
    for name, model in models.items():
        t = statistics.median(times[name])
        drift = float(np.abs(model.predict(data) - reference).mean())
        if trained is not None:
            precision, compiled = variants[name]
            drift_t = ("-" if compiled else
                       f"{float(np.abs(make(trained, precision).predict(data) - trained_ref).mean()):.4f}")
        else:
            drift_t = "-"
        cpu_s = statistics.median(cpu[name])
        resolved = variants[name][0] if variants[name][0].startswith("onnx ") else model.precision
        if variants[name][0] == "openvino":  # the precision OpenVINO chose for this CPU
            hint = model._int8._compiled.get_property("INFERENCE_PRECISION_HINT")
            resolved = f"openvino {hint.get_type_name()}"
        print(f"| {name} | {resolved}{' compiled' if model.compiled else ''} | {mp / t:.2f} | "
              f"{base / t:.2f} | {flops / t / 1e9:.0f} | {mp / cpu_s:.2f} | {cpu_base / cpu_s:.2f} | {drift:.4f} | "
              f"{drift_t} | {compile_s[name]:.1f} |")
    if trained is not None:
        print(f"\n(fitted network: final loss {loss:.3f}; drift of a compiled variant equals its eager twin's "
              f"to within rounding, so it is not refitted)")

    print("\n| spectral model | MP/s |")
    print("|---|---|")
    for name in sorted(BUILTIN_MODELS):
        model = load_model(ModelRef.of(name))
        x = data[:, :len(model.info.bands)] + 1.0  # flood-sar takes one band, the indexes two
        model.predict(x)
        t0 = time.perf_counter()
        for _ in range(args.rounds):
            model.predict(x)
        print(f"| {name} | {mp * args.rounds / (time.perf_counter() - t0):.1f} |")

    if args.scene is not None:
        end_to_end(args, network, mean, std)


def end_to_end(args: argparse.Namespace, network, mean, std) -> None:
    """predict_scene through a bundle, fp32 vs auto (and compile), on one 2-worker LocalCluster."""
    import rasterio
    from distributed import Client, LocalCluster

    from pipeline.config import PredictConfig
    from pipeline.models.bundle import save_bundle
    from pipeline.models.contract import ModelRef
    from workflows.scene import plan_scene, predict_scene

    with rasterio.open(args.scene) as src:
        pixels = src.width * src.height
    with tempfile.TemporaryDirectory() as tmp:
        bundle = save_bundle(Path(tmp) / "bench-unet", network, arch=args.arch, encoder=args.encoder,
                             bands=["red", "green", "blue", "nir"], class_names=["other", "vegetation"],
                             mean=list(map(float, mean)), std=list(map(float, std)))
        workers = 2
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          memory_limit=0) as cluster, Client(cluster) as client:
            print(f"\n| end to end ({Path(args.scene).name}, {pixels / 1e6:.2f} MP, {workers} workers x "
                  f"{max(1, args.threads // workers)} thread) | first run s (loads the model) | second run s | "
                  f"MP/s (second) | x fp32 |")
            print("|---|---|---|---|---|")
            base = None
            for label, options in (("fp32", {"precision": "fp32"}), ("auto", {"precision": "auto"}),
                                   ("auto + compile", {"precision": "auto", "compile": True})):
                ref = ModelRef.of(str(bundle), **options).with_threads(max(1, args.threads // workers))
                runs = []
                for _ in range(2):
                    t0 = time.perf_counter()
                    plan = plan_scene(args.scene, ref, PredictConfig(bands="naip", tile_size=args.tile))
                    predict_scene(plan, Path(tmp) / "out", client=client, progress=False)
                    runs.append(time.perf_counter() - t0)
                base = base or runs[1]
                print(f"| {label} | {runs[0]:.1f} | {runs[1]:.1f} | {pixels / runs[1] / 1e6:.2f} | "
                      f"{base / runs[1]:.2f} |")


if __name__ == "__main__":
    main()
