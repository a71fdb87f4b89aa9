"""Networks: a torch network as a :class:`~pipeline.models.contract.SegmentationModel`, the precision it runs
at, and the device it runs on.

:class:`TorchSegmentationModel` wraps any torch module (normalization, padding to the stride, autocast,
softmax); :func:`resolve_precision` turns ``auto`` into a concrete precision for a device; :func:`build_smp_model`
makes a randomly initialised segmentation-models-pytorch network (bundles load trained ones:
:mod:`pipeline.models.bundle`). torch is imported inside the functions that need it, so importing this module
(as the process that plans and writes does, to ask whether a model would run on a GPU) costs nothing.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.errors import ModelError
from pipeline.models.backends import native_bf16, native_fp16
from pipeline.models.contract import ModelInfo
from pipeline.vocab import Precision, choices

log = logging.getLogger("scenewatch")

__all__ = [
    "AUTO_DRIFT_LIMIT",
    "TorchSegmentationModel",
    "build_smp_model",
    "default_device",
    "native_bf16",
    "native_fp16",
    "resolve_precision",
    "visible_gpus",
]


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


def resolve_precision(precision: str, device: str, int8: bool = False) -> str:
    """The concrete precision for ``auto``: fp16 on a GPU; on a CPU, int8 where the model has a calibrated
    int8 variant (``int8``: see :mod:`pipeline.models.int8`), else bf16 with native bf16 kernels, else fp32."""
    if precision not in choices(Precision):
        raise ModelError(f"`precision` {precision!r}: choose one of {', '.join(choices(Precision))}")
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

    Precision ``auto`` on a CPU measures the backends (torch fp32/channels-last/bf16/fp16, OpenVINO
    fp32/bf16/int8: :mod:`pipeline.models.backends`) on the first tiles it is given
    (:meth:`choose_backend`, or the first batch) and runs the fastest within :data:`AUTO_DRIFT_LIMIT` of
    fp32 and the class-agreement limit; the choice is cached per model, tile shape, CPU, threads and package
    versions. On a GPU it is fp16, checked once against fp32 on the first batch (over the limit: fp32 for
    good). So ``auto`` never trades more accuracy than that for speed, whatever the network. An explicit
    precision is obeyed; :attr:`backend` names what runs.

    ``compile`` wraps the network in ``torch.compile`` (inductor, weights frozen and prepacked): faster per
    tile, but each worker pays a compile of tens of seconds for the first tile and for every new tile shape,
    so it pays off only on long jobs. It does not apply to int8, which OpenVINO compiles itself.
    """

    def __init__(self, network: Any, info: ModelInfo, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, precision: str = "auto", device: str | None = None,
                 stride: int = 32, compile: bool = False, int8: Callable[[Any], Any] | None = None,
                 identity: str | None = None, calibrate: bool = False) -> None:
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
        self._inv_std = 1.0 / self._std
        self.network = network.eval().to(self.device).to(memory_format=torch.channels_last)
        self.compiled = bool(compile)
        self._static_hw = (0, 0)
        self._forward = _compile(self.network) if compile else self.network
        # auto on a CPU measures the backends on the first tiles (pipeline.models.backends), unless compiled
        # (torch.compile is asked for explicitly and runs in torch)
        self._choose_pending = precision == "auto" and on_cpu and not compile
        self._auto_pending = self._auto_pending and not self._choose_pending
        self._identity = identity
        self._calibrate = calibrate
        self.choice: Any = None  # the pipeline.models.backends.Choice auto made on a CPU
        self._backend: Any = None  # the pipeline.models.backends.Backend that runs, once chosen
        self.backend = self._name_of(self.precision)

    def _name_of(self, precision: str) -> str:
        """The backend name an explicit precision runs as (``auto`` names what it measured instead)."""
        if precision == "int8":
            return "openvino-int8"
        where = "" if not self.device.startswith("cuda") else "-cuda"
        return f"torch-{precision}{where}" + ("-compiled" if self.compiled else "")

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

        # one new tensor, scaled in place by 1/std: 1.7 ms per 576 px 4-band tile against 4.2 for (x - mean) / std
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).sub(self._mean).mul_(self._inv_std)
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
        channels_last = self._backend.channels_last if self._backend is not None else self.precision != "int8"
        layout = torch.channels_last if channels_last and not self._choose_pending else torch.contiguous_format
        return x.to(self.device).contiguous(memory_format=layout)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        h, w = batch.shape[-2:]
        if self._choose_pending:
            self.choose_backend(batch)
        x = self.prepare(batch)
        if self._auto_pending:
            self._auto_pending = False
            self._check_auto(x)
        if self._backend is not None:
            return self.run(x, self._backend.precision, self._backend.forward)[..., :h, :w].numpy()
        forward = self._network_for(self.precision)
        if self.compiled and self.precision != "int8":
            # one image per call, for the same reason (batches of 1 and 2 would both compile)
            probs = torch.cat([self.run(x[i : i + 1], self.precision, forward) for i in range(len(x))])
        else:
            probs = self.run(x, self.precision, forward)
        return probs[..., :h, :w].cpu().numpy()

    def choose_backend(self, batch: np.ndarray, max_samples: int = 6) -> str:
        """Settle ``auto`` on a CPU: measure the backends on up to ``max_samples`` images of ``batch`` (raw
        ``(N, bands, H, W)``, tiles spread over the scene), or take the cached choice, and run that from now on
        (:mod:`pipeline.models.backends`). Logs the choice and every candidate's MP/s in one line; returns the
        backend's name. Does nothing for an explicit precision, a GPU, or once settled."""
        import torch

        from pipeline.models import backends

        if not self._choose_pending:
            return self.backend
        x = self.prepare(batch[:max_samples])
        self._choose_pending = False
        samples = [x[i : i + 1] for i in range(len(x))]
        # a centre crop, as the drift checks use: on a cached choice this check was a third of the start-up
        reference = self.run(backends.centre_crop(samples[0], self.stride), "fp32", self.network)
        if not bool(torch.isfinite(reference).all()):  # no backend can be judged against NaN
            raise ModelError(f"model {self.info.name}: gives non-finite probabilities (NaN or inf) in fp32 on the "
                             "first tile; check its weights and its input scaling")
        choice, backend = backends.choose(self, samples, identity=self.identity, threads=torch.get_num_threads(),
                                          limit=AUTO_DRIFT_LIMIT)
        self.choice, self._backend, self.backend, self.precision = choice, backend, backend.name, backend.precision
        accepted = {m.name: m for m in choice.measurements}
        self.auto_drift = accepted[backend.name].drift if backend.name in accepted else None
        log.info("model %s: precision auto runs %s", self.info.name, choice.summary())
        return self.backend

    @property
    def choosing(self) -> bool:
        """Whether ``auto`` has yet to settle which backend runs (:meth:`choose_backend`)."""
        return self._choose_pending

    @property
    def identity(self) -> str | None:
        """What the backend cache keys this model by: the bundle's weights (and int8 variant) digest, else
        the sha256 of the network's weights and normalisation; None for an int8 callable nothing identifies."""
        if self._identity is None and self._int8 is None:
            import hashlib

            digest = hashlib.sha256(type(self.network).__qualname__.encode())
            for name, tensor in self.network.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            digest.update(self._mean.numpy().tobytes() + self._std.numpy().tobytes())
            self._identity = digest.hexdigest()
        return self._identity

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
        if not bool(torch.isfinite(reference).all()):  # no precision can be judged against NaN
            raise ModelError(f"model {self.info.name}: gives non-finite probabilities (NaN or inf) in fp32 on the "
                             "first tile; check its weights and its input scaling")
        while self.precision != "fp32":
            try:
                reduced = self.run(crop, self.precision)
            except ModelError as err:  # OpenVINO cannot run this int8 graph on this CPU (pipeline.models.int8)
                if self.precision != "int8":
                    raise
                lower = "bf16" if native_bf16() else "fp32"
                log.warning("model %s: %s; using %s", self.info.name, str(err).rsplit("; predict", 1)[0], lower)
                self.precision = lower
                continue
            finite = bool(torch.isfinite(reduced).all())
            drift = float((reduced - reference).abs().mean()) if finite else float("inf")
            self.auto_drift = drift
            if drift <= AUTO_DRIFT_LIMIT:
                return
            lower = "bf16" if self.precision == "int8" and native_bf16() else "fp32"
            if finite:
                log.warning("model %s: %s drifts %.4f from fp32 on the first tile, over %.3f; using %s",
                            self.info.name, self.precision, drift, AUTO_DRIFT_LIMIT, lower)
            else:
                log.warning("model %s: %s gives non-finite probabilities on the first tile, fp32 does not; "
                            "using %s", self.info.name, self.precision, lower)
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
