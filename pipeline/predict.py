"""Running a model on tiles: band values in, weighted class probabilities out.

Pure computation: callers read the pixels (:func:`pipeline.read.read_window`) and pass arrays in. A tile's
result is a :class:`TileContribution`: its probabilities over its blend window, already multiplied by the
blend weight (:mod:`tiles.blend`), with the weight itself, zero on invalid pixels. The stitcher sums the
contributions that cover a core and divides by the summed weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ModelError
from pipeline.model import SegmentationModel
from tiles.blend import BlendMethod, blend_weights, blend_window
from tiles.grid import PixelWindow, Tile, TileGrid

__all__ = ["TileContribution", "TileInput", "predict_tiles", "predict_array"]


@dataclass(frozen=True, slots=True)
class TileInput:
    """One tile's pixels: ``data`` float32 ``(bands, rows, cols)`` over ``tile.read_window``, ``valid`` mask."""

    tile: Tile
    data: np.ndarray
    valid: np.ndarray

    @property
    def core_has_data(self) -> bool:
        rows, cols = self.tile.core_window.relative_to(self.tile.read_window)
        return bool(self.valid[rows, cols].any())


@dataclass(frozen=True, slots=True)
class TileContribution:
    """A tile's share of the stitched result over ``window`` (its blend window)."""

    tile: Tile
    window: PixelWindow
    weighted: np.ndarray  # (classes, rows, cols) float32: weight * probability
    weight: np.ndarray  # (rows, cols) float32, 0 where the input is invalid


def _check_output(model: SegmentationModel, probs: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    if probs.shape != expected:
        raise ModelError(
            f"model {model.info.name}: returned an array of shape {probs.shape}, expected {expected}"
        )
    return probs.astype(np.float32, copy=False)


def predict_tiles(model: SegmentationModel, inputs: Sequence[TileInput], grid: TileGrid, overlap: int,
                  method: BlendMethod = "cosine") -> list[TileContribution | None]:
    """Run ``model`` on a batch of tiles; ``None`` for tiles whose core holds no valid pixel (not run).

    Tiles with the same read-window shape are stacked into one model call; edge tiles, clipped by the scene
    border, run in their own groups so that no padding is invented where the scene has none.
    """
    results: list[TileContribution | None] = [None] * len(inputs)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(inputs):
        if item.core_has_data:
            groups.setdefault(item.data.shape, []).append(i)
    k = model.info.num_classes
    for shape, members in groups.items():
        batch = np.stack([inputs[i].data for i in members])
        probs = _check_output(model, model.predict(batch), (len(members), k, shape[1], shape[2]))
        for j, i in enumerate(members):
            results[i] = _contribution(inputs[i], probs[j], grid, overlap, method)
    return results


def _contribution(item: TileInput, probs: np.ndarray, grid: TileGrid, overlap: int,
                  method: BlendMethod) -> TileContribution:
    effective = 0 if method == "none" else overlap
    window = blend_window(item.tile, grid, effective)
    rows, cols = window.relative_to(item.tile.read_window)
    weight = blend_weights(item.tile, grid, effective, method) * item.valid[rows, cols]
    return TileContribution(item.tile, window, probs[:, rows, cols] * weight, weight.astype(np.float32))


def predict_array(model: SegmentationModel, data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Whole-array prediction with no tiling: ``(bands, H, W)`` in, ``(classes, H, W)`` out, NaN on invalid
    pixels. The reference that tiled runs are checked against, and the entry point for small arrays."""
    data = np.asarray(data, dtype=np.float32)
    if valid is None:
        valid = np.all(np.isfinite(data), axis=0)
    data = np.where(valid, data, 0.0).astype(np.float32)
    probs = model.predict(data[None])[0].astype(np.float32)
    probs[:, ~valid] = np.nan
    return probs
