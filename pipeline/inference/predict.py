"""Running a model on tiles: band values in, finished interiors and weighted rings out.

Pure computation: callers read the pixels (:func:`pipeline.inference.read.read_window`) and pass arrays in. For each
tile the model's probabilities over the blend window are split (:mod:`pipeline.inference.stitch`): the interior, which
only this tile covers, is finished here (class index and stored probability), and the ring, which
neighbours overlap, is returned weighted by the blend weight (:mod:`tiles.blend`) for the stitcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ModelError
from pipeline.inference.stitch import TileContribution, blend_parts, classify, encode_proba, split_core
from pipeline.models.contract import SegmentationModel
from tiles.blend import BlendMethod, blend_weights, blend_window
from tiles.grid import Tile, TileGrid

__all__ = ["TileInput", "predict_tiles", "predict_array"]


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


def _check_output(model: SegmentationModel, probs: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    if probs.shape != expected:
        raise ModelError(
            f"model {model.info.name}: returned an array of shape {probs.shape}, expected {expected}"
        )
    return probs.astype(np.float32, copy=False)


def _check_finite(model: SegmentationModel, probs: np.ndarray, valid: np.ndarray, where: str) -> None:
    """A NaN or infinite probability on a valid pixel is the model's failure, never "background": argmax
    over NaN gives class 0 and the stored probability 0, a wrong answer that looks like one. ``probs`` is
    ``(classes, rows, cols)``, ``valid`` ``(rows, cols)``; ``where`` names the tile for the message."""
    bad = ~np.isfinite(probs).all(axis=0) & valid
    if bad.any():
        precision = getattr(model, "precision", None)
        at = f" at precision {precision}" if precision else ""
        raise ModelError(
            f"model {model.info.name}: returned NaN or infinite probabilities{at} for {int(bad.sum()):,} valid "
            f"pixel(s) of {where}; check its weights and input normalization, or set `precision` to fp32"
        )


def predict_tiles(model: SegmentationModel, inputs: Sequence[TileInput], grid: TileGrid, overlap: int,
                  method: BlendMethod = "cosine", proba_dtype: str = "float32",
                  max_batch: int | None = None) -> list[TileContribution | None]:
    """Run ``model`` on a batch of tiles; ``None`` for tiles whose core holds no valid pixel (not run).
    A NaN or infinite probability on a valid pixel of a tile's read window raises :class:`ModelError`
    naming the tile and the model.

    Tiles with the same read-window shape are stacked into model calls of up to ``max_batch`` tiles (default:
    all of them); edge tiles, clipped by the scene border, run in their own groups so that no padding is
    invented where the scene has none.
    """
    results: list[TileContribution | None] = [None] * len(inputs)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(inputs):
        if item.core_has_data:
            groups.setdefault(item.data.shape, []).append(i)
    k = model.info.num_classes
    step = max_batch or max(1, len(inputs))
    for shape, group in groups.items():
        for start in range(0, len(group), step):
            members = group[start : start + step]
            batch = inputs[members[0]].data[None] if len(members) == 1 else np.stack([inputs[i].data for i in members])
            probs = _check_output(model, model.predict(batch), (len(members), k, shape[1], shape[2]))
            finite = bool(np.isfinite(probs).all())  # one pass over the batch; per tile only to say which
            for j, i in enumerate(members):
                if not finite:
                    tile = inputs[i].tile
                    _check_finite(model, probs[j], inputs[i].valid, f"tile (row {tile.row}, col {tile.col})")
                results[i] = _contribution(inputs[i], probs[j], grid, overlap, method, proba_dtype)
    return results


def _contribution(item: TileInput, probs: np.ndarray, grid: TileGrid, overlap: int, method: BlendMethod,
                  proba_dtype: str) -> TileContribution:
    effective = 0 if method == "none" else overlap
    tile = item.tile
    window = blend_window(tile, grid, effective)
    rows, cols = window.relative_to(tile.read_window)
    probs, valid = probs[:, rows, cols], item.valid[rows, cols]
    weight = blend_weights(tile, grid, effective, method)  # read-only, shared by tiles of the same shape
    if not valid.all():
        weight = weight * valid
    interior = split_core(tile, grid, effective)
    classes = proba = None
    if interior is not None:
        ir, ic = interior.relative_to(window)
        classes = classify(probs[:, ir, ic], valid[ir, ic])
        proba = encode_proba(probs[:, ir, ic], valid[ir, ic], proba_dtype)
    return TileContribution(tile, interior, classes, proba, blend_parts(window, probs, weight, interior))


def predict_array(model: SegmentationModel, data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Whole-array prediction with no tiling: ``(bands, H, W)`` in, ``(classes, H, W)`` out, NaN on invalid
    pixels. The reference that tiled runs are checked against, and the entry point for small arrays.
    A NaN or infinite probability on a valid pixel raises :class:`ModelError`."""
    data = np.asarray(data, dtype=np.float32)
    if valid is None:
        valid = np.all(np.isfinite(data), axis=0)
    data = np.where(valid, data, 0.0).astype(np.float32)
    probs = model.predict(data[None])[0].astype(np.float32)
    _check_finite(model, probs, valid, "the array")
    probs[:, ~valid] = np.nan
    return probs
