"""int8 variants of model bundles: run by OpenVINO on the CPU, and made by calibration.

bf16 autocast makes a U-Net 2-2.7x faster than fp32 on a CPU with native bf16; int8 makes it 5-6x faster
(resnet18 U-Net, 576 px tiles, 2 threads: 0.79 MP/s fp32 eager, 2.1 bf16, 4.4 int8). int8 needs what bf16
does not: calibration, i.e. the range of every activation on real input. That is done once per bundle, on
scenes the user chooses, by NNCF's post-training quantization (:func:`calibrate`; checked and stored in the
bundle by :func:`pipeline.models.quantize.quantize_bundle`), and kept in the bundle next to the weights::

    my-unet/
      model.json            ... "scenewatch:int8": {files, their sha256, the weights they were made from,
                            the drift and class agreement measured on held-out tiles, the calibration scenes}
      weights.safetensors
      int8.xml, int8.bin    the quantized network as OpenVINO IR (a graph and raw weights; no code)

At run time ``--precision auto`` uses the variant on a CPU when OpenVINO is installed, and still checks it
against fp32 on each worker's first tile (falling back to bf16 or fp32 past
:data:`pipeline.models.network.AUTO_DRIFT_LIMIT`).

This module reads the bundle's spec only as the value it is given (``spec``), so that
:mod:`pipeline.models.bundle` can load a variant without the two importing each other.

OpenVINO and NNCF are core dependencies (``auto`` measures OpenVINO fp32/bf16/int8 against torch:
:mod:`pipeline.models.backends`); an install without them still runs torch, and says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ModelError

__all__ = ["INT8_MODEL", "INT8_WEIGHTS", "Int8UnsupportedError", "OpenVinoForward", "calibrate",
           "convert", "load_int8", "nncf_available", "openvino_available", "quantize", "read_ir",
           "require_int8", "require_openvino", "sha256_hex"]

log = logging.getLogger("scenewatch")

INT8_MODEL = "int8.xml"
INT8_WEIGHTS = "int8.bin"


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def nncf_available() -> bool:
    return importlib.util.find_spec("nncf") is not None


def read_ir(xml: Path) -> Any:
    """An OpenVINO IR this process wrote (the ``.bin`` beside ``xml``), e.g. a calibration cached by
    :mod:`pipeline.models.backends`."""
    return _ov_core().read_model(str(xml))


def require_openvino(what: str) -> Any:
    """The openvino module, or an error naming ``what`` needs it and how to install it."""
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

    def __init__(self, model: Any, keep: Any = None, hint: str | None = None, threads: int | None = None,
                 compiled_dir: str | None = None) -> None:
        self._model = model
        self._keep = keep  # the buffer the weights were read from, kept alive with the model
        self._hint = hint  # OpenVINO's INFERENCE_PRECISION_HINT ("f32", "bf16"); None: the plugin's default
        self._threads = threads  # None: as many as torch uses in this process
        self._compiled_dir = compiled_dir  # OpenVINO's CACHE_DIR: compiled once per machine, then read back
        self._compiled: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            with self._lock:
                if self._compiled is None:
                    threads = self._threads
                    if threads is None:
                        import torch

                        threads = torch.get_num_threads()
                    # No pinning: OpenVINO pins its threads to cores counted from the first, so two
                    # worker processes of one thread each both ran on core 0 (282 ms per tile each,
                    # 140 ms unpinned).
                    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                              "ENABLE_CPU_PINNING": False}
                    if self._hint:
                        config["INFERENCE_PRECISION_HINT"] = self._hint
                    if self._compiled_dir is not None:  # read back: 0.05 s where compiling took 0.16
                        config["CACHE_DIR"] = self._compiled_dir
                    try:
                        self._compiled = _ov_core().compile_model(self._model, "CPU", config)
                    except RuntimeError as err:
                        raise Int8UnsupportedError(_cpu_refusal(err)) from err
                request = self._local.request = self._compiled.create_infer_request()
        return request

    def __call__(self, x: Any) -> Any:
        import torch

        return torch.from_numpy(self.infer(x.cpu().numpy()))

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Logits for a float32 array ``(N, bands, H, W)``, without torch."""
        request = self._request()
        try:
            out = request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[0]
        except RuntimeError as err:
            raise Int8UnsupportedError(_cpu_refusal(err)) from err
        return np.array(out, dtype=np.float32)  # a copy: the request reuses its buffer


class Int8UnsupportedError(ModelError):
    """OpenVINO's CPU plugin cannot compile or run this int8 graph on this CPU. Seen with one-band
    networks (a U-Net trained on a panchromatic band) where the CPU lacks AVX-512: the first convolution
    has one input channel, for which the plugin has no int8 kernel ("No suitable implementations")."""


def _cpu_refusal(err: RuntimeError) -> str:
    """OpenVINO's 40-line message cut to the one line that says what is wrong."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    cause = next((line for line in reversed(lines) if not line.startswith(("Exception from", "Check "))),
                 lines[-1] if lines else type(err).__name__)
    return (f"OpenVINO cannot run this int8 network on this CPU ({cause.split('.')[0].strip()}; seen with "
            f"one-band networks on CPUs without AVX-512); predict it in bf16 or fp32 instead")


def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` as a hex string, as ``scenewatch:int8`` records it."""
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
    return require_openvino(where)


def load_int8(folder: Path, spec: Any, threads: int | None = None,
              compiled_dir: str | None = None) -> OpenVinoForward:
    """The bundle's int8 variant, checked (both files' sha256, made from these weights), ready to run with
    ``threads`` (None: as many as torch uses), compiled into ``compiled_dir`` (OpenVinoForward)."""
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
        digest = sha256_hex(data)
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
    return OpenVinoForward(model, keep=weights, threads=threads, compiled_dir=compiled_dir)


# ------------------------------------------------------------------------------------------- calibration


def calibrate(model: Any, tiles: Sequence[Any]) -> Any:
    """The int8 OpenVINO model of ``model``'s network (a :class:`pipeline.models.network.TorchSegmentationModel`),
    calibrated on ``tiles``: inputs as :meth:`~pipeline.models.network.TorchSegmentationModel.prepare` makes them.
    Run it with :class:`OpenVinoForward`; :func:`pipeline.models.quantize.quantize_bundle` is the checked,
    stored way."""
    return quantize(convert(model, tiles[0]), tiles)


def convert(model: Any, example: Any) -> Any:
    """``model``'s torch network as an OpenVINO model (fp32 weights; batch, height and width dynamic),
    traced on ``example`` (a prepared input)."""
    ov = require_openvino(f"model {model.info.name}")
    return ov.convert_model(_export(model.network, example))


def quantize(converted: Any, tiles: Sequence[Any]) -> Any:
    """An OpenVINO model (:func:`convert`) quantized to int8 by NNCF, activation ranges from ``tiles``."""
    # NNCF draws a progress bar on stdout; a worker's stdout is the user's terminal, under scenewatch's own bar
    with _no_cuda_tools_warning(), contextlib.redirect_stdout(io.StringIO()):
        import nncf

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
