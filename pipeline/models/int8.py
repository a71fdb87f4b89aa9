"""int8 variants of model bundles: calibrated once, run by OpenVINO on the CPU.

bf16 autocast makes a U-Net 2-2.7x faster than fp32 on a CPU with native bf16; int8 makes it 5-6x faster
(resnet18 U-Net, 576 px tiles, 2 threads: 0.79 MP/s fp32 eager, 2.1 bf16, 4.4 int8). int8 needs what bf16
does not: calibration, i.e. the range of every activation on real input. That is done once per bundle, on
scenes the user chooses, by NNCF's post-training quantization, and kept in the bundle next to the weights::

    my-unet/
      model.json            ... "scenewatch:int8": {files, their sha256, the weights they were made from,
                            the drift and class agreement measured on held-out tiles, the calibration scenes}
      weights.safetensors
      int8.xml, int8.bin    the quantized network as OpenVINO IR (a graph and raw weights; no code)

Calibration refuses to write a variant whose probabilities drift more than
:data:`pipeline.models.model.AUTO_DRIFT_LIMIT` from fp32 on held-out tiles: a trained network typically drifts
0.003-0.006, a random-initialised one 0.03 (its activations are not what calibration expects). At run time
``--precision auto`` uses the variant on a CPU when OpenVINO is installed, and still checks it against fp32
on each worker's first tile (falling back to bf16 or fp32 past the same limit).

OpenVINO and NNCF are optional (``pip install 'scenewatch[int8]'``); only calibrating needs NNCF.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ModelError

__all__ = ["INT8_MODEL", "INT8_WEIGHTS", "Int8Result", "OpenVinoForward", "calibrate", "load_int8",
           "openvino_available", "quantize_bundle", "require_int8"]

log = logging.getLogger("scenewatch")

INT8_MODEL = "int8.xml"
INT8_WEIGHTS = "int8.bin"
MIN_VALID_FRACTION = 0.5
"""A calibration tile needs at least this share of valid pixels: nodata (read as 0) is not what the network
will be asked about, and would stretch the activation ranges."""
MIN_TILE = 64
"""No calibration tile core is cut smaller than this."""


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _openvino(what: str) -> Any:
    try:
        import openvino
    except ImportError as err:
        raise ModelError(f"{what}: int8 runs on OpenVINO, which is not installed; install it with "
                         f"pip install 'scenewatch[int8]'") from err
    return openvino


_core_lock = threading.Lock()
_core: Any = None


def _ov_core() -> Any:
    global _core
    with _core_lock:
        if _core is None:
            import openvino

            _core = openvino.Core()
        return _core


class OpenVinoForward:
    """An OpenVINO model as a forward function: a float32 torch tensor ``(N, bands, H, W)``, normalized
    and padded as the torch network expects, to float32 logits. The graph has dynamic batch, height and
    width, so edge tiles need no recompiling. It is compiled on first use with as many threads as torch
    uses in this process (set per worker); each thread calling it gets its own inference request."""

    def __init__(self, model: Any, keep: Any = None) -> None:
        self._model = model
        self._keep = keep  # the buffer the weights were read from, kept alive with the model
        self._compiled: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            with self._lock:
                if self._compiled is None:
                    import torch

                    # No pinning: OpenVINO pins its threads to cores counted from the first, so two
                    # worker processes of one thread each both ran on core 0 (282 ms per tile each,
                    # 140 ms unpinned).
                    self._compiled = _ov_core().compile_model(self._model, "CPU", {
                        "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
                        "ENABLE_CPU_PINNING": False})
                request = self._local.request = self._compiled.create_infer_request()
        return request

    def __call__(self, x: Any) -> Any:
        import torch

        out = self._request().infer({0: np.ascontiguousarray(x.cpu().numpy())})[0]
        return torch.from_numpy(np.array(out, dtype=np.float32))  # a copy: the request reuses its buffer


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def require_int8(folder: Path, spec: Any) -> Any:
    """Refuse, naming the bundle, a bundle that cannot run int8 here: no variant, a variant made from
    other weights, or OpenVINO not installed. Returns the openvino module."""
    where = f"bundle {folder.name}"
    keys = spec.int8
    if keys is None:
        raise ModelError(f"{where}: has no int8 variant; calibrate one with `scenewatch models quantize`")
    if keys.source_sha256 != spec.sha256:
        raise ModelError(f"{where}: the int8 variant was made from other weights than {spec.weights}; "
                         f"calibrate it again with `scenewatch models quantize`")
    return _openvino(where)


def load_int8(folder: Path, spec: Any) -> OpenVinoForward:
    """The bundle's int8 variant, checked (both files' sha256, made from these weights), ready to run."""
    where = f"bundle {folder.name}"
    ov = require_int8(folder, spec)
    keys = spec.int8
    parts = []
    for name, expected in ((keys.model, keys.model_sha256), (keys.weights, keys.weights_sha256)):
        if Path(name).name != name:
            raise ModelError(f"{where}: scenewatch:int8 file {name!r} must be a file name inside the bundle")
        try:
            data = (folder / name).read_bytes()
        except OSError as err:
            raise ModelError(f"{where}: int8 file {name} cannot be read ({err.strerror or err})") from err
        digest = _sha256(data)
        if digest != expected:
            raise ModelError(f"{where}: int8 file {name} has sha256 {digest[:12]}... but model.json expects "
                             f"{expected[:12]}...; the file was changed or belongs to another bundle")
        parts.append(data)
    weights = np.frombuffer(parts[1], dtype=np.uint8)
    try:
        model = _ov_core().read_model(model=parts[0].decode("utf-8"), weights=ov.Tensor(weights))
    except (RuntimeError, UnicodeDecodeError) as err:
        raise ModelError(f"{where}: int8 variant cannot be read by OpenVINO "
                         f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from err
    return OpenVinoForward(model, keep=weights)


# ------------------------------------------------------------------------------------------- calibration


@dataclass(frozen=True, slots=True)
class Int8Result:
    """What :func:`quantize_bundle` measured and wrote."""

    bundle: Path
    scenes: tuple[str, ...]
    calibration_tiles: int
    held_out_tiles: int
    drift: float  # mean |p_int8 - p_fp32| over the held-out tiles
    worst_drift: float  # the same on the held-out tile where it is largest
    agreement: float  # share of held-out pixels with the same class as fp32
    seconds: float


def _calibration_tiles(scenes: Sequence[str | Path], bands: Any, spec: Any, tiles: int,
                       prepare: Callable[[np.ndarray], Any]) -> list[Any]:
    """``tiles`` prepared tiles spread over the scenes: per scene, evenly spaced through its tile grid,
    skipping tiles with less than :data:`MIN_VALID_FRACTION` valid pixels. A scene with fewer tiles than
    its share is cut into tiles half the bundle's size (the network is convolutional), so that a one-tile
    scene still gives calibration and held-out tiles that are not the same pixels. Not smaller: on the
    Rondonia U-Net, 2 calibration tiles of 256 px held out at 0.006, 16 of 64 px at 0.021."""
    from pipeline.inference.read import open_scene, parse_band_map, read_window, resolve_bands
    from tiles.grid import plan_tiles

    out: list[Any] = []
    per_scene = math.ceil(tiles / len(scenes))
    for scene in scenes:
        meta = open_scene(scene)
        indexes = resolve_bands(meta, parse_band_map(bands, meta), spec.bands)
        size = spec.tile_size
        if size >= 2 * MIN_TILE and len(plan_tiles(meta.height, meta.width, size, spec.halo)) < per_scene:
            size //= 2
        grid = plan_tiles(meta.height, meta.width, size, spec.halo)
        order = [grid.tile(i // grid.cols, i % grid.cols) for i in _spread(len(grid))]
        taken = 0
        for tile in order:
            if taken == per_scene or len(out) == tiles:
                break
            data, valid = read_window(meta, tile.read_window, indexes)
            if valid.mean() < MIN_VALID_FRACTION:
                continue
            out.append(prepare(data[None]))
            taken += 1
        if taken == 0:
            raise ModelError(f"scene {meta.name}: no tile with at least {MIN_VALID_FRACTION:.0%} valid pixels "
                             f"to calibrate on")
    return out


def _spread(n: int) -> list[int]:
    """0..n-1 in an order that spreads over the range first (0, n/2, n/4, 3n/4, ...): the first k are
    evenly spaced for every k, so tiles come from the whole scene whatever the budget."""
    order, seen, step = [], set(), n
    while len(order) < n:
        for i in range(0, n, step):
            if i not in seen:
                seen.add(i)
                order.append(i)
        step = max(step // 2, 1)
    return order


def quantize_bundle(path: str | Path, scenes: Sequence[str | Path], *, bands: Any = None, tiles: int = 32,
                    max_drift: float | None = None) -> Int8Result:
    """Calibrate an int8 variant of the bundle at ``path`` on ``tiles`` tiles of ``scenes`` (its bands
    picked with ``bands``, as ``--bands``) and write it into the bundle (atomically).

    Every other tile is held out of calibration and used to measure the drift against fp32; a variant
    drifting more than ``max_drift`` (default :data:`pipeline.models.model.AUTO_DRIFT_LIMIT`) is refused and the
    bundle is left as it was.
    """
    from pipeline.models import bundle
    from pipeline.models.model import AUTO_DRIFT_LIMIT

    started = time.perf_counter()
    folder = bundle._bundle_dir(path)
    where = f"bundle {folder.name}"
    ov = _openvino(where)
    try:
        import nncf  # noqa: F401
    except ImportError as err:
        raise ModelError(f"{where}: calibrating int8 needs NNCF, which is not installed; install it with "
                         f"pip install 'scenewatch[int8]'") from err
    if not scenes:
        raise ModelError(f"{where}: give at least one scene to calibrate on")
    if tiles < 2:
        raise ModelError(f"{where}: calibrate on at least 2 tiles (one is held out to measure the drift)")
    limit = AUTO_DRIFT_LIMIT if max_drift is None else max_drift
    spec = bundle.read_spec(folder)
    model = bundle.load_bundle(folder, precision="fp32", device="cpu")
    prepared = _calibration_tiles(scenes, bands, spec, tiles, model.prepare)
    calibration, held_out = prepared[0::2], prepared[1::2] or prepared[:1]
    log.info("%s: calibrating int8 on %d tile(s)", where, len(calibration))
    quantized = calibrate(model, calibration)
    forward = OpenVinoForward(quantized)
    drifts, agree = [], []
    for x in held_out:
        reference = model.run(x, "fp32")
        reduced = model.run(x, "int8", forward)
        drifts.append(float((reduced - reference).abs().mean()))
        agree.append(float((reduced.argmax(1) == reference.argmax(1)).float().mean()))
    drift, worst, agreement = float(np.mean(drifts)), float(np.max(drifts)), float(np.mean(agree))
    if drift > limit:
        raise ModelError(f"{where}: int8 drifts {drift:.4f} from fp32 on {len(held_out)} held-out tile(s), over "
                         f"{limit:.3f}; not written. A trained network usually stays well within it (a "
                         f"random-initialised one does not); calibrating on more --tiles may help")
    names = [Path(s).name for s in scenes]
    _write_variant(folder, quantized, spec, {
        "drift": round(drift, 6), "worst_drift": round(worst, 6), "agreement": round(agreement, 6),
        "scenes": names, "calibration_tiles": len(calibration), "held_out_tiles": len(held_out),
        "openvino": ov.__version__})
    return Int8Result(folder, tuple(names), len(calibration), len(held_out), drift, worst, agreement,
                      time.perf_counter() - started)


def calibrate(model: Any, tiles: Sequence[Any]) -> Any:
    """The int8 OpenVINO model of ``model``'s network (a :class:`pipeline.models.model.TorchSegmentationModel`),
    calibrated on ``tiles``: inputs as :meth:`~pipeline.models.model.TorchSegmentationModel.prepare` makes them.
    Run it with :class:`OpenVinoForward`; :func:`quantize_bundle` is the checked, stored way."""
    ov = _openvino(f"model {model.info.name}")
    with _no_cuda_tools_warning():
        import nncf

        converted = ov.convert_model(_export(model.network, tiles[0]))
        return nncf.quantize(converted, nncf.Dataset([np.ascontiguousarray(x.cpu().numpy()) for x in tiles]),
                             subset_size=len(tiles), advanced_parameters=_global_ranges(nncf))


def _global_ranges(nncf: Any) -> Any:
    """Activation ranges from the minimum and maximum over all calibration tiles.

    NNCF's default averages each tile's own minimum and maximum, which suits a batch of photographs but
    clips on a scene: one tile's extremes are rarer than one photo's. Measured on a U-Net trained on the
    Rondonia scene, calibrated on 4 tiles of 192 px: mean drift 0.033 with the default, 0.015 with global
    ranges; on all 16 tiles, 0.0074 and 0.0047.
    """
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)


def _export(network: Any, example: Any) -> Any:
    """``network`` through ``torch.export`` with batch, height and width left dynamic, so that one
    OpenVINO graph serves every tile shape (torch.jit tracing, OpenVINO's other route, is deprecated)."""
    import torch

    auto = torch.export.Dim.AUTO
    example = torch.cat([example[:1], example[:1]]).contiguous()  # batch 2: a batch of 1 would be fixed at 1
    with torch.no_grad():
        return torch.export.export(network.eval(), (example,), dynamic_shapes=({0: auto, 2: auto, 3: auto},))


@contextlib.contextmanager
def _no_cuda_tools_warning() -> Iterator[None]:
    """Silence the warning torch logs when a module looks for its CUDA build tools on a machine without
    CUDA, which NNCF does while quantizing; it says nothing about the user's scene or model."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _write_variant(folder: Path, quantized: Any, spec: Any, measured: dict[str, Any]) -> None:
    """Copy the bundle, add the IR files and the ``scenewatch:int8`` key, and swap the copy in."""
    import openvino as ov

    from pipeline.models import bundle

    tmp = folder.with_name(f".{folder.name}.sw-tmp-{uuid.uuid4().hex[:12]}")
    try:
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns(INT8_MODEL, INT8_WEIGHTS))
        ov.save_model(quantized, str(tmp / INT8_MODEL), compress_to_fp16=False)
        doc = json.loads((tmp / bundle.SPEC_FILE).read_text(encoding="utf-8"))
        doc["scenewatch:int8"] = {
            "model": INT8_MODEL, "model_sha256": _sha256((tmp / INT8_MODEL).read_bytes()),
            "weights": INT8_WEIGHTS, "weights_sha256": _sha256((tmp / INT8_WEIGHTS).read_bytes()),
            "source_sha256": spec.sha256, **measured}
        bundle.parse_spec(doc, f"bundle {folder.name}: {bundle.SPEC_FILE}")  # never write what we would refuse
        (tmp / bundle.SPEC_FILE).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        bundle._replace_dir(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
