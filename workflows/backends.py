"""``--precision auto`` settled in every worker before the first tile, and recorded in the products.

Each worker measures the backends for its own CPU (:mod:`pipeline.models.backends`: the measurement runs
where the model runs, so a cluster of unlike machines gets one choice per kind of machine) on tiles spread
over the scene (:data:`SAMPLE_TILES`), or takes its cached choice. Doing it here, before the writers open,
lets the scene's COGs record what ran (``SCENEWATCH_BACKEND``: the backends the workers chose,
comma-separated) and keeps the measurement out of the tile loop's timings. A worker that joins later
settles on its first batch of tiles instead (its choice is logged there, not tagged).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence

import numpy as np
from distributed import Client, Future, wait

from pipeline.errors import crosses_processes
from pipeline.inference.read import SceneMeta, read_window
from pipeline.models.contract import BUILTIN_MODELS, ModelRef
from pipeline.models.loader import load_model
from pipeline.products import Tag
from tiles.grid import Tile, TileGrid
from workflows.packed import packed, run_packed

__all__ = ["SAMPLE_TILES", "backend_tags", "settle", "settle_backend"]

log = logging.getLogger("scenewatch")

SAMPLE_TILES = 6
"""Tiles the measurement runs on, spread over the scene: the timing uses the first, the drift check all of
them, and an int8 graph calibrated on the scene (a bundle without a variant) is calibrated on every other
and checked on the rest. Spread and 6, not the first 4: a fitted U-Net calibrated on 2 crops of one half of
the NAIP sample held out at 0.0026 but drifted 0.020 on the other half; on 3 crops spread over it, within
0.01 everywhere (tests/pipeline/models/test_int8.py)."""

MIN_VALID_FRACTION = 0.5
SCAN_TILES = 64  # tiles read at most, looking for SAMPLE_TILES with data


def _spread(tiles: Sequence[Tile], count: int) -> list[Tile]:
    """``count`` tiles evenly spaced through ``tiles`` (row-major, so over rows and columns), then the rest
    in order: the candidates to read until :data:`SAMPLE_TILES` have data."""
    if len(tiles) <= count:
        return list(tiles)
    picked = [tiles[(2 * i + 1) * len(tiles) // (2 * count)] for i in range(count)]
    return picked + [t for t in tiles if t not in picked]


# How often a settle task still pending checks that its worker is still in the cluster (seconds).
GONE_POLL_S = 1.0


def _gather_settled(dask: Client, futures: dict[str, Future]) -> list[tuple[str, str]]:
    """The results of the settle tasks pinned to each worker (``address -> future``), leaving out a worker
    that left the cluster before running its task: a task pinned to an address no worker has any more
    waits forever (a worker killed, by the OOM killer or a scene beside this one, and restarted by its
    nanny comes back at another address). A worker that joins later settles on its first batch of tiles.
    A task's own error (``KilledWorker`` included) still raises here."""
    waiting = list(futures.items())
    while True:
        with contextlib.suppress(TimeoutError):
            wait([f for _, f in waiting], timeout=GONE_POLL_S)
        waiting = [(address, f) for address, f in waiting if not f.done()]
        if not waiting:
            break
        live = dask.scheduler_info(n_workers=-1).get("workers", {})
        for address, future in waiting:
            if address not in live:
                log.debug("worker %s left before settling the model's backend; left out", address)
                future.cancel()
        waiting = [(address, f) for address, f in waiting if address in live]
    return [f.result() for f in futures.values() if not f.cancelled()]


@crosses_processes
def settle_backend(meta: SceneMeta, grid: TileGrid, indexes: tuple[int, ...], ref: ModelRef) -> str:
    """The backend's name (see :func:`settle`)."""
    return settle(meta, grid, indexes, ref)[0]


@crosses_processes
def settle(meta: SceneMeta, grid: TileGrid, indexes: tuple[int, ...], ref: ModelRef) -> tuple[str, str]:
    """In a worker: load the model (cached for the tiles that follow) and settle ``auto`` on
    :data:`SAMPLE_TILES` full-size tiles spread over the scene, each with at least half its pixels valid;
    the backend's name, or "" for a model that has no backends (a spectral index, a model of the user's
    own), and the one line that says why (what auto measured; "" for an explicit precision)."""
    model = load_model(ref)
    choose = getattr(model, "choose_backend", None)
    if choose is None:
        return "", ""
    if not getattr(model, "choosing", False):  # an explicit precision: nothing to measure
        return str(getattr(model, "backend", "")), ""
    full = (grid.tile_size + 2 * grid.halo,) * 2
    tiles = [grid.tile(i // grid.cols, i % grid.cols) for i in range(len(grid))]
    whole = [t for t in tiles if (t.read_window.height, t.read_window.width) == full]
    samples: list[np.ndarray] = []
    warm = getattr(model, "settle_from_cache", None)  # a cached choice checked on the first sample alone
    for tile in _spread(whole, 2 * SAMPLE_TILES)[:SCAN_TILES]:
        data, valid = read_window(meta, tile.read_window, indexes)
        if valid.mean() >= MIN_VALID_FRACTION:
            samples.append(data)
            if len(samples) == 1 and warm is not None and warm(data[None]):
                break
        if len(samples) == SAMPLE_TILES:
            break
    largest: np.ndarray | None = None  # a scene without a full-size tile (smaller than two tiles) is settled
    if not samples:  # on its largest tile with data
        for tile in sorted(tiles, key=lambda t: -t.read_window.height * t.read_window.width)[:SCAN_TILES]:
            data, valid = read_window(meta, tile.read_window, indexes)
            if valid.mean() >= MIN_VALID_FRACTION:
                largest = data
                break
    if samples:
        choose(np.stack(samples), max_samples=SAMPLE_TILES)
    elif largest is not None:
        choose(largest[None])
    else:  # a scene mostly without data: settled on its first batch instead
        return str(getattr(model, "backend", "")), ""
    choice = getattr(model, "choice", None)
    return str(getattr(model, "backend", "")), choice.summary() if choice is not None else ""


def backend_tags(dask: Client, meta: SceneMeta, grid: TileGrid, indexes: tuple[int, ...],
                 ref: ModelRef) -> dict[str, str]:
    """Settle the backend in every worker of ``dask`` (in parallel, one task each) and return the tag that
    records them, or nothing for a built-in model or a cluster with no workers yet."""
    if not ref.factory and ref.source in BUILTIN_MODELS:
        return {}
    workers: Sequence[str] = sorted(dask.scheduler_info(n_workers=-1).get("workers", {}))
    token = uuid.uuid4().hex[:8]
    task = packed(settle, meta, grid, indexes, ref)  # bytes to the scheduler (workflows.packed)
    futures = {w: dask.submit(run_packed, task, key=f"backend-{token}-{i}", pure=False, workers=[w],
                              allow_other_workers=False) for i, w in enumerate(workers)}
    settled = _gather_settled(dask, futures)
    for line in sorted({why for _, why in settled if why}):  # the workers' own log lines stay in the workers
        log.info("model %s: precision auto runs %s", ref.source if not ref.factory else ref.factory, line)
    names = sorted({name for name, _ in settled if name})
    return {Tag.BACKEND: ",".join(names)} if names else {}
