"""A bundle at ``--precision auto`` on a CPU, started from the backend cache without torch.

Each Dask worker settled ``auto`` by importing torch (1.9 s) and segmentation-models-pytorch (2.4 s), loading
the bundle's weights into the network (0.9 s) and checking the cached choice against torch fp32 on the
scene: 6 s of a 17 s run on a 4096² scene, before the first tile (issue 21). When the cached choice runs
on OpenVINO, none of that torch is needed: :class:`AutoBundleModel` looks the choice up first
(:func:`pipeline.models.backends.cached_openvino`) and, if it is there, runs :class:`OpenVinoModel`, which
normalises, pads and turns logits into probabilities in numpy, exactly as
:class:`~pipeline.models.network.TorchSegmentationModel` does in torch (same float32 operations; the
softmax's ``exp`` may differ from torch's in the last bit).

The check on a new scene stays: the cached graph against fp32 on a 256 px centre crop of the scene's first
sample, with OpenVINO fp32 (the IR converted from the torch network when the choice was measured, and
measured then within :data:`~pipeline.models.backends.REFERENCE_DRIFT` of torch fp32) standing in for
torch fp32; the drift the check allows is the limit less that recorded drift, so the promise against torch
fp32 holds by the triangle inequality. A choice that fails it, or any other case (no cached choice, a
torch backend, a cache without the IR files), loads the torch network and decides as before
(:meth:`TorchSegmentationModel.choose_backend`).

What is trusted: only IR files scenewatch wrote into its own cache folder, found under a key that is the
sha256 of the bundle's weights as ``model.json`` records them (and of its int8 variant and normalisation).
The weights file itself is hashed on load as the torch path does, so a bundle whose weights changed
without its ``model.json`` is refused the same way; one retrained and saved has a new sha256, so a new key,
and is measured again.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.models import backends
from pipeline.models.contract import ModelInfo
from pipeline.models.int8 import OpenVinoForward, read_ir
from pipeline.models.network import AUTO_DRIFT_LIMIT

__all__ = ["AutoBundleModel", "OpenVinoModel", "softmax"]

log = logging.getLogger("scenewatch")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from float32 logits ``(N, classes, H, W)``: softmax over classes, or for one
    logit (a binary network) ``[1 - sigmoid, sigmoid]``, as the torch model gives them."""
    if logits.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-logits))
        return np.concatenate([1.0 - p, p], axis=1)
    if logits.shape[1] == 2:
        # the same operations, bit for bit, into one array: the maximum and the sum of two classes are one
        # ufunc each, not a reduction striding across the class axis (3.3 against 4.2 ms a 576 px tile)
        a, b = logits[:, 0], logits[:, 1]
        out = np.empty_like(logits)
        top = np.maximum(a, b)
        np.subtract(a, top, out=out[:, 0])
        np.subtract(b, top, out=out[:, 1])
        np.exp(out, out=out)
        out /= np.add(out[:, 0], out[:, 1])[:, None]
        return out
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return probs


class OpenVinoModel:
    """A network run by OpenVINO alone (no torch in the process): per-band normalisation, padding to the
    stride (reflect, as torch's), the compiled graph, probabilities. ``choice`` is the cached choice it
    runs; ``auto_drift`` its drift from fp32 on this scene's check."""

    device = "cpu"
    compiled = False
    choosing = False
    requested_precision = "auto"

    def __init__(self, info: ModelInfo, forward: OpenVinoForward, *, mean: Sequence[float] | None,
                 std: Sequence[float] | None, stride: int, choice: backends.Choice, identity: str | None) -> None:
        n = len(info.bands)
        self.info = info
        self.forward = forward
        self.stride = stride
        self.choice = choice
        self.backend = choice.backend
        self.precision = choice.backend.rsplit("-", 1)[1]
        self.identity = identity
        self.auto_drift: float | None = None
        self._mean = np.asarray(mean if mean is not None else [0.0] * n, dtype=np.float32).reshape(1, n, 1, 1)
        std32 = np.asarray(std if std is not None else [1.0] * n, dtype=np.float32).reshape(1, n, 1, 1)
        self._inv_std = np.float32(1.0) / std32  # float32, as torch's 1.0 / tensor

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """A raw ``(N, bands, H, W)`` batch normalised and padded to the stride (reflect; replicate where a
        side is too short to reflect), as :meth:`TorchSegmentationModel.prepare` makes it."""
        x = np.subtract(batch, self._mean, dtype=np.float32)  # one new array, scaled in place (as torch's)
        x *= self._inv_std
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.stride, (-w) % self.stride
        if pad_h or pad_w:
            widths = ((0, 0), (0, 0), (0, int(pad_h)), (0, int(pad_w)))
            x = np.pad(x, widths, mode="reflect") if pad_h < h and pad_w < w else np.pad(x, widths, mode="edge")
        return np.ascontiguousarray(x)

    def run(self, x: np.ndarray, forward: OpenVinoForward | None = None) -> np.ndarray:
        """Probabilities for prepared input ``x`` through ``forward`` (default: the chosen graph)."""
        return softmax((forward or self.forward).infer(x))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        h, w = batch.shape[-2:]
        return self.run(self.prepare(batch))[..., :h, :w]

    def choose_backend(self, batch: np.ndarray, max_samples: int = 6) -> str:
        """Settled already (from the cache): the backend's name."""
        return self.backend


class AutoBundleModel:
    """A bundle at precision ``auto`` on a CPU before it has settled: on the first tiles
    (:meth:`choose_backend`, or the first :meth:`predict`) it starts as an :class:`OpenVinoModel` from the
    cache when it can (see the module's docstring), else it loads the torch network (``build``) and lets it
    choose. Every other attribute is the settled model's (asking for one before settling loads torch)."""

    def __init__(self, info: ModelInfo, *, identity: str, threads: int, mean: Sequence[float] | None,
                 std: Sequence[float] | None, build: Callable[[], Any], check_weights: Callable[[], object],
                 variant: Callable[[int, str | None], OpenVinoForward] | None, stride: int = 32) -> None:
        self.info = info
        self._identity = identity
        self._threads = threads
        self._mean, self._std, self._stride = mean, std, stride
        self._build = build
        self._check_weights = check_weights
        self._variant = variant
        self._settled: Any = None
        self._tried = False

    @property
    def choosing(self) -> bool:
        return self._settled is None or bool(self._settled.choosing)

    def choose_backend(self, batch: np.ndarray, max_samples: int = 6) -> str:
        """Settle ``auto`` on up to ``max_samples`` images of ``batch`` (raw ``(N, bands, H, W)``): from the
        cache without torch where it can, else through the torch model. Returns the backend's name."""
        self.settle_from_cache(batch)
        if self._settled is None:
            self._settled = self._torch()
        return str(self._settled.choose_backend(batch, max_samples))

    def settle_from_cache(self, batch: np.ndarray) -> bool:
        """Settle from the cache without torch on ``batch[0]`` (the scene's first sample), if the cached
        choice allows it (:func:`pipeline.models.backends.cached_openvino`) and passes the check there;
        False leaves the model unsettled, for :meth:`choose_backend` on all the samples."""
        if self._settled is None and not self._tried:
            self._tried = True  # once: a choice that failed here is decided by the torch model
            self._settled = self._warm(batch)
        return self._settled is not None and not self._settled.choosing

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self._settled is None:
            self.choose_backend(batch)
        out: np.ndarray = self._settled.predict(batch)
        return out

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_settled", "_build", "_tried"):
            raise AttributeError(name)
        if self._settled is None:
            self._settled = self._torch()
        return getattr(self._settled, name)

    def _torch(self) -> Any:
        model = self._build()
        if "torch" in sys.modules:
            import torch

            if torch.get_num_threads() != self._threads:  # as the loader sets it for a model built with torch
                torch.set_num_threads(self._threads)
        return model

    def _warm(self, batch: np.ndarray) -> OpenVinoModel | None:
        """The cached OpenVINO choice, checked on a centre crop of ``batch[0]``; None where there is none or
        it fails the check (the torch model then decides, and says why)."""
        probe = OpenVinoModel(self.info, None, mean=self._mean, std=self._std,  # type: ignore[arg-type]
                              stride=self._stride, choice=backends.Choice("openvino-fp32", ()), identity=None)
        x = probe.prepare(batch[:1])
        start = backends.cached_openvino(self._identity, x.shape[1:], self._threads, variant=self._variant is not None)
        if start is None:
            return None
        self._check_weights()  # a changed weights file is refused here as the torch path refuses it
        blobs = backends.compiled_dir()
        if start.graph is not None:
            forward = OpenVinoForward(read_ir(start.graph), hint=_HINTS.get(start.choice.backend),
                                      threads=self._threads, compiled_dir=blobs)
        elif self._variant is not None:
            forward = self._variant(self._threads, blobs)
        else:  # cached_openvino gives no graph only for a bundle's own variant
            return None
        reference = OpenVinoForward(read_ir(start.reference), hint="f32", threads=self._threads, compiled_dir=blobs)
        crop = backends.centre_crop(x, self._stride)
        try:
            expected, probs = probe.run(crop, reference), probe.run(crop, forward)
        except Exception as err:  # noqa: BLE001 - a graph that cannot run here: the torch model decides
            log.warning("model %s: cached backend %s cannot run without torch (%s); loading the network",
                        self.info.name, start.choice.backend, str(err).splitlines()[0] if str(err) else err)
            return None
        finite = bool(np.isfinite(probs).all()) and bool(np.isfinite(expected).all())
        drift = float(np.abs(probs - expected).mean()) if finite else float("inf")
        agreement = float((probs.argmax(1) == expected.argmax(1)).mean())
        if drift + start.reference_drift > AUTO_DRIFT_LIMIT or agreement < backends.AUTO_AGREEMENT_LIMIT:
            log.info("model %s: cached backend %s drifts %.4f from OpenVINO fp32 on this scene's first tile; "
                     "checking against torch", self.info.name, start.choice.backend, drift)
            return None
        choice = dataclasses.replace(start.choice, notes=start.choice.notes + (
            f"started without torch (this scene's check against OpenVINO fp32: drift {drift:.4f})",))
        model = OpenVinoModel(self.info, forward, mean=self._mean, std=self._std, stride=self._stride,
                              choice=choice, identity=self._identity)
        model.auto_drift = next((m.drift for m in choice.measurements if m.name == choice.backend), None)
        log.info("model %s: precision auto runs %s", self.info.name, choice.summary())
        return model


_HINTS = {"openvino-fp32": "f32", "openvino-bf16": "bf16"}  # as backends._openvino compiles them
