"""Model bundles: a folder holding a spec (``model.json``) and its weights (``weights.safetensors``).

A bundle is what a user trains, ships and passes to ``--model``::

    my-unet/
      model.json            STAC MLM fields (mlm:name, mlm:architecture, mlm:input, mlm:output, ...) plus
                            scenewatch:* keys (encoder, tile size, halo, weights file and its sha256)
      weights.safetensors   the network's state dict; safetensors cannot run code when read

``model.json`` uses the field names of the STAC Machine Learning Model extension (validated by the
``stac-model`` package), so its content can be copied into a STAC Item's properties as it is. What stac-model
cannot check for us (the framework is PyTorch, one input whose bands are names, z-score scaling with one
mean and stddev per band, one output whose classes are numbered 0..K-1, an smp architecture, our own
``scenewatch:*`` keys) is checked here, with errors that name the key.

Loading trusts nothing: the weights' sha256 must equal the spec's, the file must parse as safetensors (a
pickle renamed ``.safetensors`` is refused, never unpickled) and the state dict must fit the architecture
exactly. The only unpickling anywhere is :func:`import_state_dict`, which converts a plain PyTorch state dict
once, with ``torch.load(weights_only=True)`` passed explicitly (torch's ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
override does not apply to an explicit argument).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ModelError
from pipeline.models import int8
from pipeline.models.contract import RUNTIME_OPTIONS, ModelInfo
from pipeline.models.network import TorchSegmentationModel, default_device, visible_gpus
from pipeline.vocab import Precision

__all__ = [
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "BundleSpec",
    "Int8Keys",
    "save_bundle",
    "load_bundle",
    "read_spec",
    "build_network",
    "init_bundle",
    "import_state_dict",
    "find_bundles",
    "is_bundle",
    "smp_architectures",
]

log = logging.getLogger("scenewatch")

SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
BUNDLE_FORMAT = 1
_DIMS_IN = ["batch", "bands", "height", "width"]
_DIMS_OUT = ["batch", "channel", "height", "width"]
_TASK = "semantic-segmentation"


@dataclass(frozen=True, slots=True)
class BundleSpec:
    """What a bundle's ``model.json`` says, checked. ``mean``/``std`` are per band, in raw band units
    (the network sees ``(value - mean) / std``); None means no scaling. ``properties`` is the whole spec."""

    name: str
    version: str
    licence: str
    arch: str
    encoder: str
    bands: tuple[str, ...]
    class_names: tuple[str, ...]
    class_colors: tuple[str, ...]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    tile_size: int
    halo: int
    weights: str
    sha256: str
    description: str = ""
    int8: Int8Keys | None = None  # the calibrated int8 variant, if any (pipeline.models.int8)
    properties: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(name=self.name, version=self.version, bands=self.bands, class_names=self.class_names,
                         class_colors=self.class_colors, tile_size=self.tile_size, halo=self.halo,
                         description=self.description, licence=self.licence)


class Int8Keys(BaseModel):
    """``scenewatch:int8``: the bundle's int8 variant (OpenVINO IR files), what it was made from and what
    calibration measured (see :mod:`pipeline.models.int8`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    weights: str = Field(min_length=1)
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # the safetensors weights it was calibrated from
    drift: float = Field(ge=0)  # mean |p_int8 - p_fp32| on held-out tiles
    worst_drift: float = Field(ge=0)  # the same on the held-out tile where it is largest
    agreement: float = Field(ge=0, le=1)  # share of held-out pixels classed as fp32 classes them
    scenes: list[str]
    calibration_tiles: int = Field(gt=0)
    held_out_tiles: int = Field(gt=0)
    openvino: str


class _ScenewatchKeys(BaseModel):
    """The ``scenewatch:*`` keys of a spec (the MLM keys are validated by stac-model)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    format: int = Field(alias="scenewatch:format")
    encoder: str = Field(alias="scenewatch:encoder", min_length=1)
    tile_size: int = Field(alias="scenewatch:tile_size", gt=0)
    halo: int = Field(alias="scenewatch:halo", ge=0)
    weights: str = Field(alias="scenewatch:weights", min_length=1)
    sha256: str = Field(alias="scenewatch:weights_sha256", pattern=r"^[0-9a-f]{64}$")
    extra: dict[str, Any] = Field(default_factory=dict, alias="scenewatch:extra")
    int8: Int8Keys | None = Field(default=None, alias="scenewatch:int8")


# ------------------------------------------------------------------------------------------------ the spec


# segmentation-models-pytorch 0.6's architectures, lower-case name -> class name: reading a spec (as the
# process that plans and writes does) must not import smp, which brings torch in (+500 MiB resident).
SMP_ARCHITECTURES = {
    "unet": "Unet", "unetplusplus": "UnetPlusPlus", "manet": "MAnet", "linknet": "Linknet", "fpn": "FPN",
    "pspnet": "PSPNet", "deeplabv3": "DeepLabV3", "deeplabv3plus": "DeepLabV3Plus", "pan": "PAN",
    "upernet": "UPerNet", "segformer": "Segformer", "dpt": "DPT",
}


def smp_architectures() -> dict[str, str]:
    """smp's architectures, lower-case name -> class name (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, ...):
    the installed smp's own list where smp is already loaded, else :data:`SMP_ARCHITECTURES`."""
    smp = sys.modules.get("segmentation_models_pytorch")
    if smp is None:
        return dict(SMP_ARCHITECTURES)
    return {key: cls.__name__ for key, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}


def _hex_colour(colour: str) -> str:
    """MLM's ``color_hint`` is 6 hex digits without ``#``."""
    value = colour.strip().lstrip("#").lower()
    if len(value) != 6 or any(c not in "0123456789abcdef" for c in value):
        raise ModelError(f"class colour {colour!r}: write it as #rrggbb")
    return value


def _spec_document(*, name: str, arch: str, encoder: str, bands: Sequence[str], class_names: Sequence[str],
                   mean: Sequence[float] | None, std: Sequence[float] | None, class_colors: Sequence[str],
                   tile_size: int, halo: int, version: str, licence: str, sha256: str, total_parameters: int,
                   description: str, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    n, k = len(bands), len(class_names)
    if (mean is None) != (std is None):
        raise ModelError(f"bundle {name}: give both mean and std, or neither")
    scaling = None
    if mean is not None and std is not None:
        if len(mean) != n or len(std) != n:
            raise ModelError(f"bundle {name}: mean and std need one value per band ({n}: {', '.join(bands)})")
        if any(s <= 0 for s in std):
            raise ModelError(f"bundle {name}: every std must be positive, got {list(std)}")
        scaling = [{"type": "z-score", "mean": float(m), "stddev": float(s)} for m, s in zip(mean, std, strict=True)]
    if class_colors and len(class_colors) != k:
        raise ModelError(f"bundle {name}: {len(class_colors)} class colours for {k} classes")
    classes = []
    for value, class_name in enumerate(class_names):
        entry: dict[str, Any] = {"value": value, "name": class_name, "description": class_name}
        if class_colors:
            entry["color_hint"] = _hex_colour(class_colors[value])
        classes.append(entry)
    model_input: dict[str, Any] = {
        "name": "bands",
        "bands": list(bands),
        "input": {"shape": [-1, n, tile_size + 2 * halo, tile_size + 2 * halo], "dim_order": _DIMS_IN,
                  "data_type": "float32"},
    }
    if scaling is not None:
        model_input["value_scaling"] = scaling
    import torch

    doc: dict[str, Any] = {
        "mlm:name": name,
        "mlm:architecture": arch,
        "mlm:tasks": [_TASK],
        "mlm:framework": "pytorch",
        "mlm:framework_version": torch.__version__.split("+")[0],
        "mlm:accelerator": "amd64",
        "mlm:accelerator_constrained": False,
        "mlm:total_parameters": total_parameters,
        "mlm:pretrained": False,
        "mlm:input": [model_input],
        "mlm:output": [{
            "name": "classes",
            "tasks": [_TASK],
            "result": {"shape": [-1, k, tile_size + 2 * halo, tile_size + 2 * halo], "dim_order": _DIMS_OUT,
                       "data_type": "float32"},
            "classification:classes": classes,
        }],
        "description": description,
        "version": version,
        "license": licence,
        "scenewatch:format": BUNDLE_FORMAT,
        "scenewatch:encoder": encoder,
        "scenewatch:tile_size": tile_size,
        "scenewatch:halo": halo,
        "scenewatch:weights": WEIGHTS_FILE,
        "scenewatch:weights_sha256": sha256,
    }
    plain: dict[str, Any] = {}
    for key, value in (extra or {}).items():
        if ":" in key and key not in doc:
            doc[key] = value  # namespaced keys (mlm:hyperparameters, ...) go to the top level, as in STAC
        elif ":" in key:
            raise ModelError(f"bundle {name}: extra key {key!r} would overwrite a key scenewatch sets")
        else:
            plain[key] = value
    if plain:
        doc["scenewatch:extra"] = plain
    return doc


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def parse_spec(doc: Any, where: str = "model.json") -> BundleSpec:
    """Check a spec document (a parsed ``model.json``) and return its :class:`BundleSpec`."""
    from stac_model.schema import MLModelProperties

    if not isinstance(doc, dict):
        raise ModelError(f"{where}: expected a JSON object")
    try:
        mlm = MLModelProperties.model_validate(doc)
    except (ValidationError, ValueError) as err:
        detail = _validation_message(err) if isinstance(err, ValidationError) else str(err)
        raise ModelError(f"{where}: not a valid STAC MLM model spec ({detail})") from err
    ours = {k: v for k, v in doc.items() if k.startswith("scenewatch:")}
    try:
        keys = _ScenewatchKeys.model_validate(ours)
    except ValidationError as err:
        raise ModelError(f"{where}: {_validation_message(err)}") from err
    if keys.format != BUNDLE_FORMAT:
        raise ModelError(f"{where}: scenewatch:format {keys.format} is not supported (this version reads "
                         f"{BUNDLE_FORMAT}); upgrade scenewatch")
    if (mlm.framework or "").lower() not in ("pytorch", "torch"):
        raise ModelError(f"{where}: mlm:framework {mlm.framework!r}: only pytorch bundles can be run")
    arch = smp_architectures().get(mlm.architecture.lower())
    if arch is None:
        raise ModelError(f"{where}: mlm:architecture {mlm.architecture!r} is not a segmentation-models-pytorch "
                         f"architecture ({', '.join(sorted(smp_architectures().values()))})")
    if len(mlm.input) != 1 or len(mlm.output) != 1:
        raise ModelError(f"{where}: mlm:input and mlm:output must each hold exactly one entry")
    raw_in, raw_out = doc["mlm:input"][0], doc["mlm:output"][0]
    bands = tuple(str(b).lower() for b in raw_in.get("bands") or [])
    if not bands or not all(isinstance(b, str) for b in raw_in.get("bands") or []):
        raise ModelError(f"{where}: mlm:input[0].bands must list the band names (red, nir, swir16, ...)")
    if len(set(bands)) != len(bands):
        raise ModelError(f"{where}: mlm:input[0].bands names a band twice ({', '.join(bands)})")
    mean, std = _scaling(raw_in.get("value_scaling"), len(bands), where)
    classes = raw_out.get("classification:classes") or []
    if not classes or [c.get("value") for c in classes] != list(range(len(classes))):
        raise ModelError(f"{where}: mlm:output[0].classification:classes must number the classes 0..K-1 "
                         f"in order")
    names = tuple(str(c.get("name") or c.get("description")) for c in classes)
    hints = [c.get("color_hint") for c in classes]
    colours = tuple(f"#{h}" for h in hints) if all(hints) else ()
    return BundleSpec(
        name=mlm.name, version=str(doc.get("version", "0")), licence=str(doc.get("license", "")), arch=arch,
        encoder=keys.encoder, bands=bands, class_names=names, class_colors=colours, mean=mean, std=std,
        tile_size=keys.tile_size, halo=keys.halo, weights=keys.weights, sha256=keys.sha256,
        description=str(doc.get("description", "")), int8=keys.int8, properties=doc,
    )


def _scaling(scaling: Any, n: int, where: str) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if not scaling:
        return None, None
    if len(scaling) != n or any(not s or s.get("type") != "z-score" for s in scaling):
        raise ModelError(f"{where}: mlm:input[0].value_scaling must be one z-score (mean, stddev) per band "
                         f"({n}); other scalings are not supported")
    mean = tuple(float(s["mean"]) for s in scaling)
    std = tuple(float(s["stddev"]) for s in scaling)
    if any(s <= 0 for s in std):
        raise ModelError(f"{where}: mlm:input[0].value_scaling: every stddev must be positive")
    return mean, std


def _bundle_dir(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.is_file() and path.name == SPEC_FILE:
        return path.parent
    if path.is_file() and path.suffix in (".pt", ".pth", ".ckpt", ".bin", ".safetensors"):
        raise ModelError(f"model {path.name}: a weights file, not a bundle; make a bundle from it with "
                         "pipeline.models.bundle.import_state_dict (on the command line: scenewatch models import)")
    if not (path / SPEC_FILE).is_file():
        raise ModelError(f"bundle {path}: no {SPEC_FILE} there; create one with `scenewatch models init`")
    return path


def is_bundle(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / SPEC_FILE).is_file()


def read_spec(path: str | os.PathLike[str]) -> BundleSpec:
    """The checked spec of the bundle at ``path`` (its folder or its ``model.json``)."""
    folder = _bundle_dir(path)
    where = f"bundle {folder.name}: {SPEC_FILE}"
    try:
        doc = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{where}: cannot be read as JSON ({err})") from err
    return parse_spec(doc, where)


def find_bundles(folder: str | os.PathLike[str]) -> list[Path]:
    """Bundles directly inside ``folder`` (sorted by name), for ``scenewatch models``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    # Hidden folders are bundles being written or replaced (see save_bundle); they are not listed.
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and is_bundle(p))


# ------------------------------------------------------------------------------------------------- weights


def build_network(spec: BundleSpec) -> Any:
    """The spec's smp network, randomly initialised, with no pretrained weights (nothing is downloaded)."""
    import segmentation_models_pytorch as smp

    try:
        return smp.create_model(spec.arch, encoder_name=spec.encoder, encoder_weights=None,
                                in_channels=len(spec.bands), classes=len(spec.class_names))
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise ModelError(f"bundle {spec.name}: smp cannot build {spec.arch} with encoder {spec.encoder} "
                         f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_state_dict(network: Any, state: Mapping[str, Any], where: str, spec_label: str) -> None:
    """Refuse, with counts and examples, a state dict that does not fit ``network`` exactly."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:2])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:2])})")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatch(es) (e.g. {k}: {tuple(state[k].shape)} in the "
                         f"weights, {tuple(expected[k].shape)} in the network)")
        raise ModelError(f"{where}: the weights do not fit {spec_label}: {'; '.join(parts)}; were they saved "
                         f"from another architecture, encoder, band or class count?")
    network.load_state_dict(state, strict=True)


def _read_weights(folder: Path, spec: BundleSpec) -> dict[str, Any]:
    """Read, verify and parse the weights: sha256 first, then safetensors only (never pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    where = f"bundle {folder.name}"
    data = _weights_bytes(folder, spec)
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise ModelError(f"{where}: weights {spec.weights} are not a valid safetensors file ({err}); only "
                         f"safetensors weights are loaded") from err


def _weights_bytes(folder: Path, spec: BundleSpec) -> bytes:
    """The weights file's bytes, refused unless it is a .safetensors file inside the bundle with the sha256
    ``model.json`` records (nothing parsed yet)."""
    where = f"bundle {folder.name}"
    name = Path(spec.weights)
    if name.name != spec.weights or spec.weights in (".", ".."):
        raise ModelError(f"{where}: scenewatch:weights {spec.weights!r} must be a file name inside the bundle")
    if name.suffix != ".safetensors":
        raise ModelError(f"{where}: weights {spec.weights} are not a .safetensors file; convert a PyTorch state "
                         f"dict with `scenewatch models import`")
    try:
        data = (folder / name).read_bytes()
    except OSError as err:
        raise ModelError(f"{where}: weights {spec.weights} cannot be read ({err.strerror or err})") from err
    digest = _sha256_bytes(data)
    if digest != spec.sha256:
        raise ModelError(f"{where}: weights {spec.weights} have sha256 {digest[:12]}... but {SPEC_FILE} expects "
                         f"{spec.sha256[:12]}...; the file was changed or belongs to another bundle")
    return data


def load_bundle(path: str | os.PathLike[str], *, precision: Precision = "auto", compile: bool = False,
                device: str | None = None, threads: int | None = None, **options: Any) -> Any:
    """The bundle at ``path`` as a ready model (checks: spec, sha256, safetensors, exact state dict).

    ``precision`` is a :data:`pipeline.vocab.Precision`; ``compile`` runs the network through ``torch.compile``
    (faster on long jobs; the first tile in each worker pays the compile time). int8 runs the bundle's
    calibrated int8 variant (``scenewatch models quantize``) on OpenVINO; ``auto`` picks it on a CPU when
    the bundle has one and OpenVINO is installed.

    ``threads`` (the intra-op threads the model runs with, as a worker sets them) given with ``auto`` on a
    CPU returns a :class:`pipeline.models.warm.AutoBundleModel`: it starts from the backend cache without
    torch where the cached choice runs on OpenVINO, and loads the torch network (checked as here) otherwise.
    """
    folder = _bundle_dir(path)
    if options:
        raise ModelError(f"bundle {folder.name}: unknown model option(s) {', '.join(sorted(options))}; "
                         f"a bundle takes {', '.join(RUNTIME_OPTIONS)}")
    spec = read_spec(folder)
    on_cpu = device.startswith("cpu") if device else visible_gpus() == 0  # asked without importing torch
    if precision == "auto" and not compile and on_cpu and threads:
        from pipeline.models.warm import AutoBundleModel

        variant = spec.int8 is not None and int8.openvino_available()
        return AutoBundleModel(spec.info, identity=_identity(spec, variant), threads=threads, mean=spec.mean,
                               std=spec.std, build=lambda: _load_torch(folder, spec, precision, compile, "cpu"),
                               check_weights=functools.partial(_weights_bytes, folder, spec),
                               variant=functools.partial(int8.load_int8, folder, spec) if variant else None)
    return _load_torch(folder, spec, precision, compile, device)


def _identity(spec: BundleSpec, variant: bool) -> str:
    """The backend cache's key for a bundle (pipeline.models.backends): these weights, this int8 variant
    (when it is used), this normalisation."""
    return int8.sha256_hex(json.dumps([spec.sha256, spec.int8.model_sha256 if variant and spec.int8 else None,
                                       list(spec.mean or []), list(spec.std or [])]).encode())


def _load_torch(folder: Path, spec: BundleSpec, precision: Precision, compile: bool,
                device: str | None) -> TorchSegmentationModel:
    state = _read_weights(folder, spec)
    network = build_network(spec)
    _check_state_dict(network, state, f"bundle {folder.name}", f"{spec.arch}/{spec.encoder} with "
                      f"{len(spec.bands)} band(s) and {len(spec.class_names)} class(es)")
    device = device or default_device()
    variant = None
    wants_int8 = precision == "int8" or (precision == "auto" and spec.int8 is not None
                                         and int8.openvino_available())
    if precision == "auto" and spec.int8 is not None and not wants_int8:
        log.info("bundle %s: has an int8 variant, but OpenVINO is not installed (pip install "
                 "'scenewatch[int8]'); running it in torch", folder.name)
    if wants_int8 and not device.startswith("cuda"):
        variant = int8.load_int8(folder, spec)
    return TorchSegmentationModel(network, spec.info, mean=spec.mean, std=spec.std, precision=precision,
                                  device=device, compile=compile, int8=variant,
                                  identity=_identity(spec, variant is not None),
                                  calibrate=precision == "auto" and variant is None)


# ------------------------------------------------------------------------------------------------- writing


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older bundle there (two renames)."""
    if final.exists():
        if not is_bundle(final):
            raise ModelError(f"bundle {final}: exists and is not a bundle; choose another folder")
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_bundle(path: str | os.PathLike[str], network: Any, *, arch: str, encoder: str, bands: Sequence[str],
                class_names: Sequence[str], mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, class_colors: Sequence[str] = (), tile_size: int = 512,
                halo: int = 32, name: str | None = None, version: str = "0.1.0", licence: str = "proprietary",
                extra: dict[str, Any] | None = None, description: str = "") -> Path:
    """Write ``network``'s weights and spec as a bundle folder at ``path`` (atomic: a complete bundle or
    the previous one, never a mix). The network must be the smp ``arch``/``encoder`` it claims to be."""
    from safetensors.torch import save as save_safetensors

    from pipeline.names import safe_name

    final = Path(path)
    name = name or safe_name(final.name)
    arch_name = smp_architectures().get(arch.lower())
    if arch_name is None:
        raise ModelError(f"bundle {name}: {arch!r} is not a segmentation-models-pytorch architecture "
                         f"({', '.join(sorted(smp_architectures().values()))})")
    bands = [b.strip().lower() for b in bands]
    class_names = [c.strip() for c in class_names]
    if not bands or not class_names:
        raise ModelError(f"bundle {name}: give at least one band and one class")
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in network.state_dict().items()}
    # The weights must be what build_network makes of the spec, or the bundle could never be loaded.
    probe = {"arch": arch_name, "encoder": encoder, "bands": tuple(bands), "class_names": tuple(class_names)}
    reference = build_network(BundleSpec(name=name, version=version, licence=licence, mean=None, std=None,
                                         class_colors=(), tile_size=tile_size, halo=halo, weights=WEIGHTS_FILE,
                                         sha256="0" * 64, **probe))  # type: ignore[arg-type]
    _check_state_dict(reference, state, f"bundle {name}", f"{arch_name}/{encoder} with {len(bands)} band(s) "
                      f"and {len(class_names)} class(es)")
    data = save_safetensors(state, metadata={"format": "pt"})
    total = int(sum(p.numel() for p in network.parameters()))
    doc = _spec_document(name=name, arch=arch_name, encoder=encoder, bands=bands, class_names=class_names,
                         mean=mean, std=std, class_colors=class_colors, tile_size=tile_size, halo=halo,
                         version=version, licence=licence, sha256=_sha256_bytes(data), total_parameters=total,
                         description=description, extra=extra)
    parse_spec(doc, f"bundle {name}: {SPEC_FILE}")  # never write a spec we would refuse to read
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.sw-tmp-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        (tmp / WEIGHTS_FILE).write_bytes(data)
        (tmp / SPEC_FILE).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def init_bundle(out: str | os.PathLike[str], arch: str, encoder: str, bands: Sequence[str],
                class_names: Sequence[str], seed: int = 0, **save_options: Any) -> Path:
    """A new bundle with a randomly initialised (``seed``) network: the starting point for training."""
    import torch

    name = save_options.get("name") or Path(out).name
    arch_name = smp_architectures().get(arch.lower())
    if arch_name is None:
        raise ModelError(f"bundle {name}: {arch!r} is not a segmentation-models-pytorch architecture "
                         f"({', '.join(sorted(smp_architectures().values()))})")
    spec = BundleSpec(name=name, version="0", licence="", arch=arch_name, encoder=encoder,
                      bands=tuple(b.strip().lower() for b in bands), class_names=tuple(class_names),
                      class_colors=(), mean=None, std=None, tile_size=512, halo=32, weights=WEIGHTS_FILE,
                      sha256="0" * 64)
    torch.manual_seed(seed)
    network = build_network(spec)
    return save_bundle(out, network, arch=arch_name, encoder=encoder, bands=bands, class_names=class_names,
                       **save_options)


def import_state_dict(weights_file: str | os.PathLike[str], out_bundle: str | os.PathLike[str], *, arch: str,
                      encoder: str, bands: Sequence[str], class_names: Sequence[str],
                      **save_options: Any) -> Path:
    """Convert a plain PyTorch state dict (``.pt``/``.pth``) into a bundle, once.

    The file is read with ``torch.load(weights_only=True)`` passed explicitly, so a pickle that would run
    code is refused even when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set (torch lets that variable override
    only calls that do not pass ``weights_only``). A Lightning-style ``{"state_dict": ...}`` and a
    DataParallel ``module.`` prefix are accepted.
    """
    import pickle

    import torch

    source = Path(weights_file)
    where = f"weights {source.name}"
    try:
        with warnings.catch_warnings():
            # A raw pickle.dump file (not torch.save) makes torch warn about its protocol; the load is
            # still weights-only, and the outcome is reported below either way.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            loaded = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ModelError(f"{where}: no such file ({source})") from err
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{where}: refused: not a plain tensor state dict that loads with weights_only=True "
                         f"({first})") from err
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ModelError(f"{where}: expected a state dict (names -> tensors); save one with "
                         f"torch.save(model.state_dict(), path)")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in loaded.items()}
    name = save_options.get("name") or Path(out_bundle).name
    spec = BundleSpec(name=name, version="0", licence="", arch=smp_architectures().get(arch.lower(), arch),
                      encoder=encoder, bands=tuple(bands), class_names=tuple(class_names), class_colors=(),
                      mean=None, std=None, tile_size=512, halo=32, weights=WEIGHTS_FILE, sha256="0" * 64)
    network = build_network(spec)
    _check_state_dict(network, state, where, f"{spec.arch}/{encoder} with {len(bands)} band(s) and "
                      f"{len(class_names)} class(es)")
    return save_bundle(out_bundle, network, arch=arch, encoder=encoder, bands=bands, class_names=class_names,
                       **save_options)
