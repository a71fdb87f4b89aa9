"""The model contract: what a model declares, what it computes, and how it is named across processes.

Every model, a spectral index or a neural network, is a :class:`SegmentationModel`: it declares the bands
it needs by name and its classes (:class:`ModelInfo`), and maps a float32 batch ``(N, bands, H, W)`` of raw
band values in that order to float32 probabilities ``(N, classes, H, W)`` that sum to one per pixel. That
single contract is what lets tiling, stitching, vectorizing and change work identically for all of them.

Models cross process boundaries only as a :class:`ModelRef`, a small hashable value (a built-in name, a
bundle path, or a module-level factory with its arguments). Each worker process turns a ref into a model
once (:func:`pipeline.models.loader.load_model`) and keeps it for every later tile.

This module imports no other ``pipeline.models`` module: the built-in models register themselves here
(:func:`builtin_model`), networks (:mod:`pipeline.models.network`) and bundles build on it, and the loader
(:mod:`pipeline.models.loader`) brings them together.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipeline.errors import ModelError
from pipeline.vocab import Precision, choices

__all__ = [
    "BUILTIN_MODELS",
    "RUNTIME_OPTIONS",
    "ModelInfo",
    "ModelRef",
    "SegmentationModel",
    "builtin_model",
]


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

    An option given as None is "not given" (it neither sets nor overrides anything). ``precision`` is one of
    :data:`pipeline.vocab.Precision` and travels as itself: ``precision="auto"`` is kept in the ref and means
    what no precision means (every model's default is ``auto``), but, being given, it overrides an earlier
    precision in :meth:`with_options`.
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
        return cls(source=str(model), options=_frozen_items(_given(options)))

    @classmethod
    def from_factory(cls, factory: Callable[..., SegmentationModel] | str, **kwargs: Any) -> ModelRef:
        if callable(factory):
            factory = f"{factory.__module__}:{factory.__qualname__}"
        return cls(factory=factory, kwargs=_frozen_items(kwargs))

    def with_options(self, **options: Any) -> ModelRef:
        merged = dict(self.options) | _given(options)
        return ModelRef(self.source, self.factory, self.kwargs, _frozen_items(merged), self.threads)

    def with_threads(self, threads: int | None) -> ModelRef:
        return ModelRef(self.source, self.factory, self.kwargs, self.options, threads)

    @property
    def label(self) -> str:
        return self.source or self.factory

    @property
    def precision(self) -> Precision:
        """The precision asked for: the ``precision`` option, else ``auto``."""
        precision: Precision = dict(self.options).get("precision", "auto")
        return precision


def _given(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options actually given (None is "not given"), with a precision checked against the vocabulary,
    so that a misspelt one is refused where the ref is made rather than in a worker."""
    given = {k: v for k, v in options.items() if v is not None}
    if "precision" in given and given["precision"] not in choices(Precision):
        raise ModelError(f"`precision` {given['precision']!r}: choose one of {', '.join(choices(Precision))}")
    return given


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return _frozen_items(value)
    return value


def _frozen_items(values: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Sorted, hashable (key, value) pairs: lists become tuples, so a ref can key the model cache."""
    return tuple(sorted((k, _freeze(v)) for k, v in values.items()))


# -------------------------------------------------------------------------------------------- built-ins


BUILTIN_MODELS: dict[str, Callable[..., SegmentationModel]] = {}
"""Built-in model factories by name; :mod:`pipeline.models.spectral` fills it when imported (the loader
imports it, so the registry is complete wherever models are loaded)."""


def builtin_model(name: str) -> Callable[[Callable[..., SegmentationModel]], Callable[..., SegmentationModel]]:
    """Register a built-in model factory under ``name``; the factory takes the ref's options as keywords."""

    def register(factory: Callable[..., SegmentationModel]) -> Callable[..., SegmentationModel]:
        BUILTIN_MODELS[name] = factory
        return factory

    return register


RUNTIME_OPTIONS = ("precision", "compile", "device")
"""Options about how a model runs rather than what it computes: a built-in model that does not take one
(a spectral model has no precision) ignores it instead of refusing it."""
