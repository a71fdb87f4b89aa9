"""Training: chips from labelled scenes into an smp network, with early stopping on validation IoU.

Data flow::

    scenes + labels [pipeline.inference.read, pipeline.training.labels]
      -> split by blocks [pipeline.training.chips.split_blocks]
      -> training blocks: labels held (1 byte/pixel), band statistics accumulated  (prepare_data)
      -> per epoch: fresh seeded chips [pipeline.training.chips.sample_chips] read window by window,
         normalized, augmented [pipeline.training.augment] -> AdamW on cross-entropy + Dice
      -> validation: every validation block predicted whole, confusion matrix [pipeline.training.metrics]
      -> best epoch by validation IoU; stop after ``patience`` epochs without improvement

**Normalization.** The network sees ``(value - mean) / std`` per band, with ``mean``/``std`` computed over
every valid pixel of the training blocks (never the validation blocks) and stored in the bundle, so
prediction applies exactly the same scaling.

**Validation IoU** is the mean IoU of the foreground classes (all but class 0) on the validation blocks,
or of all classes when there is only one; classes absent from validation and never predicted there are
left out rather than counted as 0 or 1.

**Reproducibility.** Every random draw (split, chips, augmentations, initial weights, batch order) comes from
``seed``; the same data, options and torch build give the same weights on CPU.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import ConfigError
from pipeline.inference.masks import BoundMask
from pipeline.inference.read import SceneMeta, read_window
from pipeline.training.augment import augment
from pipeline.training.chips import Block, Chip, SamplingMethod, Split, sample_chips
from pipeline.training.labels import IGNORE, Labels, read_labels
from pipeline.training.metrics import confusion_matrix, pixel_metrics
from tiles.grid import PixelWindow

__all__ = ["TrainOptions", "TrainingScene", "TrainingData", "TrainResult", "prepare_data", "fit",
           "band_statistics", "validation_score"]

log = logging.getLogger("scenewatch")


@dataclass(frozen=True, slots=True)
class TrainOptions:
    """Hyperparameters; the defaults train a resnet18 U-Net on CPU in minutes."""

    epochs: int = 10
    batch_size: int = 8
    chip_size: int = 128
    chips_per_epoch: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5
    seed: int = 0
    freeze_encoder: bool = False
    sampling: SamplingMethod = "balanced"
    jitter: float = 0.1
    min_labelled: float = 0.5


@dataclass(frozen=True, slots=True)
class TrainingScene:
    meta: SceneMeta
    band_indexes: tuple[int, ...]
    labels: Labels
    mask: BoundMask | None = None  # quality mask: its unusable pixels are unknown labels (IGNORE), never learnt


@dataclass(frozen=True, slots=True)
class TrainingData:
    """The split, the labels of the training blocks, the validation blocks' pixels, and band statistics."""

    scenes: tuple[TrainingScene, ...]
    class_names: tuple[str, ...]
    split: Split
    train_labels: tuple[np.ndarray, ...]  # one per split.train block
    val_images: tuple[np.ndarray, ...]  # raw band values, one per split.validation block
    val_labels: tuple[np.ndarray, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class TrainResult:
    network: Any  # the best epoch's weights, in eval mode
    mean: tuple[float, ...]
    std: tuple[float, ...]
    history: tuple[dict[str, Any], ...]
    best_epoch: int
    best_score: float | None
    seconds: float
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def band_statistics(sums: np.ndarray, squares: np.ndarray, count: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and standard deviation from running sums (float64); a constant band gets std 1."""
    if count == 0:
        raise ConfigError("the training blocks hold no valid pixel; check the scene's nodata and the region")
    mean = sums / count
    var = np.maximum(squares / count - mean**2, 0.0)
    std = np.sqrt(var)
    std[std < 1e-6] = 1.0
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _read_block(scene: TrainingScene, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
    data, valid = read_window(scene.meta, window, scene.band_indexes, scene.mask)
    return data, read_labels(scene.labels, window, valid)


def prepare_data(scenes: Sequence[TrainingScene], split: Split, class_names: Sequence[str]) -> TrainingData:
    """Read the labels of every block once (training blocks keep only labels; validation blocks keep their
    pixels too) and accumulate band statistics over the valid pixels of the training blocks."""
    n_bands = len(scenes[0].band_indexes)
    sums, squares, count = np.zeros(n_bands), np.zeros(n_bands), 0
    train_labels = []
    for block in split.train:
        data, labels = _read_block(scenes[block.scene], block.window)
        valid = labels != IGNORE
        pixels = data[:, valid].astype(np.float64)
        sums += pixels.sum(axis=1)
        squares += (pixels**2).sum(axis=1)
        count += pixels.shape[1]
        train_labels.append(labels)
    mean, std = band_statistics(sums, squares, count)
    val_images, val_labels = [], []
    for block in split.validation:
        data, labels = _read_block(scenes[block.scene], block.window)
        val_images.append(data)
        val_labels.append(labels)
    return TrainingData(tuple(scenes), tuple(class_names), split, tuple(train_labels), tuple(val_images),
                        tuple(val_labels), mean, std)


def _normalize(data: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((data - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


def _read_chip(data: TrainingData, chip: Chip, block: Block, block_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scene = data.scenes[chip.scene]
    image, _ = read_window(scene.meta, chip.window, scene.band_indexes)
    rs, cs = chip.window.relative_to(block.window)
    return image, block_labels[rs, cs]


def _containing_block(chip: Chip, blocks: Sequence[Block]) -> int:
    for i, b in enumerate(blocks):
        if b.scene == chip.scene and chip.window.intersection(b.window) == chip.window:
            return i
    raise AssertionError(f"chip {chip} lies in no training block")  # sample_chips guarantees it does


def validation_score(confusion: np.ndarray, class_names: Sequence[str]) -> float | None:
    """Mean IoU of the foreground classes (all classes when there is one), leaving out undefined IoUs."""
    metrics = pixel_metrics(confusion, class_names)
    classes = metrics.classes[1:] if len(class_names) > 1 else metrics.classes
    values = [c.iou for c in classes if c.iou is not None]
    return float(np.mean(values)) if values else None


def _predict_block(network: Any, image: np.ndarray, stride: int = 32) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(image)[None]
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % stride, (-w) % stride
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    with torch.no_grad():
        logits = network(x)
    return logits[0, :, :h, :w].argmax(dim=0).numpy().astype(np.uint8)


def _validate(network: Any, data: TrainingData, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    k = len(data.class_names)
    total = np.zeros((k, k), dtype=np.int64)
    network.eval()
    for image, labels in zip(data.val_images, data.val_labels, strict=True):
        predicted = _predict_block(network, _normalize(image, mean, std))
        total += confusion_matrix(labels, predicted, k)
    return total


def _set_train_mode(network: Any, freeze_encoder: bool) -> None:
    network.train()
    if freeze_encoder:
        network.encoder.eval()  # frozen means frozen: no BatchNorm statistics drift either


def fit(network: Any, data: TrainingData, options: TrainOptions, progress: bool | None = None) -> TrainResult:
    """Train ``network`` (an smp model, modified in place) on ``data``; returns the best epoch's weights."""
    import segmentation_models_pytorch as smp
    import torch
    from tqdm import tqdm

    started = time.perf_counter()
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    k = len(data.class_names)
    mean, std = np.asarray(data.mean, dtype=np.float32), np.asarray(data.std, dtype=np.float32)
    network = network.to("cpu").to(memory_format=torch.contiguous_format)
    for p in network.parameters():
        p.requires_grad_(True)
    if options.freeze_encoder:
        for p in network.encoder.parameters():
            p.requires_grad_(False)
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=options.weight_decay)
    steps = math.ceil(options.chips_per_epoch / options.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=options.learning_rate,
                                                    total_steps=max(1, steps * options.epochs), pct_start=0.1)
    cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    dice = smp.losses.DiceLoss(mode="multiclass", ignore_index=IGNORE)

    history: list[dict[str, Any]] = []
    best_score: float | None = None
    best_epoch, best_state, waited, stopped = 0, copy.deepcopy(network.state_dict()), 0, False
    bar = tqdm(range(1, options.epochs + 1), desc="train", unit="epoch", disable=None if progress is None
               else not progress, leave=False)
    for epoch in bar:
        chips = sample_chips(data.split.train, data.train_labels, options.chips_per_epoch, options.chip_size,
                             k, rng, options.sampling, options.min_labelled)
        _set_train_mode(network, options.freeze_encoder)
        losses = []
        for start in range(0, len(chips), options.batch_size):
            images, targets = [], []
            for chip in chips[start : start + options.batch_size]:
                b = _containing_block(chip, data.split.train)
                image, labels = _read_chip(data, chip, data.split.train[b], data.train_labels[b])
                image, labels = augment(_normalize(image, mean, std), labels, rng, options.jitter)
                images.append(image)
                targets.append(labels.astype(np.int64))
            x = torch.from_numpy(np.stack(images))
            y = torch.from_numpy(np.stack(targets))
            if len(images) == 1 and any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules()):
                continue  # BatchNorm cannot train on a batch of one 1x1 feature map; skip the remainder
            logits = network(x)
            loss = cross_entropy(logits, y) + dice(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        record: dict[str, Any] = {"epoch": epoch, "train_loss": round(float(np.mean(losses)), 6)}
        if data.split.validation:
            confusion = _validate(network, data, mean, std)
            score = validation_score(confusion, data.class_names)
            metrics = pixel_metrics(confusion, data.class_names)
            record["val_iou"] = None if score is None else round(score, 6)
            record["val_accuracy"] = None if metrics.accuracy is None else round(metrics.accuracy, 6)
            record["val_class_iou"] = {c.name: None if c.iou is None else round(c.iou, 6) for c in metrics.classes}
            improved = best_epoch == 0 or (score is not None and (best_score is None or score > best_score))
        else:
            score, improved = None, True
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}",
                        val_iou="-" if record.get("val_iou") is None else f"{record['val_iou']:.3f}")
        log.info("epoch %d: %s", epoch, record)
        if improved:
            best_score, best_epoch, waited = score, epoch, 0
            best_state = copy.deepcopy(network.state_dict())
        else:
            waited += 1
            if waited >= options.patience:
                stopped = True
                break
    bar.close()
    network.load_state_dict(best_state)
    network.eval()
    return TrainResult(network=network, mean=data.mean, std=data.std, history=tuple(history), best_epoch=best_epoch,
                       best_score=best_score, seconds=time.perf_counter() - started, stopped_early=stopped)
