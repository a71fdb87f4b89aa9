"""``--precision auto`` settled in every worker before the first tile, and recorded in the products.

Each worker measures the backends for its own CPU (:mod:`pipeline.models.backends`: the measurement runs
where the model runs, so a cluster of unlike machines gets one choice per kind of machine) on the scene's
first tiles, or takes its cached choice. Doing it here, before the writers open, lets the scene's COGs
record what ran (``SCENEWATCH_BACKEND``: the backends the workers chose, comma-separated) and keeps the
measurement out of the tile loop's timings. A worker that joins later settles on its first batch of tiles
instead (its choice is logged there, not tagged).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
from distributed import Client

from pipeline.errors import crosses_processes
from pipeline.inference.read import SceneMeta, read_window
from pipeline.models.contract import BUILTIN_MODELS, ModelRef
from pipeline.models.loader import load_model
from pipeline.products import Tag
from tiles.grid import TileGrid

__all__ = ["SAMPLE_TILES", "backend_tags", "settle_backend"]

SAMPLE_TILES = 4
"""Tiles the measurement runs on: the timing uses the first, the drift check all of them, and an int8
graph calibrated on the scene (a bundle without a variant) is calibrated on every other and checked on the
rest."""

MIN_VALID_FRACTION = 0.5
SCAN_TILES = 64  # tiles looked at, in grid order, for SAMPLE_TILES with data


@crosses_processes
def settle_backend(meta: SceneMeta, grid: TileGrid, indexes: tuple[int, ...], ref: ModelRef) -> str:
    """In a worker: load the model (cached for the tiles that follow) and settle ``auto`` on the scene's
    first full-size tiles with at least half their pixels valid; the backend's name, or "" for a model
    that has no backends (a spectral index, a model of the user's own)."""
    model = load_model(ref)
    choose = getattr(model, "choose_backend", None)
    if choose is None:
        return ""
    if not getattr(model, "choosing", False):  # an explicit precision: nothing to measure
        return str(getattr(model, "backend", ""))
    full = (grid.tile_size + 2 * grid.halo,) * 2
    samples: list[np.ndarray] = []
    largest: np.ndarray | None = None  # a scene without a full-size tile (smaller than two tiles) is settled
    for i in range(min(len(grid), SCAN_TILES)):  # on its largest tile with data
        tile = grid.tile(i // grid.cols, i % grid.cols)
        window = tile.read_window
        is_full = (window.height, window.width) == full
        if not is_full and (samples or (largest is not None and window.height * window.width <= largest[0].size)):
            continue
        data, valid = read_window(meta, window, indexes)
        if valid.mean() < MIN_VALID_FRACTION:
            continue
        if is_full:
            samples.append(data)
        else:
            largest = data
        if len(samples) == SAMPLE_TILES:
            break
    if samples:
        return str(choose(np.stack(samples)))
    if largest is not None:
        return str(choose(largest[None]))
    return str(getattr(model, "backend", ""))  # a scene mostly without data: settled on its first batch instead


def backend_tags(dask: Client, meta: SceneMeta, grid: TileGrid, indexes: tuple[int, ...],
                 ref: ModelRef) -> dict[str, str]:
    """Settle the backend in every worker of ``dask`` (in parallel, one task each) and return the tag that
    records them, or nothing for a built-in model or a cluster with no workers yet."""
    if not ref.factory and ref.source in BUILTIN_MODELS:
        return {}
    workers: Sequence[str] = sorted(dask.scheduler_info(n_workers=-1).get("workers", {}))
    token = uuid.uuid4().hex[:8]
    futures = [dask.submit(settle_backend, meta, grid, indexes, ref, key=f"backend-{token}-{i}", pure=False,
                           workers=[w], allow_other_workers=False) for i, w in enumerate(workers)]
    names = sorted({name for name in dask.gather(futures) if name})
    return {Tag.BACKEND: ",".join(names)} if names else {}
