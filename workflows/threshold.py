"""``threshold=auto`` on a scene: one histogram pass over the tiles on Dask, then one number for every tile.

Each task reads a few tiles in a worker (their read windows, so a speckle filter's halo is there, counted over
the core only), computes the model's index over valid pixels and returns its fixed-bin histogram
(:func:`pipeline.threshold.index_histogram`, 512 int64 counts); the client sums them as they arrive and
chooses the threshold (:func:`pipeline.threshold.choose_threshold`). The scene is never held whole: the
client holds one histogram, each worker a few tiles. The plan that comes back names the numeric threshold in
its model ref, so every tile of the prediction uses the same one, and carries the choice in the
``SCENEWATCH_THRESHOLD`` tag (value, ``auto``/``fallback``/``fixed``, and why), which the class and
probability rasters, the vector layer and the batch's STAC item repeat.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.change.transitions import IndexDifference
from pipeline.errors import crosses_processes
from pipeline.inference.masks import BoundMask
from pipeline.inference.read import SceneMeta, read_window
from pipeline.models.contract import BUILTIN_MODELS, ModelRef
from pipeline.models.loader import describe_model, load_model
from pipeline.models.spectral import SpectralIndexModel
from pipeline.products import Tag
from pipeline.threshold import ThresholdChoice, index_histogram
from tiles.grid import Tile

__all__ = ["resolve_auto_threshold", "resolve_pair_threshold", "pair_threshold_tags", "scene_histogram",
           "TILES_PER_TASK"]

log = logging.getLogger("scenewatch")

TILES_PER_TASK = 8  # a histogram task returns 4 KiB whatever its size: a few tiles per task keeps tasks few


@crosses_processes
def _tile_histograms(meta: SceneMeta, tiles: Sequence[Tile], indexes: tuple[int, ...], ref: ModelRef,
                     mask: BoundMask | None = None) -> np.ndarray:
    """The Dask task: the summed histogram of the model's index over the valid core pixels of ``tiles``."""
    model = load_model(ref)
    assert isinstance(model, SpectralIndexModel)
    total = np.zeros(model.index_range.bins, dtype=np.int64)
    for tile in tiles:
        data, valid = read_window(meta, tile.read_window, indexes, mask)
        rows = slice(tile.core_window.row_off - tile.read_window.row_off, None)
        cols = slice(tile.core_window.col_off - tile.read_window.col_off, None)
        index = model.index_values(data[None])[0]
        core = (slice(rows.start, rows.start + tile.core_window.height),
                slice(cols.start, cols.start + tile.core_window.width))
        total += index_histogram(index[core][valid[core]], model.index_range)
    return total


def scene_histogram(plan: Any, client: Any, model: SpectralIndexModel) -> np.ndarray:
    """The histogram of ``model``'s index over a planned scene's valid pixels, summed over Dask tasks."""
    from distributed import as_completed

    tiles = list(plan.grid)
    chunks = [tiles[i:i + TILES_PER_TASK] for i in range(0, len(tiles), TILES_PER_TASK)]
    futures = [client.submit(_tile_histograms, plan.meta, chunk, plan.band_indexes, plan.model, plan.mask,
                             pure=False, key=f"histogram-{plan.scene_id}-{i}") for i, chunk in enumerate(chunks)]
    total = np.zeros(model.index_range.bins, dtype=np.int64)
    for future in as_completed(futures):
        total += future.result()
        future.release()
    return total


def resolve_auto_threshold(plan: Any, client: Any) -> Any:
    """The plan (a :class:`workflows.scene.ScenePlan`) with ``threshold=auto`` resolved for its scene.

    For a spectral or radar model with ``threshold=auto``: the scene's histogram (:func:`scene_histogram`),
    the choice logged in one line and recorded in the ``SCENEWATCH_THRESHOLD`` tag, and the model ref given
    the number. A fixed threshold is recorded as such; any other model's plan comes back unchanged."""
    if plan.model.factory or plan.model.source not in BUILTIN_MODELS or Tag.THRESHOLD in plan.tags:
        return plan  # a network is loaded in the workers only, never here
    model = load_model(plan.model)
    if not isinstance(model, SpectralIndexModel):
        return plan
    if not model.auto:
        choice = ThresholdChoice(model.threshold, "fixed")
        return dataclasses.replace(plan, tags={**plan.tags, Tag.THRESHOLD: choice.describe()})
    choice = model.choose(scene_histogram(plan, client, model))
    if choice.source == "auto":
        log.info("scene %s: %s threshold %.4g computed from the scene (%s)", plan.scene_id, model.info.name,
                 choice.value, choice.detail)
    else:
        log.warning("scene %s: %s threshold=auto fell back to the default %g: %s", plan.scene_id,
                    model.info.name, choice.value, choice.detail)
    ref = plan.model.with_options(threshold=choice.value)
    return dataclasses.replace(plan, model=ref, info=describe_model(ref),
                               tags={**plan.tags, Tag.THRESHOLD: choice.describe()})


def resolve_pair_threshold(model: IndexDifference, windows: Iterable[tuple[np.ndarray, np.ndarray]],
                           name: str) -> tuple[IndexDifference, str]:
    """An index-difference model with ``threshold=auto`` (``dndvi``) resolved for a pair: the histogram of
    ``|difference|`` summed over the pair's ``(difference, valid)`` windows (one window in memory at a time),
    then :meth:`~pipeline.change.transitions.IndexDifference.resolved`; logged in one line. Returns the model
    with its edges and the ``SCENEWATCH_THRESHOLD`` tag's text."""
    from pipeline.change.transitions import DIFFERENCE_RANGE

    total = np.zeros(DIFFERENCE_RANGE.bins, dtype=np.int64)
    for diff, valid in windows:
        total += model.magnitude_histogram(diff, valid)
    resolved, choice = model.resolved(total)
    if choice.source == "auto":
        log.info("change %s: %s threshold %.4g computed from the pair (%s)", name, model.name, choice.value,
                 choice.detail)
    else:
        log.warning("change %s: %s threshold=auto fell back to the default %g: %s", name, model.name, choice.value,
                    choice.detail)
    return resolved, choice.describe()


def pair_threshold_tags(before: str | Path, after: str | Path) -> dict[str, str]:
    """``SCENEWATCH_THRESHOLD`` of a change raster made from two class rasters: each date's threshold
    (``before: 0.1133 auto (...); after: 0 fallback (...)``), when either date recorded one; so the change
    raster and its layer say how each date was classified."""
    import rasterio

    found = []
    for label, path in (("before", before), ("after", after)):
        with rasterio.open(path) as src:
            value = src.tags().get(Tag.THRESHOLD)
        if value:
            found.append(f"{label}: {value}")
    return {Tag.THRESHOLD: "; ".join(found)} if found else {}
