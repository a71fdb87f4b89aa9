"""Train a model bundle from labelled scenes: the orchestration behind ``scenewatch train``.

One validated, frozen :class:`TrainConfig` (CLI flags or a YAML file) -> open scenes and labels
[pipeline.inference.read, pipeline.training.labels] -> split by blocks [pipeline.training.chips] -> network
from scratch, a bundle or a weights file -> :func:`pipeline.training.train.fit` -> bundle
[pipeline.models.bundle.save_bundle] whose spec carries the band list, class names, normalization, training
history and data sources (file names only, no absolute paths, so the same run gives the same spec).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config import FrozenConfig, Mask, load_config_error
from pipeline.errors import ConfigError, ModelError
from pipeline.inference.masks import bind_mask, model_band_names
from pipeline.inference.read import open_scene, parse_band_map, resolve_bands
from pipeline.training.chips import Block, Split, split_blocks
from pipeline.training.labels import open_labels
from pipeline.training.train import TrainingScene, TrainOptions, TrainResult, fit, prepare_data
from tiles.grid import PixelWindow

__all__ = ["TrainConfig", "TrainRun", "train", "load_train_config", "parse_region", "load_network"]

log = logging.getLogger("scenewatch")


def parse_region(value: str | Sequence[int] | None) -> PixelWindow | None:
    """``"row,col,height,width"`` (scene pixels) -> PixelWindow."""
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        numbers = [int(p) for p in parts]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"region {value!r}: write ROW,COL,HEIGHT,WIDTH in scene pixels, e.g. 0,0,900,600") from err
    if len(numbers) != 4 or min(numbers) < 0 or numbers[2] == 0 or numbers[3] == 0:
        raise ConfigError(f"region {value!r}: write ROW,COL,HEIGHT,WIDTH in scene pixels, e.g. 0,0,900,600")
    return PixelWindow(*numbers)


class TrainConfig(FrozenConfig):
    """Everything one ``scenewatch train`` run needs. ``scenes`` and ``labels`` pair up in order."""

    where: ClassVar[str] = "train options"

    scenes: tuple[str, ...] = Field(min_length=1)
    labels: tuple[str, ...] = Field(min_length=1)
    label_attribute: str | None = Field(None, description="class attribute of vector labels; none: all class 1")
    out: str
    model: str | None = Field(None, description="bundle to fine-tune (its arch, encoder, bands)")
    weights: str | None = Field(None, description="state dict (.pt/.pth/.safetensors) for arch/encoder")
    arch: str = "Unet"
    encoder: str = "resnet18"
    bands: str | None = Field(None, description="band map 'pan=1' or 'blue=1,nir=2,swir16=3' or a preset")
    classes: tuple[str, ...] | None = None
    region: tuple[int, int, int, int] | None = Field(None, description="train only inside ROW,COL,HEIGHT,WIDTH")
    freeze_encoder: bool = False
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(8, gt=1)
    chip_size: int = Field(128, gt=0, multiple_of=32)
    chips_per_epoch: int = Field(128, gt=0)
    block_size: int | None = Field(None, gt=0, description="split block size; default 2 x chip size")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(5, gt=0)
    seed: int = 0
    sampling: Literal["random", "balanced"] = "balanced"
    jitter: float = Field(0.1, ge=0.0, le=0.5)
    tile_size: int = Field(512, gt=0, description="tile size stored in the bundle, for prediction")
    halo: int = Field(32, ge=0)
    name: str | None = None
    assume_crs: str | None = None
    mask: Mask = Field(None, description="quality mask, as --mask: its pixels are left out of the loss and scores")
    mask_dilate: int = Field(0, ge=0, description="grow the masked patches by this many pixels")

    @field_validator("classes", mode="before")
    @classmethod
    def _split_classes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(c.strip() for c in value.split(",") if c.strip())
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if len(self.scenes) != len(self.labels):
            raise ValueError(f"{len(self.scenes)} scene(s) but {len(self.labels)} label file(s); give one "
                             f"labels file per scene, in the same order")
        if self.model is not None and self.weights is not None:
            raise ValueError("give `model` (a bundle) or `weights` (a state dict file), not both")
        if self.classes is not None and len(self.classes) < 2:
            raise ValueError("classes: give at least two (e.g. background,building)")
        return self

    @property
    def options(self) -> TrainOptions:
        return TrainOptions(epochs=self.epochs, batch_size=self.batch_size, chip_size=self.chip_size,
                            chips_per_epoch=self.chips_per_epoch, learning_rate=self.learning_rate,
                            weight_decay=self.weight_decay, patience=self.patience, seed=self.seed,
                            freeze_encoder=self.freeze_encoder, sampling=self.sampling, jitter=self.jitter)


def load_train_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """A YAML file of :class:`TrainConfig` keys; ``overrides`` (CLI flags given) win over the file."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"train config {path.name}: cannot be read ({err})") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"train config {path.name}: expected a mapping of keys (scenes, labels, out, ...)")
    for key in ("scenes", "labels"):
        if isinstance(doc.get(key), str):
            doc[key] = [doc[key]]
    merged = {**doc, **{k: v for k, v in overrides.items() if v is not None and v != ()}}
    try:
        return TrainConfig(**merged)
    except ValidationError as err:
        raise load_config_error(err, f"train config {path.name}") from err


@dataclass(frozen=True, slots=True)
class TrainRun:
    bundle: Path
    result: TrainResult
    split: Split
    bands: tuple[str, ...]
    class_names: tuple[str, ...]


def _load_state(path: Path) -> dict[str, Any]:
    """A state dict from .safetensors, or .pt/.pth read weights-only (never arbitrary pickles)."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... for the same cause
        raise ModelError(f"weights {path.name}: not a plain state dict loadable with weights_only=True "
                         f"({err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_network(arch: str, encoder: str, bands: int, classes: int, seed: int,
                 state: dict[str, Any] | None, where: str) -> tuple[Any, int]:
    """An smp network (random init from ``seed``), then every tensor of ``state`` that fits by name and
    shape. The encoder must fit entirely (that is what is transferred); a head for another class count is
    left new. Returns the network and the number of tensors loaded."""
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(seed)
    try:
        network = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=bands,
                                   classes=classes)
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise ModelError(f"smp cannot build {arch} with encoder {encoder} ({str(err).splitlines()[0]})") from err
    if state is None:
        return network, 0
    own = network.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    encoder_keys = [k for k in own if k.startswith("encoder.")]
    missing = [k for k in encoder_keys if k not in fits]
    if missing:
        raise ModelError(f"{where}: {len(missing)} encoder tensor(s) do not fit {arch}/{encoder} with {bands} "
                         f"band(s) (e.g. {missing[0]}); use the same architecture, encoder and band count")
    network.load_state_dict({**own, **fits})
    skipped = len(own) - len(fits)
    if skipped:
        log.info("%s: %d tensor(s) not loaded (new head for %d classes)", where, skipped, classes)
    return network, len(fits)


def train(config: TrainConfig, progress: bool | None = None) -> TrainRun:
    """Run ``config`` and write its bundle to ``config.out``."""
    from pipeline.models.bundle import read_spec, save_bundle

    arch, encoder, base_bands, class_names = config.arch, config.encoder, None, config.classes
    state, source = None, None
    if config.model is not None:
        spec = read_spec(config.model)
        arch, encoder, base_bands = spec.arch, spec.encoder, spec.bands
        class_names = class_names or spec.class_names
        from pipeline.models.bundle import load_bundle

        state = load_bundle(config.model, precision="fp32", device="cpu").network.state_dict()
        source = {"bundle": spec.name, "version": spec.version}
    elif config.weights is not None:
        state = _load_state(Path(config.weights))
        source = {"weights": Path(config.weights).name}
    if class_names is None:
        raise ConfigError("train: set `classes` (e.g. background,building) or fine-tune a bundle (`model`)")

    scenes: list[TrainingScene] = []
    region = parse_region(config.region) if config.region else None
    splits_train: list[Block] = []
    splits_val: list[Block] = []
    block = config.block_size or 2 * config.chip_size
    for i, (scene_path, labels_path) in enumerate(zip(config.scenes, config.labels, strict=True)):
        meta = open_scene(scene_path, assume_crs=config.assume_crs)
        band_map = parse_band_map(config.bands, meta)
        names = base_bands or model_band_names(band_map.indexes, config.mask)
        if not names:
            raise ConfigError(f"scene {meta.name}: no band names; set `bands` (e.g. pan=1 or "
                              f"red=1,green=2,blue=3)")
        indexes = resolve_bands(meta, band_map, names)
        if base_bands is None:
            base_bands = tuple(names)
        labels = open_labels(labels_path, meta, class_names, config.label_attribute)
        mask = None
        if config.mask is not None:
            resolve_bands(meta, band_map, config.mask.bands)
            mask = bind_mask(config.mask, band_map.indexes, config.mask_dilate, f"scene {meta.name}")
        scenes.append(TrainingScene(meta, indexes, labels, mask))
        area = region.intersection(meta.bounds) if region else None
        if region is not None and area is None:
            raise ConfigError(f"scene {meta.name}: `region` {region} lies outside the scene "
                              f"({meta.height} x {meta.width} px)")
        split = split_blocks(meta.height, meta.width, block, config.val_fraction, config.seed, scene=i, region=area)
        splits_train.extend(split.train)
        splits_val.extend(split.validation)
    assert base_bands is not None
    split = Split(tuple(splits_train), tuple(splits_val))
    data = prepare_data(scenes, split, class_names)
    network, loaded = load_network(arch, encoder, len(base_bands), len(class_names), config.seed, state,
                                   f"bundle {Path(config.model).name}" if config.model else
                                   f"weights {Path(config.weights).name}" if config.weights else "network")
    result = fit(network, data, config.options, progress)
    extra = {
        "training": {
            "options": asdict(config.options),
            "history": list(result.history),
            "best_epoch": result.best_epoch,
            "best_val_iou": result.best_score,
            "stopped_early": result.stopped_early,
            "block_size": block,
            "train_blocks": [[b.scene, *_window_list(b.window)] for b in split.train],
            "validation_blocks": [[b.scene, *_window_list(b.window)] for b in split.validation],
            "fine_tuned_from": source,
            "tensors_transferred": loaded,
        },
        "data": [{"scene": Path(s).name, "labels": Path(lab).name, "label_attribute": config.label_attribute,
                  "region": list(config.region) if config.region else None}
                 for s, lab in zip(config.scenes, config.labels, strict=True)],
    }
    out = Path(config.out)
    bundle = save_bundle(out, result.network, arch=arch, encoder=encoder, bands=base_bands,
                         class_names=class_names, mean=result.mean, std=result.std, tile_size=config.tile_size,
                         halo=config.halo, name=config.name, extra=extra,
                         description=f"{arch}/{encoder} trained by scenewatch train on "
                                     f"{', '.join(Path(s).name for s in config.scenes)}")
    return TrainRun(bundle, result, split, tuple(base_bands), tuple(class_names))


def _window_list(w: PixelWindow) -> list[int]:
    return [w.row_off, w.col_off, w.height, w.width]
