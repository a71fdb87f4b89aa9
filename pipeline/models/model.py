"""Models: what turns a tile of band values into class probabilities.

Every model, a spectral index or a neural network, is a :class:`SegmentationModel`: it declares the bands
it needs by name and its classes (:class:`ModelInfo`), and maps a float32 batch ``(N, bands, H, W)`` of raw
band values in that order to float32 probabilities ``(N, classes, H, W)`` that sum to one per pixel. That
single contract is what lets tiling, stitching, vectorizing and change work identically for all of them.

Models cross process boundaries only as a :class:`ModelRef`, a small hashable value (a built-in name, a
bundle path, or a module-level factory with its arguments). Each worker process turns a ref into a model
once, through :func:`load_model`'s per-process cache, and keeps it for every later tile.
"""

from __future__ import annotations

import functools
import glob
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from pipeline.errors import ModelError

log = logging.getLogger("scenewatch")

__all__ = [
    "ModelInfo",
    "ModelRef",
    "SegmentationModel",
    "Precision",
    "PRECISIONS",
    "TorchSegmentationModel",
    "BUILTIN_MODELS",
    "builtin_model",
    "load_model",
    "describe_model",
    "resolve_precision",
    "default_device",
    "visible_gpus",
    "runs_on_gpu",
    "native_bf16",
    "build_smp_model",
]

Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "int8")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a model needs and gives: band names (STAC eo common names), class names, and the tile size and
    halo it works best with (the halo should cover its receptive field)."""

    name: str
    version: str
    bands: tuple[str, ...]
    class_names: tuple[str, ...]
    class_colors: tuple[str, ...] = ()
    tile_size: int = 512
    halo: int = 32
    description: str = ""
    licence: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@runtime_checkable
class SegmentationModel(Protocol):
    """Maps ``(N, bands, H, W)`` float32 band values to ``(N, classes, H, W)`` float32 probabilities."""

    @property
    def info(self) -> ModelInfo: ...

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------- references


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A picklable, hashable reference to a model, resolved into a model inside each worker process.

    ``source`` is a built-in model name or a bundle path; or ``factory`` is ``"module:function"`` called
    with ``kwargs`` (for models built in code, such as a notebook's own network). ``options`` override a
    model's settings (spectral thresholds, precision). ``threads`` sets torch's intra-op threads in the
    worker (workers x threads = cores).
    """

    source: str = ""
    factory: str = ""
    kwargs: tuple[tuple[str, Any], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    threads: int | None = None

    @classmethod
    def of(cls, model: str | os.PathLike[str] | ModelRef, **options: Any) -> ModelRef:
        if isinstance(model, ModelRef):
            return model.with_options(**options)
        # None means "not given", as in with_options (plan_scene passes precision=None for auto)
        return cls(source=str(model), options=_frozen_items({k: v for k, v in options.items() if v is not None}))

    @classmethod
    def from_factory(cls, factory: Callable[..., SegmentationModel] | str, **kwargs: Any) -> ModelRef:
        if callable(factory):
            factory = f"{factory.__module__}:{factory.__qualname__}"
        return cls(factory=factory, kwargs=_frozen_items(kwargs))

    def with_options(self, **options: Any) -> ModelRef:
        merged = dict(self.options) | {k: v for k, v in options.items() if v is not None}
        return ModelRef(self.source, self.factory, self.kwargs, _frozen_items(merged), self.threads)

    def with_threads(self, threads: int | None) -> ModelRef:
        return ModelRef(self.source, self.factory, self.kwargs, self.options, threads)

    @property
    def label(self) -> str:
        return self.source or self.factory


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return _frozen_items(value)
    return value


def _frozen_items(values: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Sorted, hashable (key, value) pairs: lists become tuples, so a ref can key the model cache."""
    return tuple(sorted((k, _freeze(v)) for k, v in values.items()))


BUILTIN_MODELS: dict[str, Callable[..., SegmentationModel]] = {}


def builtin_model(name: str) -> Callable[[Callable[..., SegmentationModel]], Callable[..., SegmentationModel]]:
    """Register a built-in model factory under ``name``; the factory takes the ref's options as keywords."""

    def register(factory: Callable[..., SegmentationModel]) -> Callable[..., SegmentationModel]:
        BUILTIN_MODELS[name] = factory
        return factory

    return register


def load_model(ref: ModelRef) -> SegmentationModel:
    """The model a ref names, built once per process and cached (so once per Dask worker, not per tile).

    A bundle is cached together with its ``model.json``'s modification time and size, so a bundle rewritten
    at the same path (a training loop saving a new version) is loaded again instead of served stale.
    """
    return _load_model(ref, _bundle_fingerprint(ref))


def _bundle_fingerprint(ref: ModelRef) -> tuple[int, ...]:
    if ref.factory or ref.source in BUILTIN_MODELS:
        return ()
    try:
        stat = (Path(ref.source) / "model.json").stat()
    except OSError:
        return ()
    return (stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_model(ref: ModelRef, fingerprint: tuple[int, ...]) -> SegmentationModel:
    model = _build_model(ref)
    if ref.threads and "torch" in sys.modules:
        # only where the model brought torch in: importing it costs a spectral model's worker ~500 MiB
        _set_torch_threads(ref.threads)
    return model


def _build_model(ref: ModelRef) -> SegmentationModel:
    options = dict(ref.options)
    if ref.factory:
        module_name, _, attr = ref.factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ModelError(f"model factory {ref.factory}: cannot be imported ({err})") from err
        return factory(**(dict(ref.kwargs) | options))
    if ref.source in BUILTIN_MODELS:
        return _call_builtin(ref.source, options)
    path = Path(ref.source)
    if path.exists():
        from pipeline.models import bundle  # imported here: torch and safetensors only load when a bundle is used

        return bundle.load_bundle(path, **options)
    known = ", ".join(sorted(BUILTIN_MODELS))
    raise ModelError(f"model {ref.source!r}: not a built-in model ({known}) and no bundle at that path")


def describe_model(ref: ModelRef) -> ModelInfo:
    """A model's :class:`ModelInfo` without building it where that can be avoided: a bundle's spec is read
    without importing torch, so the process that plans and writes never holds a network (only workers do)."""
    if not ref.factory and ref.source not in BUILTIN_MODELS and Path(ref.source).exists():
        from pipeline.models import bundle

        spec = bundle.read_spec(ref.source)
        if dict(ref.options).get("precision") == "int8":  # refused here, before any worker starts on a tile
            from pipeline.models.int8 import require_int8

            require_int8(Path(ref.source), spec)
        return spec.info
    return load_model(ref).info


RUNTIME_OPTIONS = ("precision", "compile", "device")


def _call_builtin(name: str, options: dict[str, Any]) -> SegmentationModel:
    """Call a built-in factory; runtime options it does not take (a spectral model has no precision) are
    dropped, any other unknown option is refused with the list of those it accepts."""
    factory = BUILTIN_MODELS[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        options = {k: v for k, v in options.items() if k in params or k not in RUNTIME_OPTIONS}
        unknown = sorted(set(options) - set(params))
        if unknown:
            accepted = ", ".join(p for p in params if p not in RUNTIME_OPTIONS) or "none"
            raise ModelError(f"model {name}: unknown option(s) {', '.join(unknown)}; it accepts {accepted}")
    return factory(**options)


def _set_torch_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------- torch models


def default_device() -> str:
    """Where a network runs when no device is asked for: the GPU if torch sees one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def visible_gpus() -> int:
    """NVIDIA GPUs CUDA would show this process, counted without importing torch (which costs the process
    that plans and writes 500 MiB): the ``/dev/nvidia<N>`` device nodes, narrowed by ``CUDA_VISIBLE_DEVICES``."""
    return _visible(len(glob.glob("/dev/nvidia[0-9]*")), os.environ.get("CUDA_VISIBLE_DEVICES"))


def _visible(nodes: int, cuda_visible_devices: str | None) -> int:
    """``nodes`` GPUs seen through ``CUDA_VISIBLE_DEVICES``, which CUDA reads up to the first empty or
    negative id (``""`` and ``"-1"`` hide them all)."""
    if cuda_visible_devices is None:
        return nodes
    count = 0
    for item in cuda_visible_devices.split(","):
        if not item.strip() or item.strip().startswith("-"):
            break
        count += 1
    return min(nodes, count)


def runs_on_gpu(model: str | os.PathLike[str] | ModelRef) -> bool:
    """Whether ``model`` would run on a GPU of this machine: a network (spectral models are numpy on the
    CPU) not asked for the CPU or for int8 (CPU only), with a GPU visible. Reads no weights."""
    ref = ModelRef.of(model)
    if not ref.factory and ref.source in BUILTIN_MODELS:
        return False
    options = dict(ref.options)
    if options.get("precision") == "int8":
        return False
    if options.get("device"):
        return str(options["device"]).startswith("cuda")
    return visible_gpus() > 0


def native_bf16() -> bool:
    """Whether this CPU has native bf16 kernels (AVX512-BF16 or AMX) that make bf16 faster than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str, int8: bool = False) -> str:
    """The concrete precision for ``auto``: fp16 on a GPU; on a CPU, int8 where the model has a calibrated
    int8 variant (``int8``: see :mod:`pipeline.models.int8`), else bf16 with native bf16 kernels, else fp32."""
    if precision not in PRECISIONS:
        raise ModelError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "fp16"
    if int8:
        return "int8"
    return "bf16" if native_bf16() else "fp32"


AUTO_DRIFT_LIMIT = 0.008
"""``auto`` keeps a reduced precision only if, on the first real batch, its probabilities stay within this
mean absolute difference of fp32 (0.01 is promised; 0.002 is margin for later batches). At 0.005, a
random-initialised U-Net (drift 0.0045-0.0052 depending on the tile) fell back to fp32 on some workers and
not others, halving end-to-end throughput for no gain; fitted networks drift about 0.001."""


class TorchSegmentationModel:
    """A torch network as a :class:`SegmentationModel`: per-band normalization, padding to the network's
    stride (reflect), inference mode, channels-last and autocast at the chosen precision, softmax output
    (sigmoid for a one-logit binary network).

    Precision ``auto`` picks fp16 on a GPU; on a CPU, int8 where the model has a calibrated int8 variant
    (``int8``, a callable from normalized, padded input to logits: :class:`pipeline.models.int8.OpenVinoForward`),
    else bf16 where the CPU has native bf16 kernels (AVX512-BF16/AMX). It then checks itself once: the
    first batch runs in fp32 too and, if the mean absolute probability difference exceeds
    :data:`AUTO_DRIFT_LIMIT`, the model steps down (int8 to bf16 if that passes, else fp32) for good, and
    logs it. So ``auto`` never trades more accuracy than that for speed, whatever the network. An explicit
    precision is obeyed.

    ``compile`` wraps the network in ``torch.compile`` (inductor, weights frozen and prepacked): faster per
    tile, but each worker pays a compile of tens of seconds for the first tile and for every new tile shape,
    so it pays off only on long jobs. It does not apply to int8, which OpenVINO compiles itself.
    """

    def __init__(self, network: Any, info: ModelInfo, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, precision: str = "auto", device: str | None = None,
                 stride: int = 32, compile: bool = False, int8: Callable[[Any], Any] | None = None) -> None:
        import torch

        self.info = info
        self.device = device or default_device()
        on_cpu = not self.device.startswith("cuda")
        self._int8 = int8 if on_cpu else None
        self.precision = resolve_precision(precision, self.device, int8=self._int8 is not None)
        if self.precision == "int8" and self._int8 is None:
            raise ModelError(f"model {info.name}: precision int8 needs the model's int8 variant on a CPU; "
                             f"calibrate one with `scenewatch models quantize`" if on_cpu else
                             f"model {info.name}: int8 runs on the CPU only; use fp16 on {self.device}")
        self.requested_precision = precision
        self._auto_pending = precision == "auto" and self.precision != "fp32"
        self.auto_drift: float | None = None  # measured by the first auto check
        self.stride = stride
        n = len(info.bands)
        self._mean = torch.tensor(mean if mean is not None else [0.0] * n, dtype=torch.float32).view(1, n, 1, 1)
        self._std = torch.tensor(std if std is not None else [1.0] * n, dtype=torch.float32).view(1, n, 1, 1)
        self.network = network.eval().to(self.device).to(memory_format=torch.channels_last)
        self.compiled = bool(compile)
        self._static_hw = (0, 0)
        self._forward = _compile(self.network) if compile else self.network

    def _network_for(self, precision: str, *, eager: bool = False) -> Any:
        if precision == "int8":
            return self._int8
        return self.network if eager else self._forward

    def run(self, x: Any, precision: str, forward: Any = None) -> Any:
        """Probabilities ``(N, classes, H, W)`` for prepared input ``x`` (see :meth:`prepare`) at
        ``precision``, through ``forward`` (default: the network, or the int8 variant for int8)."""
        import torch

        if forward is None:
            forward = self._network_for(precision, eager=True)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        # no_grad rather than inference_mode: inductor's frozen graphs are built under no_grad, and
        # inference tensors would force a second compile; with grads off both cost the same eagerly.
        with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            logits = forward(x)
        if logits.shape[1] == 1:
            p = torch.sigmoid(logits.float())
            return torch.cat([1.0 - p, p], dim=1)
        return torch.softmax(logits.float(), dim=1)

    def prepare(self, batch: np.ndarray) -> Any:
        """A raw ``(N, bands, H, W)`` batch as the network's input: normalized, padded to the stride
        (reflect), channels-last on the model's device. Crop the output back to ``H, W``."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        x = (x - self._mean) / self._std
        h, w = x.shape[-2:]
        target_h, target_w = h + (-h) % self.stride, w + (-w) % self.stride
        if self.compiled and self.precision != "int8":
            # One static shape per worker: smaller (edge) tiles are padded up to the largest tile seen, so
            # the graph is compiled once rather than once per edge-tile shape.
            target_h, target_w = max(target_h, self._static_hw[0]), max(target_w, self._static_hw[1])
            self._static_hw = (target_h, target_w)
        pad_h, pad_w = target_h - h, target_w - w
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        # OpenVINO takes plain NCHW arrays: channels-last would be converted there and back for nothing
        layout = torch.contiguous_format if self.precision == "int8" else torch.channels_last
        return x.to(self.device).contiguous(memory_format=layout)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        h, w = batch.shape[-2:]
        x = self.prepare(batch)
        if self._auto_pending:
            self._auto_pending = False
            self._check_auto(x)
        forward = self._network_for(self.precision)
        if self.compiled and self.precision != "int8":
            # one image per call, for the same reason (batches of 1 and 2 would both compile)
            probs = torch.cat([self.run(x[i : i + 1], self.precision, forward) for i in range(len(x))])
        else:
            probs = self.run(x, self.precision, forward)
        return probs[..., :h, :w].cpu().numpy()

    def _check_auto(self, x: Any) -> None:
        """Compare the reduced precision with fp32 on (a centre crop of) the first image, eagerly, and step
        down (int8 -> bf16 -> fp32) for good while the mean absolute probability difference is over the
        limit."""
        import torch

        size, (hp, wp) = 256, x.shape[-2:]
        r0 = max(0, (hp - size) // 2) // self.stride * self.stride
        c0 = max(0, (wp - size) // 2) // self.stride * self.stride
        crop = x[:1, :, r0 : r0 + size, c0 : c0 + size].contiguous(memory_format=torch.channels_last)
        reference = self.run(crop, "fp32")
        while self.precision != "fp32":
            drift = float((self.run(crop, self.precision) - reference).abs().mean())
            self.auto_drift = drift
            if drift <= AUTO_DRIFT_LIMIT:
                return
            lower = "bf16" if self.precision == "int8" and native_bf16() else "fp32"
            log.warning("model %s: %s drifts %.4f from fp32 on the first tile, over %.3f; using %s",
                        self.info.name, self.precision, drift, AUTO_DRIFT_LIMIT, lower)
            self.precision = lower


def _compile(network: Any) -> Any:
    """``torch.compile`` for inference: frozen weights (constant-folded, prepacked for oneDNN on CPU)."""
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(network, dynamic=False)


def build_smp_model(arch: str = "Unet", encoder: str = "resnet18", bands: Sequence[str] = ("red", "green", "blue"),
                    class_names: Sequence[str] = ("background", "foreground"), seed: int = 0,
                    precision: str = "auto", mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, name: str | None = None, compile: bool = False,
                    **_: Any) -> TorchSegmentationModel:
    """A segmentation-models-pytorch network, randomly initialised with ``seed`` (no weights downloaded)."""
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(seed)
    try:
        network = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=len(bands),
                                   classes=len(class_names))
    except (KeyError, ValueError) as err:
        raise ModelError(f"model {arch}/{encoder}: smp cannot build it ({err})") from err
    info = ModelInfo(name=name or f"{arch.lower()}-{encoder}", version="0", bands=tuple(bands),
                     class_names=tuple(class_names), tile_size=512, halo=32)
    return TorchSegmentationModel(network, info, mean=mean, std=std, precision=precision, compile=compile)


# The spectral models live in their own module; importing it here registers them (vegetation, water, ...)
# whenever pipeline.models.model is imported, so BUILTIN_MODELS is always complete. It is imported last because it
# uses ModelInfo and builtin_model from this module. A plain module import (no names taken from it) also
# works when pipeline.models.spectral is the module imported first.
import pipeline.models.spectral  # noqa: E402,F401
