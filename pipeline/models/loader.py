"""Loading: a :class:`~pipeline.models.contract.ModelRef` turned into a model, once per process.

A ref names a built-in model (registered by :mod:`pipeline.models.spectral`, imported here so the registry is
complete), a bundle folder (:mod:`pipeline.models.bundle`, imported only when one is used: it brings torch
and safetensors in), or a factory. :func:`load_model` builds it in a worker and caches it for every later
tile; :func:`describe_model` and :func:`runs_on_gpu` answer the planning process without building a network.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import pipeline.models.sar  # registers flood-sar (issue 16)
import pipeline.models.spectral  # noqa: F401 - imported for its side effect: registers the spectral models
from pipeline.errors import ModelError
from pipeline.models.contract import BUILTIN_MODELS, RUNTIME_OPTIONS, ModelInfo, ModelRef, SegmentationModel
from pipeline.models.network import visible_gpus

__all__ = ["describe_model", "load_model", "runs_on_gpu"]


def load_model(ref: ModelRef) -> SegmentationModel:
    """The model a ref names, built once per process and cached (so once per Dask worker, not per tile).

    A bundle is cached together with its ``model.json``'s modification time and size, so a bundle rewritten
    at the same path (a training loop saving a new version) is loaded again instead of served stale.

    Precision ``auto`` is every model's default, so it is not passed on: a factory that takes no precision
    (a user's own model) loads with it, and ``auto`` shares the cache with no precision.
    """
    ref = _without_auto(ref)
    return _load_model(ref, _bundle_fingerprint(ref))


def _without_auto(ref: ModelRef) -> ModelRef:
    options = tuple(item for item in ref.options if item != ("precision", "auto"))
    return ref if options == ref.options else dataclasses.replace(ref, options=options)


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
        model: SegmentationModel = factory(**(dict(ref.kwargs) | options))
        return model
    if ref.source in BUILTIN_MODELS:
        return _call_builtin(ref.source, options)
    path = Path(ref.source)
    if path.exists():
        from pipeline.models import bundle  # imported here: torch and safetensors only load when a bundle is used

        # threads: a worker's bundle at auto on a CPU may start from the backend cache without torch
        return bundle.load_bundle(path, threads=ref.threads, **options)
    known = ", ".join(sorted(BUILTIN_MODELS))
    raise ModelError(f"model {ref.source!r}: not a built-in model ({known}) and no bundle at that path")


def describe_model(ref: ModelRef) -> ModelInfo:
    """A model's :class:`ModelInfo` without building it where that can be avoided: a bundle's spec is read
    without importing torch, so the process that plans and writes never holds a network (only workers do)."""
    if not ref.factory and ref.source not in BUILTIN_MODELS and Path(ref.source).exists():
        from pipeline.models import bundle
        from pipeline.models.int8 import require_int8

        spec = bundle.read_spec(ref.source)
        if ref.precision == "int8":  # refused here, before any worker starts on a tile
            require_int8(Path(ref.source), spec)
        return spec.info
    return load_model(ref).info


def runs_on_gpu(model: str | os.PathLike[str] | ModelRef) -> bool:
    """Whether ``model`` would run on a GPU of this machine: a network (spectral models are numpy on the
    CPU) not asked for the CPU or for int8 (CPU only), with a GPU visible. Reads no weights, imports no torch."""
    ref = ModelRef.of(model)
    if not ref.factory and ref.source in BUILTIN_MODELS:
        return False
    if ref.precision == "int8":
        return False
    device = dict(ref.options).get("device")
    if device:
        return str(device).startswith("cuda")
    return visible_gpus() > 0


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
