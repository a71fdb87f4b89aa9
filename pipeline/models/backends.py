"""Backends: the ways a network can run on this CPU, measured once, the fastest within the drift limit kept.

``--precision auto`` on a CPU does not guess from the CPU's name (bf16 was the fastest on an Intel Xeon with
AMX; OpenVINO int8 was 2.5x that on an AMD EPYC without AMX: issue 21). It lists what the installed packages
offer (:func:`candidates`): torch fp32 eager and channels-last, torch bf16 and fp16 autocast where the CPU has
native kernels for them, OpenVINO fp32 and bf16, OpenVINO int8 (the bundle's calibrated variant, or one
calibrated here on the scene's sample tiles), and times each on a few real tiles of the scene (one warm-up
run, then :data:`TIMED_RUNS` rounds interleaving the candidates, so that load from other processes hits
them alike). A candidate is refused when its probabilities drift more than
:data:`pipeline.models.network.AUTO_DRIFT_LIMIT` from fp32 (mean absolute difference) or its class
agrees with fp32's on less than :data:`AUTO_AGREEMENT_LIMIT` of the pixels; the fastest of the rest wins.

The choice is cached in ``backends.json`` (:func:`cache_dir`: ``$SCENEWATCH_CACHE_DIR``, else
``$XDG_CACHE_HOME/scenewatch``, else ``~/.cache/scenewatch``) under a key made of the model's identity (its
weights' sha256), the input tile shape, the CPU (model name and the instruction-set flags that decide
speed), torch's thread count and the packages' versions, so a later run, another worker of the same machine,
or another scene with the same tile size pays nothing but a one-crop drift check. A worker on another CPU
has another key and measures for itself: the measurement always runs where the model runs. The file is
read and rewritten under an exclusive lock (workers starting together measure once) and replaced
atomically; an unreadable file is ignored with a warning and rewritten.

ONNX Runtime is not a candidate: measured in the same run as these (``bench/models.py``), it beat neither
OpenVINO nor torch on the CPUs seen (docs/models.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_path

__all__ = ["AUTO_AGREEMENT_LIMIT", "CACHE_ENV", "REFERENCE_DRIFT", "TIMED_RUNS", "Backend", "Choice", "Measurement",
           "OpenVinoStart", "cache_dir", "cache_key", "cached_openvino", "centre_crop", "choose", "compiled_dir",
           "cpu_identity", "measure", "native_bf16", "native_fp16", "offer", "package_versions", "rebuild"]

log = logging.getLogger("scenewatch")

CACHE_ENV = "SCENEWATCH_CACHE_DIR"
CACHE_FILE = "backends.json"
CACHE_VERSION = 1

TIMED_RUNS = 3
"""Timed runs of each candidate on the first sample, after one warm-up run: the median is its rate."""

AUTO_AGREEMENT_LIMIT = 0.99
"""A candidate must give fp32's class to at least this share of the sample pixels (besides the mean drift
limit): a drift small on average can still flip the classes of a region. Fitted U-Nets keep 99.3-99.9 % in
int8 and over 99.9 % in bf16 (docs/models.md)."""

# CPU flags that decide which kernels run (and so which backend is fastest); the rest of /proc/cpuinfo's
# flags (mitigations, virtualisation) change with kernels and hosts without changing speed
_SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile",
                "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "bf16", "i8mm")

# Variables that cap the instruction sets oneDNN's kernels use, in torch and in OpenVINO's CPU plugin alike
# (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` on a CPU with AMX: an int8 U-Net tile 101 ms against 38.5)
_ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@dataclass(frozen=True, slots=True)
class Backend:
    """One way to run the network: ``precision`` is what :meth:`TorchSegmentationModel.run` autocasts to
    (``int8`` means ``forward`` alone decides), ``forward`` maps prepared input to logits (None: the torch
    network), ``channels_last`` the input layout it wants. ``judge_on`` restricts the drift check to those
    samples (an int8 graph calibrated on the others)."""

    name: str
    precision: str
    channels_last: bool = True
    forward: Callable[[Any], Any] | None = None
    judge_on: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Measurement:
    """A candidate's rate (megapixels of input per second) and its distance from fp32, or why it was refused."""

    name: str
    mp_s: float | None = None
    drift: float | None = None
    agreement: float | None = None
    refused: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "mp_s": self.mp_s, "drift": self.drift, "agreement": self.agreement,
                "refused": self.refused}


@dataclass(frozen=True, slots=True)
class Choice:
    """What ``auto`` runs, what it measured, and whether that came from the cache."""

    backend: str
    measurements: tuple[Measurement, ...]
    cached: bool = False
    notes: tuple[str, ...] = ()
    key: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ranking(self) -> list[str]:
        """Accepted candidates, fastest first."""
        ok = [m for m in self.measurements if not m.refused and m.mp_s is not None]
        return [m.name for m in sorted(ok, key=lambda m: -(m.mp_s or 0.0))]

    def summary(self) -> str:
        """One line: the choice and every candidate's MP/s (or why it was refused)."""
        parts = []
        for m in sorted(self.measurements, key=lambda m: -(m.mp_s or 0.0)):
            if m.refused:
                parts.append(f"{m.name} refused ({m.refused})")
            else:
                parts.append(f"{m.name} {m.mp_s:.2f}")
        source = "cached" if self.cached else "measured"
        text = f"{self.backend} ({source}; MP/s: {', '.join(parts)})"
        return text + "".join(f"; {note}" for note in self.notes)


# ------------------------------------------------------------------------------------------------ the key


def cpu_identity() -> str:
    """The CPU's model name and the speed-deciding instruction-set flags it has, e.g.
    ``Intel(R) Xeon(R) Processor [amx_bf16 amx_int8 amx_tile avx2 avx512_bf16 ...]``, and the cap on
    oneDNN's instruction sets where one is set (:data:`_ISA_CAPS`): a choice measured with AMX is not taken
    where the cap keeps the same CPU from using it."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model name") and value.strip():
                name = value.strip()
            elif key in ("flags", "Features"):
                flags |= set(value.split())
            if key == "" and flags:  # the first processor's block is enough
                break
    capped = [f"{var}={os.environ[var]}" for var in _ISA_CAPS if os.environ.get(var)]
    return f"{name} [{' '.join(sorted(flags & set(_SPEED_FLAGS)))}]" + "".join(f" {c}" for c in capped)


def package_versions() -> dict[str, str]:
    """Versions of the packages whose kernels are measured (absent ones omitted)."""
    out = {}
    for name in ("torch", "openvino", "nncf"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def cache_key(identity: str, shape: Sequence[int], threads: int) -> dict[str, Any]:
    """The fields a choice holds for: model, input tile ``(bands, rows, cols)``, CPU, threads, packages."""
    return {"model": identity, "tile": [int(v) for v in shape], "cpu": cpu_identity(), "threads": int(threads),
            "packages": package_versions()}


def _digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def cache_dir() -> Path:
    """``$SCENEWATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/scenewatch``, else ``~/.cache/scenewatch``."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "scenewatch"


def compiled_dir() -> str | None:
    """Where OpenVINO keeps the graphs it compiled for this CPU (its ``CACHE_DIR``: a blob per graph, CPU
    and setting, which it checks itself), under the backend cache folder; None where that cannot be written
    (every process then compiles for itself)."""
    folder = cache_dir() / "openvino-compiled"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(folder) if os.access(folder, os.W_OK) else None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the cache folder (released by the OS if the process dies); none where the
    platform or the folder offers none (the atomic replace still keeps the file whole)."""
    try:
        import fcntl

        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / f"{CACHE_FILE}.lock", "a+b")  # noqa: SIM115 - closed below
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        log.warning("backend cache %s: cannot be read (%s); measuring again", path, err.strerror or err)
        return {}
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("version") != CACHE_VERSION or not isinstance(doc.get("entries"), dict):
            raise ValueError("not a scenewatch backend cache of this version")
    except ValueError as err:
        log.warning("backend cache %s: ignored, unreadable (%s); measuring again and rewriting it", path,
                    str(err).splitlines()[0])
        return {}
    entries: dict[str, Any] = doc["entries"]
    return entries


def _write_cache(path: Path, entries: Mapping[str, Any]) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True),
                           encoding="utf-8")
    except OSError as err:  # a read-only home: the run goes on, the next one measures again
        log.warning("backend cache %s: cannot be written (%s); the next run measures again", path,
                    err.strerror or err)


# ------------------------------------------------------------------------------------------ measurement


def _as_layout(x: Any, channels_last: bool) -> Any:
    import torch

    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _compare(model: Any, backend: Backend, samples: Sequence[Any], references: Sequence[Any]) -> tuple[float, float]:
    """Mean absolute probability difference and class agreement with fp32 over the samples it is judged on."""
    import torch

    diffs, agree, total = 0.0, 0.0, 0
    for i in backend.judge_on if backend.judge_on is not None else range(len(samples)):
        probs = model.run(_as_layout(samples[i], backend.channels_last), backend.precision, backend.forward)
        if not bool(torch.isfinite(probs).all()):
            return float("inf"), 0.0
        n = probs[:, 0].numel()
        diffs += float((probs - references[i]).abs().mean()) * n
        agree += float((probs.argmax(1) == references[i].argmax(1)).sum())
        total += n
    return diffs / total, agree / total


def _time(model: Any, backends: Sequence[Backend], sample: Any, failed: dict[str, str]) -> dict[str, float]:
    """Median seconds per run of each backend on ``sample``: warm-up, then rounds interleaving them."""
    inputs = {b.name: _as_layout(sample, b.channels_last) for b in backends}
    seconds: dict[str, list[float]] = {b.name: [] for b in backends}
    for round_ in range(TIMED_RUNS + 1):
        for b in backends:
            if b.name in failed:
                continue
            started = time.perf_counter()
            try:
                model.run(inputs[b.name], b.precision, b.forward)
            except Exception as err:  # noqa: BLE001 - a candidate that cannot run here is refused, not fatal
                failed[b.name] = _short(err)
                continue
            if round_:  # round 0 warms up (allocations, OpenVINO's first-inference compile)
                seconds[b.name].append(time.perf_counter() - started)
    return {name: statistics.median(s) for name, s in seconds.items() if s}


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[-1] if text else type(err).__name__)[:120]


def measure(model: Any, backends: Sequence[Backend], samples: Sequence[Any], limit: float) -> list[Measurement]:
    """Time every backend on ``samples[0]`` and check each against fp32 on a centre crop of every sample
    (256 px, as the per-worker check before did: a fifth of a 576 px tile's cost, and running every
    candidate on every sample is most of the measurement's time)."""
    full, samples = samples, [_crop(x, model.stride)[0] for x in samples]
    references = [model.run(_as_layout(x, False), "fp32", model.network) for x in samples]
    failed: dict[str, str] = {}
    judged: dict[str, tuple[float, float]] = {}
    for b in backends:
        try:
            judged[b.name] = _compare(model, b, samples, references)
        except Exception as err:  # noqa: BLE001 - as in _time
            failed[b.name] = _short(err)
    ok = [b for b in backends if b.name not in failed and judged[b.name][0] <= limit
          and judged[b.name][1] >= AUTO_AGREEMENT_LIMIT]
    seconds = _time(model, ok, full[0], failed)
    pixels = full[0].shape[0] * full[0].shape[-2] * full[0].shape[-1] / 1e6
    out = []
    for b in backends:
        drift, agreement = judged.get(b.name, (None, None))
        if b.name in failed:
            out.append(Measurement(b.name, refused=f"fails here: {failed[b.name]}"))
        elif drift is not None and agreement is not None and (drift > limit or agreement < AUTO_AGREEMENT_LIMIT):
            what = ("non-finite probabilities" if drift == float("inf") else
                    f"drifts {drift:.4f} from fp32, over {limit:.3f}" if drift > limit else
                    f"keeps fp32's class on {agreement:.2%} of pixels, under {AUTO_AGREEMENT_LIMIT:.0%}")
            out.append(Measurement(b.name, drift=drift, agreement=agreement, refused=what))
        else:
            out.append(Measurement(b.name, pixels / seconds[b.name], drift, agreement))
    return out


def choose(model: Any, samples: Sequence[Any], *, identity: str | None, threads: int,
           limit: float) -> tuple[Choice, Backend]:
    """The backend ``auto`` runs ``model`` (a :class:`pipeline.models.network.TorchSegmentationModel`) with,
    from the cache or measured on ``samples`` (prepared inputs, one image each, contiguous NCHW).

    A cached choice is still checked against fp32 on a crop of the first sample (the promise holds per
    scene, not only on the scene it was measured on); one that drifts there gives way to the next fastest
    that does not. ``identity`` None (a model with nothing stable to key on) measures without the cache."""
    key = cache_key(identity or "", samples[0].shape[1:], threads)
    digest = _digest(key)
    folder = cache_dir()
    path = folder / CACHE_FILE
    with _locked(folder) if identity is not None else contextlib.nullcontext():
        entry = _read_cache(path).get(digest) if identity is not None else None
        if isinstance(entry, dict) and entry.get("key") == key:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                choice = Choice(str(entry["backend"]), tuple(Measurement(**m) for m in entry["measurements"]),
                                cached=True, notes=tuple(entry.get("notes", ())), key=key)
                for name in [choice.backend] + [n for n in choice.ranking if n != choice.backend]:
                    backend = rebuild(model, name, identity)
                    if backend is None:
                        break  # an artifact is gone: measure again
                    drift, agreement = _compare(model, _judged_on_first(backend), _crop(samples[0], model.stride),
                                                [model.run(_crop(samples[0], model.stride)[0], "fp32", model.network)])
                    if drift <= limit and agreement >= AUTO_AGREEMENT_LIMIT:
                        if name != choice.backend:
                            choice = Choice(name, choice.measurements, True, choice.notes + (
                                f"{choice.backend} drifts {drift:.4f} on this scene's first tile",), key)
                        return choice, backend
                    log.warning("model %s: cached backend %s drifts %.4f from fp32 (class agreement %.2f%%) on "
                                "this scene's first tile; trying the next", model.info.name, name, drift,
                                100 * agreement)
                else:
                    fallback = Backend("torch-fp32", "fp32", channels_last=False)
                    return Choice(fallback.name, choice.measurements, True, choice.notes, key), fallback
        backends, notes = offer(model, samples, identity)
        measured = measure(model, backends, samples, limit)
        accepted = [m for m in measured if not m.refused and m.mp_s is not None]
        best = max(accepted, key=lambda m: m.mp_s or 0.0)
        choice = Choice(best.name, tuple(measured), notes=tuple(notes), key=key)
        if identity is not None:
            entries = _read_cache(path)
            entries[digest] = {"key": key, "backend": choice.backend, "notes": list(notes),
                               "measurements": [m.as_json() for m in measured]}
            _write_cache(path, entries)
    return choice, next(b for b in backends if b.name == choice.backend)


REFERENCE_DRIFT = 1e-4
"""OpenVINO fp32 stands in for torch fp32 in a cached choice's check on a new scene (so that a worker needs
no torch: :func:`cached_openvino`) only if it was measured within this of torch fp32 when the choice was
made (it was 0.0000, under 5e-5, on every network measured: the same fp32 arithmetic in another order)."""


@dataclass(frozen=True, slots=True)
class OpenVinoStart:
    """A cached choice that runs on OpenVINO and can be checked on a new scene without torch: the choice,
    the chosen graph's IR (None: the bundle's own int8 variant), and OpenVINO fp32's IR with the drift from
    torch fp32 it was measured at, which stands in for torch fp32 in the check."""

    choice: Choice
    graph: Path | None
    reference: Path
    reference_drift: float


def cached_openvino(identity: str | None, shape: Sequence[int], threads: int, *,
                    variant: bool) -> OpenVinoStart | None:
    """The cached choice for a model (``identity``: a bundle's digest of its weights, int8 variant and
    normalisation), prepared tile ``shape`` ``(bands, rows, cols)`` and ``threads``, where it can start
    without torch: the choice is an OpenVINO backend, its IR and OpenVINO fp32's are in the cache, and
    OpenVINO fp32 was within :data:`REFERENCE_DRIFT` of torch fp32. None otherwise (the caller then loads
    the torch network and :func:`choose` decides). ``variant``: the bundle has its own int8 variant (which
    then is what openvino-int8 runs). Reads the cache only; the caller checks the choice on its scene."""
    if identity is None or not importlib.util.find_spec("openvino"):
        return None
    key = cache_key(identity, shape, threads)
    entry = _read_cache(cache_dir() / CACHE_FILE).get(_digest(key))
    if not isinstance(entry, dict) or entry.get("key") != key or not str(entry.get("backend", "")).startswith(
            "openvino-"):
        return None
    try:
        choice = Choice(str(entry["backend"]), tuple(Measurement(**m) for m in entry["measurements"]),
                        cached=True, notes=tuple(entry.get("notes", ())), key=key)
    except (KeyError, TypeError, ValueError):
        return None
    fp32 = next((m for m in choice.measurements if m.name == "openvino-fp32"), None)
    if fp32 is None or fp32.refused or fp32.drift is None or fp32.drift > REFERENCE_DRIFT:
        return None
    reference = artifact_dir("openvino", identity) / _IR
    graph = None if choice.backend == "openvino-int8" and variant else artifact_dir(
        "int8" if choice.backend == "openvino-int8" else "openvino", identity) / _IR
    if not reference.exists() or (graph is not None and not graph.exists()):
        return None
    return OpenVinoStart(choice, graph, reference, fp32.drift)


def centre_crop(x: Any, stride: int, size: int = 256) -> Any:
    """A centre crop of ``size`` px (on the stride) of a prepared sample's first image (a torch tensor or
    a numpy array)."""
    hp, wp = x.shape[-2:]
    r0 = max(0, (hp - size) // 2) // stride * stride
    c0 = max(0, (wp - size) // 2) // stride * stride
    crop = x[:1, :, r0 : r0 + size, c0 : c0 + size]
    return crop.contiguous() if hasattr(crop, "contiguous") else crop.copy()


def _crop(x: Any, stride: int, size: int = 256) -> list[Any]:
    return [centre_crop(x, stride, size)]


def _judged_on_first(backend: Backend) -> Backend:
    return Backend(backend.name, backend.precision, backend.channels_last, backend.forward, judge_on=(0,))


def artifact_dir(kind: str, identity: str) -> Path:
    """Where a backend made here keeps what it cannot rebuild cheaply (an int8 graph calibrated on a
    scene's tiles), per model and package versions."""
    versions = "-".join(f"{k}{v}" for k, v in sorted(package_versions().items()))
    return cache_dir() / kind / hashlib.sha256(f"{identity}|{versions}".encode()).hexdigest()[:32]


def store_artifact(folder: Path, write: Callable[[Path], None]) -> None:
    """Write a folder of files beside ``folder`` and rename it into place (a concurrent writer's complete
    copy is kept: both are the same calibration of the same model)."""
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        with contextlib.suppress(OSError):
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------- candidates


_IR = "model.xml"


def native_bf16() -> bool:
    """Whether this CPU has native bf16 kernels (AVX512-BF16 or AMX) that make bf16 faster than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_fp16() -> bool:
    """Whether this CPU has native fp16 kernels (AVX512-FP16 or AMX-FP16)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def _torch_backend(name: str) -> Backend | None:
    table = {"torch-fp32": Backend("torch-fp32", "fp32", channels_last=False),
             "torch-fp32-cl": Backend("torch-fp32-cl", "fp32"),
             "torch-bf16": Backend("torch-bf16", "bf16") if native_bf16() else None,
             "torch-fp16": Backend("torch-fp16", "fp16") if native_fp16() else None}
    return table.get(name)


def _openvino(model: Any, name: str, ir: Any) -> Backend:
    from pipeline.models.int8 import OpenVinoForward

    precision = name.rsplit("-", 1)[1]
    hint = {"fp32": "f32", "bf16": "bf16"}.get(precision)
    return Backend(name, precision, channels_last=False, forward=OpenVinoForward(ir, hint=hint,
                                                                                 compiled_dir=compiled_dir()))


def _stored_ir(kind: str, identity: str | None) -> Any:
    from pipeline.models.int8 import read_ir

    if identity is None:
        return None
    xml = artifact_dir(kind, identity) / _IR
    if not xml.exists():
        return None
    try:
        return read_ir(xml)
    except RuntimeError as err:
        log.warning("backend cache %s: cannot be read by OpenVINO (%s); making it again", xml.parent, _short(err))
        return None


def _store_ir(kind: str, identity: str | None, ir: Any) -> None:
    import openvino as ov

    if identity is None:
        return
    folder = artifact_dir(kind, identity)
    try:
        store_artifact(folder, lambda tmp: ov.save_model(ir, str(tmp / _IR), compress_to_fp16=False))
    except OSError as err:  # a read-only cache: this run goes on, the next one makes it again
        log.warning("backend cache %s: cannot be written (%s); the next run makes it again", folder.parent,
                    err.strerror or err)


def offer(model: Any, samples: Sequence[Any], identity: str | None) -> tuple[list[Backend], list[str]]:
    """Every backend the installed packages offer for ``model`` (a
    :class:`pipeline.models.network.TorchSegmentationModel`) on this CPU, and one line on each kind that
    was not offered (int8 above all: why it was not used)."""
    from pipeline.models import int8

    out = [b for b in map(_torch_backend, ("torch-fp32", "torch-fp32-cl", "torch-bf16", "torch-fp16")) if b]
    notes: list[str] = []
    if model._int8 is not None:
        out.append(Backend("openvino-int8", "int8", channels_last=False, forward=model._int8))
    if not int8.openvino_available():
        return out, notes + ["OpenVINO not installed: no OpenVINO fp32, bf16 or int8"]
    converted = _stored_ir("openvino", identity)
    if converted is None:
        try:
            converted = int8.convert(model, samples[0])
        except Exception as err:  # noqa: BLE001 - a network torch.export cannot trace runs in torch
            return out, notes + [f"OpenVINO cannot convert this network ({_short(err)})"]
        _store_ir("openvino", identity, converted)
    out.append(_openvino(model, "openvino-fp32", converted))
    if native_bf16():
        out.append(_openvino(model, "openvino-bf16", converted))
    if model._int8 is not None:
        return out, notes
    if not model._calibrate:
        return out, notes + ["int8 not used: the model has no calibrated int8 variant (`scenewatch models quantize`)"]
    calibrated = _stored_ir("int8", identity)
    if calibrated is not None:
        out.append(_openvino(model, "openvino-int8", calibrated))
        return out, notes
    if not int8.nncf_available():
        return out, notes + ["int8 not used: no calibrated variant and NNCF, which calibrates one, is not installed"]
    if len(samples) < 2:
        return out, notes + ["int8 not used: calibrating needs 2 tiles with data (one is held out), the scene gave 1"]
    started = time.perf_counter()
    try:
        calibrated = int8.quantize(converted.clone(), list(samples[0::2]))
    except Exception as err:  # noqa: BLE001 - calibration failing costs int8, not the run
        return out, notes + [f"int8 not used: calibration failed ({_short(err)})"]
    _store_ir("int8", identity, calibrated)
    held_out = tuple(range(1, len(samples), 2))
    backend = _openvino(model, "openvino-int8", calibrated)
    out.append(Backend(backend.name, backend.precision, False, backend.forward, judge_on=held_out))
    notes.append(f"int8 calibrated here on {len(samples[0::2])} tile(s) in {time.perf_counter() - started:.1f} s, "
                 f"checked on {len(held_out)} other(s)")
    return out, notes


def rebuild(model: Any, name: str, identity: str | None) -> Backend | None:
    """The backend ``name`` from what is at hand or was stored by :func:`offer`; None if it is gone."""
    from pipeline.models import int8

    if name.startswith("torch-"):
        return _torch_backend(name)
    if not int8.openvino_available():
        return None
    if name == "openvino-int8":
        if model._int8 is not None:
            return Backend(name, "int8", channels_last=False, forward=model._int8)
        ir = _stored_ir("int8", identity)
    else:
        ir = _stored_ir("openvino", identity)
    return _openvino(model, name, ir) if ir is not None else None
