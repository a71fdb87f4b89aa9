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
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from pipeline.errors import ModelError

__all__ = [
    "ModelInfo",
    "ModelRef",
    "SegmentationModel",
    "Precision",
    "PRECISIONS",
    "SpectralIndexModel",
    "TorchSegmentationModel",
    "BUILTIN_MODELS",
    "builtin_model",
    "load_model",
    "resolve_precision",
    "build_smp_model",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


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
        return cls(source=str(model), options=_frozen_items(options))

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


@functools.lru_cache(maxsize=4)
def load_model(ref: ModelRef) -> SegmentationModel:
    """The model a ref names, built once per process and cached (so once per Dask worker, not per tile)."""
    if ref.threads:
        _set_torch_threads(ref.threads)
    options = dict(ref.options)
    if ref.factory:
        module_name, _, attr = ref.factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ModelError(f"model factory {ref.factory}: cannot be imported ({err})") from err
        return factory(**(dict(ref.kwargs) | options))
    if ref.source in BUILTIN_MODELS:
        return BUILTIN_MODELS[ref.source](**options)
    path = Path(ref.source)
    if path.exists():
        from pipeline import bundle  # imported here: torch and safetensors only load when a bundle is used

        return bundle.load_bundle(path, **options)
    known = ", ".join(sorted(BUILTIN_MODELS))
    raise ModelError(f"model {ref.source!r}: not a built-in model ({known}) and no bundle at that path")


def _set_torch_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ spectral models


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)``, 0 where both are 0."""
    num = a - b
    den = a + b
    out = np.zeros_like(num, dtype=np.float32)
    np.divide(num, den, out=out, where=den != 0)
    return out


@dataclass(frozen=True, slots=True)
class SpectralIndexModel:
    """A two-class model from a spectral index: ``p(class 1) = sigmoid((index - threshold) / softness)``.

    ``index`` takes the bands in ``info.bands`` order as ``(N, H, W)`` arrays. With a small softness the
    probability is a step at the threshold; the soft edge keeps the probability meaningful as a confidence.
    """

    info: ModelInfo
    index: Callable[..., np.ndarray]
    threshold: float
    softness: float = 0.05

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != len(self.info.bands):
            raise ModelError(
                f"model {self.info.name}: expects (N, {len(self.info.bands)}, H, W) input, got {batch.shape}"
            )
        value = self.index(*(batch[:, i] for i in range(batch.shape[1])))
        p = _sigmoid((value - self.threshold) / max(self.softness, 1e-6))
        return np.stack([1.0 - p, p], axis=1)


@builtin_model("vegetation")
def vegetation_model(threshold: float = 0.3, softness: float = 0.05, **_: Any) -> SpectralIndexModel:
    """NDVI = (nir - red) / (nir + red); vegetation where NDVI > threshold (default 0.3)."""
    info = ModelInfo(
        name="vegetation",
        version="1.0",
        bands=("red", "nir"),
        class_names=("other", "vegetation"),
        class_colors=("#d9d0b4", "#1a9641"),
        tile_size=1024,
        halo=0,
        description="NDVI threshold: vegetation where (nir - red) / (nir + red) > threshold",
        licence="Apache-2.0",
    )
    return SpectralIndexModel(info, lambda red, nir: normalized_difference(nir, red), threshold, softness)


# --------------------------------------------------------------------------------------------- torch models


def resolve_precision(precision: str, device: str) -> str:
    """The concrete precision for ``auto``: fp16 on a GPU, bf16 on a CPU with native bf16 kernels, else fp32."""
    if precision not in PRECISIONS:
        raise ModelError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "fp16"
    import torch

    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native_bf16 = False
    return "bf16" if native_bf16 else "fp32"


class TorchSegmentationModel:
    """A torch network as a :class:`SegmentationModel`: per-band normalization, padding to the network's
    stride (reflect), inference mode, channels-last and autocast at the chosen precision, softmax output
    (sigmoid for a one-logit binary network)."""

    def __init__(self, network: Any, info: ModelInfo, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, precision: str = "auto", device: str | None = None,
                 stride: int = 32) -> None:
        import torch

        self.info = info
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = resolve_precision(precision, self.device)
        self.stride = stride
        n = len(info.bands)
        self._mean = torch.tensor(mean if mean is not None else [0.0] * n, dtype=torch.float32).view(1, n, 1, 1)
        self._std = torch.tensor(std if std is not None else [1.0] * n, dtype=torch.float32).view(1, n, 1, 1)
        self.network = network.eval().to(self.device).to(memory_format=torch.channels_last)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        x = (x - self._mean) / self._std
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.stride, (-w) % self.stride
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            logits = self.network(x)
        logits = logits[..., :h, :w].float()
        if logits.shape[1] == 1:
            p = torch.sigmoid(logits)
            probs = torch.cat([1.0 - p, p], dim=1)
        else:
            probs = torch.softmax(logits, dim=1)
        return probs.cpu().numpy()


def build_smp_model(arch: str = "Unet", encoder: str = "resnet18", bands: Sequence[str] = ("red", "green", "blue"),
                    class_names: Sequence[str] = ("background", "foreground"), seed: int = 0,
                    precision: str = "auto", mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, name: str | None = None,
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
    return TorchSegmentationModel(network, info, mean=mean, std=std, precision=precision)
