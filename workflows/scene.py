"""One scene, end to end: plan tiles, read and predict them in Dask workers, stitch and write COGs.

Data flow (module names in brackets)::

    scene header [pipeline.inference.read.open_scene] -> tile grid [tiles.grid]
      -> per batch of tiles, in a worker: read windows [pipeline.inference.read] -> model [pipeline.models.loader]
         -> weighted contributions [pipeline.inference.predict, tiles.blend]
      -> in this process, as results arrive: blend [pipeline.inference.stitch.Stitcher] -> classes and probabilities
         -> written window by window [pipeline.inference.raster.CogWriter] -> COG, renamed into place

Workers send each tile's contribution here once; this process blends the cores whose neighbours are all
in and writes them straight away, so it never holds more than about a column of cores (tiles go out in
stripes a few tiles wide, each top to bottom, one stripe per worker side by side: :func:`_batches`), and at most
``max_tiles_in_flight`` tiles are submitted ahead of what has been written (backpressure keeps memory
bounded by tiles in flight, not by scene size).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, as_completed
from distributed import TimeoutError as DaskTimeoutError

from pipeline.atomic import output_folder, removed_if_left_empty, sweep_stale_temps
from pipeline.colours import class_colours, colour_table
from pipeline.config import PredictConfig
from pipeline.errors import SceneTimeoutError, crosses_processes
from pipeline.inference.masks import BoundMask, bind_mask
from pipeline.inference.predict import TileInput, predict_tiles
from pipeline.inference.raster import CogWriter
from pipeline.inference.read import SceneMeta, open_scene, parse_band_map, read_window, resolve_bands, use_read_cache
from pipeline.inference.stitch import Stitcher, TileContribution, decode_proba
from pipeline.models.contract import ModelInfo, ModelRef
from pipeline.models.loader import describe_model, load_model
from pipeline.names import safe_name
from pipeline.names import scene_id as make_scene_id
from pipeline.products import (
    CLASS_NODATA,
    PROBA_UINT8_NODATA,
    PROBA_UINT8_SCALE,
    Tag,
    class_tags,
    classes_path,
    model_tags,
    proba_path,
)
from tiles.blend import BlendMethod
from tiles.grid import Tile, TileGrid, aligned_tile_size, plan_tiles
from workflows.cluster import dask_client, threads_per_model
from workflows.threshold import resolve_auto_threshold

__all__ = ["SceneResult", "ScenePlan", "plan_scene", "predict_scene", "StitchedCore"]

log = logging.getLogger("scenewatch")


@dataclass(frozen=True, slots=True)
class ScenePlan:
    """Everything decided before the first pixel is read: the value :func:`predict_scene` runs.

    Made once by :func:`plan_scene`, which opens the scene's header and reads the model's description;
    nothing downstream parses options or opens the header again."""

    meta: SceneMeta
    model: ModelRef
    info: ModelInfo
    band_indexes: tuple[int, ...]
    grid: TileGrid
    overlap: int
    blend: BlendMethod
    scene_id: str
    config: PredictConfig = PredictConfig()
    tags: Mapping[str, str] = field(default_factory=dict)  # extra tags for both rasters
    mask: BoundMask | None = None  # quality mask bound to the scene's bands (pipeline.inference.masks)

    @property
    def scene(self) -> str:
        return str(self.meta.path)


@dataclass(frozen=True, slots=True)
class StitchedCore:
    """One finished core: what later stages (vectorizing) receive as the raster is written."""

    tile: Tile
    classes: Any  # (rows, cols) uint8, CLASS_NODATA where invalid
    proba: Any  # (classes, rows, cols) float32, NaN where invalid


@dataclass(frozen=True, slots=True)
class SceneResult:
    scene: str
    scene_id: str
    classes_path: Path
    proba_path: Path
    tiles_planned: int
    tiles_skipped: int
    seconds: float
    model: ModelInfo
    grid: TileGrid
    extra: dict[str, Any] = field(default_factory=dict)


def plan_scene(scene: str | Path, model: str | os.PathLike[str] | ModelRef, config: PredictConfig = PredictConfig(), *,
               scene_id: str | None = None, tags: Mapping[str, str] | None = None) -> ScenePlan:
    """Check the scene and the model against each other and plan the tiles; reads no pixels.

    ``scene_id`` names the outputs (made safe); default: from the file name. ``tags`` are written into both
    rasters (e.g. ``SCENEWATCH_DATE``, the acquisition date a batch knows).

    Example::

        from pipeline.config import PredictConfig
        from workflows.scene import plan_scene, predict_scene

        plan = plan_scene("naip.tif", "vegetation", PredictConfig(bands="naip"))
        result = predict_scene(plan, "out/")
    """
    meta = open_scene(scene, max_pixels=config.max_pixels, assume_crs=config.assume_crs,
                      allow_vrt=config.allow_vrt, max_ratio=config.max_ratio, max_block_bytes=config.max_block_bytes)
    ref = ModelRef.of(model, precision=config.precision)
    info = describe_model(ref)
    band_map = parse_band_map(config.bands, meta)
    indexes = resolve_bands(meta, band_map, info.bands)
    mask = None
    if config.mask is not None:
        resolve_bands(meta, band_map, config.mask.bands)  # a mask band past the file's last is refused here
        mask = bind_mask(config.mask, band_map.indexes, config.mask_dilate, f"scene {meta.name}")
        tags = {Tag.MASK: str(config.mask) + (f" dilate={config.mask_dilate}" if config.mask_dilate else ""),
                **(tags or {})}
    tile_size = config.tile_size or info.tile_size
    if config.align_to_blocks:
        block_w = meta.block_width if meta.block_width < meta.width else 1
        tile_size = aligned_tile_size(tile_size, meta.block_height, block_w)
    halo = info.halo if config.halo is None else config.halo
    overlap = min(halo // 2 if config.overlap is None else config.overlap, halo)
    grid = plan_tiles(meta.height, meta.width, tile_size, halo)
    sid = make_scene_id(scene) if scene_id is None else safe_name(scene_id)
    return ScenePlan(meta, ref, info, indexes, grid, overlap, config.blend, sid, config, dict(tags or {}), mask)


@crosses_processes
def _predict_batch(meta: SceneMeta, tiles: Sequence[Tile], indexes: tuple[int, ...], ref: ModelRef,
                   grid: TileGrid, overlap: int, blend: BlendMethod, proba_dtype: str,
                   stripe_px: int, batch_size: int, mask: BoundMask | None = None) -> list[TileContribution | None]:
    """The Dask task: read some tiles in this worker and run the (cached) model on them, ``batch_size`` tiles
    per call. ``stripe_px`` is the width the tiles around these are read across (:func:`_batches`)."""
    model = load_model(ref)
    use_read_cache(meta, grid.halo, stripe_px)
    inputs = [TileInput(t, *read_window(meta, t.read_window, indexes, mask)) for t in tiles]
    return predict_tiles(model, inputs, grid, overlap, blend, proba_dtype, max_batch=batch_size)


# Tiles are submitted in vertical stripes this many tiles wide, each top to bottom. A tile with a halo
# reads blocks that the tiles beside and below it read again; walking a stripe down keeps those within
# three block rows of the stripe, which a worker's block cache holds whatever the scene's width (row by
# row over the whole width, the cache needed three block rows of the scene: 208 MiB per worker at 16384 px
# against 64 MiB at 4096 px). The writer then holds, instead of about a row of cores, about a column.
STRIPE_TILES = 4

# Tiles per Dask task (at least; one row of a stripe): each task costs the writing process, which also
# hosts the scheduler, about 4 ms of CPU and its worker about 3, whatever its size (no-op tasks, 2 workers),
# and each MB of result about 2 ms more there. Two tiles per task took 4-5 % less CPU per tile than one with
# an int8 U-Net on 2 cores (8192² scene: 174-185 ms against 182-197 ms, main process and workers together);
# four against two, A/B alternated on 2026-11-30: 170.7 and 170.3 ms against 172.9 and 173.8 (22.1-22.3 s
# against 22.5-22.7 s); NDVI 16384² 1-9 % faster, its peak 0.68 GiB against 0.60 (twice the tiles in
# flight). The model still gets ``batch_size`` tiles per call. A grid too narrow for a stripe of four per
# worker runs as one stripe whose rows Dask hands to whichever worker is free; narrowing tasks there
# instead made small scenes hold fewer tiles than large ones (NDVI 4096²: 0.56 GiB against 0.68), which
# reads as memory growing with the scene.
TILES_PER_TASK = 4


def _stripe_tiles(size: int) -> int:
    """Tiles across a stripe for batches of ``size`` tiles: :data:`STRIPE_TILES`, or ``size`` if wider."""
    return max(STRIPE_TILES, size)


def _batches(grid: TileGrid, size: int, lanes: int = 1, stripe: int | None = None) -> Iterator[tuple[int, list[Tile]]]:
    """``(lane, batch)``: batches of up to ``size`` neighbouring tiles of one row, stripe by stripe
    (``stripe`` columns, default :func:`_stripe_tiles`), each stripe top to bottom.

    ``lanes`` stripes are walked side by side, a row of each in turn, and every batch carries the lane of its
    stripe (0 to ``lanes - 1``): :func:`_run` sends a lane to one worker, so that the blocks the tiles of a
    stripe share are decoded in one worker's cache. Handed out tile by tile instead, two workers each
    decoded most blocks of the stripe (15 ms of reading per 576 px tile against 8-10 ms, one worker reading
    a whole stripe)."""
    stripe = stripe or _stripe_tiles(size)
    starts = list(range(0, grid.cols, stripe))
    for group in range(0, len(starts), lanes):
        for row in range(grid.rows):
            for lane, col0 in enumerate(starts[group : group + lanes]):
                tiles = [grid.tile(row, col) for col in range(col0, min(col0 + stripe, grid.cols))]
                for i in range(0, len(tiles), size):
                    yield lane, tiles[i : i + size]


def _class_colormap(info: ModelInfo) -> dict[int, tuple[int, int, int, int]]:
    """The model's class colours (or pipeline.colours' fallback for a model without them), nodata
    transparent: every class raster opens coloured, and the layers vectorized from it take these colours."""
    return colour_table(class_colours(info.class_names, info.class_colors), CLASS_NODATA)


@contextlib.contextmanager
def _writers(plan: ScenePlan, out_dir: Path, proba_dtype: str) -> Iterator[tuple[CogWriter, CogWriter]]:
    """The classes and probability writers, each aborted (staging files removed) if anything fails or the
    run is stopped before they finish, including while the second is being created."""
    info = plan.info
    tags = {**model_tags(info.name, info.version), Tag.SCENE: plan.scene_id, **class_tags(info.class_names),
            **plan.tags}
    uint8 = proba_dtype == "uint8"
    with (
        CogWriter(classes_path(out_dir, plan.scene_id), plan.meta, count=1, dtype="uint8",
                  nodata=CLASS_NODATA, resampling="mode", descriptions=["class"],
                  colormap=_class_colormap(info), tags=tags) as classes,
        CogWriter(proba_path(out_dir, plan.scene_id), plan.meta, count=info.num_classes,
                  dtype=proba_dtype, nodata=PROBA_UINT8_NODATA if uint8 else float("nan"),
                  resampling="average", descriptions=[f"p({c})" for c in info.class_names],
                  scales=[1.0 / PROBA_UINT8_SCALE] * info.num_classes if uint8 else None, tags=tags) as proba,
    ):
        yield classes, proba


def predict_scene(plan: ScenePlan, out_dir: str | Path = ".", *, client: Client | None = None,
                  progress: bool | None = None,
                  on_core: Callable[[StitchedCore], None] | None = None) -> SceneResult:
    """Segment a planned scene into ``<out_dir>/<scene>.classes.tif`` and ``<scene>.proba.tif`` (COGs).

    ``plan`` comes from :func:`plan_scene`. Runs on ``client`` if given, else on ``plan.config.scheduler``
    if set, else on a new LocalCluster of ``plan.config.workers`` processes. ``on_core`` is called here with
    every finished core, in completion order, as it is written.

    Example::

        from pipeline.config import PredictConfig
        from workflows.scene import plan_scene, predict_scene

        result = predict_scene(plan_scene("naip.tif", "vegetation", PredictConfig(bands="naip")), "out/")
        result.classes_path, result.proba_path
    """
    started = time.perf_counter()
    config = plan.config
    out_dir = Path(out_dir)
    with removed_if_left_empty(out_dir):  # a failed first run leaves no empty folder behind
        output_folder(out_dir)
        sweep_stale_temps(out_dir)  # what a killed run of this host left here
        with dask_client(config.workers, config.scheduler, client, model=plan.model) as dask:
            plan = resolve_auto_threshold(plan, dask)  # threshold=auto: one histogram pass (workflows.threshold)
            ref = plan.model if plan.model.threads else plan.model.with_threads(threads_per_model(dask))
            timings = _run(dask, plan, ref, config, out_dir, progress, on_core)
    skipped = int(timings.pop("tiles_skipped"))
    result = SceneResult(
        scene=plan.scene, scene_id=plan.scene_id, classes_path=classes_path(out_dir, plan.scene_id),
        proba_path=proba_path(out_dir, plan.scene_id), tiles_planned=len(plan.grid), tiles_skipped=skipped,
        seconds=time.perf_counter() - started, model=plan.info, grid=plan.grid, extra=timings,
    )
    log.info("scene %s: %d tiles (%d without data) in %.1f s; this process waited %.1f s for workers, "
             "blended and wrote for %.1f s, finished the COGs in %.1f s", plan.scene_id, result.tiles_planned,
             skipped, result.seconds, timings["waiting_seconds"], timings["writing_seconds"],
             timings["finishing_seconds"])
    return result


def _run(dask: Client, plan: ScenePlan, ref: ModelRef, config: PredictConfig, out_dir: Path,
         progress: bool | None, on_core: Callable[[StitchedCore], None] | None) -> dict[str, float]:
    """Submit, stitch and write; returns tiles skipped and where this process spent its time (seconds
    waiting for workers, blending and writing, finishing the COGs)."""
    from tqdm import tqdm

    stitcher = Stitcher(plan.grid, 0 if plan.blend == "none" else plan.overlap, plan.info.num_classes,
                        config.proba_dtype)
    # one lane of stripes per worker, each pinned to it loosely (Dask may still move a task to an idle worker)
    workers = sorted(dask.scheduler_info(n_workers=-1).get("workers", {}))
    task_size = max(config.batch_size, TILES_PER_TASK)
    # tiles in flight (default: two tasks per worker, one running and one waiting), as tasks
    tiles_in_flight = config.max_tiles_in_flight or 2 * task_size * max(1, len(workers))
    in_flight = max(1, -(-tiles_in_flight // task_size))
    stripe = _stripe_tiles(task_size)
    lanes = min(len(workers), -(-plan.grid.cols // stripe))
    if lanes <= 1:
        workers = []  # one stripe at a time: Dask places every task, nothing is pinned
    batches = _batches(plan.grid, task_size, max(1, lanes), stripe)
    stripe_px = stripe * plan.grid.tile_size + 2 * plan.grid.halo
    skipped = 0
    run_token = f"{plan.scene_id}-{uuid.uuid4().hex[:8]}"  # keys unique per run: one cluster, many scenes
    pending = as_completed(timeout=config.timeout)  # the scene's time budget, from now
    futures: dict[Any, list[Tile]] = {}

    def submit_next() -> bool:
        lane, tiles = next(batches, (0, None))
        if tiles is None:
            return False
        fut = dask.submit(_predict_batch, plan.meta, tiles, plan.band_indexes, ref, plan.grid, plan.overlap,
                          plan.blend, config.proba_dtype, stripe_px, config.batch_size, plan.mask, pure=False,
                          key=f"predict-{run_token}-{tiles[0].row}-{tiles[0].col}",
                          **({"workers": [workers[lane]], "allow_other_workers": True} if workers else {}))
        futures[fut] = tiles
        pending.add(fut)
        return True

    bar = tqdm(total=len(plan.grid), desc=f"{plan.scene_id}", unit="tile", disable=None if progress is None
               else not progress, leave=False)
    with bar, _writers(plan, out_dir, config.proba_dtype) as (classes_w, proba_w):
        try:
            for _ in range(in_flight):
                if not submit_next():
                    break
            busy = 0.0
            loop_start = time.perf_counter()
            for fut in pending:
                tiles = futures.pop(fut)
                contributions = fut.result()
                tick = time.perf_counter()
                fut.release()
                for tile, contribution in zip(tiles, contributions, strict=True):
                    skipped += contribution is None
                    for done in stitcher.add(tile, contribution):
                        classes_w.write(done.tile.core_window, done.classes)
                        proba_w.write(done.tile.core_window, done.proba)
                        if on_core is not None:
                            on_core(StitchedCore(done.tile, done.classes, decode_proba(done.proba)))
                bar.update(len(tiles))
                submit_next()
                busy += time.perf_counter() - tick
            loop = time.perf_counter() - loop_start
        except BaseException as err:
            for fut in futures:
                fut.cancel()
            if isinstance(err, DaskTimeoutError):
                raise SceneTimeoutError(f"scene {plan.scene_id}: not finished after {config.timeout:g} s, the "
                                        "scene's `timeout`; stopped (raise it for scenes this large)") from err
            raise
        tick = time.perf_counter()
        with ThreadPoolExecutor(max_workers=2) as pool:
            for finishing in [pool.submit(classes_w.finish), pool.submit(proba_w.finish)]:
                finishing.result()
    return {"tiles_skipped": skipped, "waiting_seconds": loop - busy, "writing_seconds": busy,
            "finishing_seconds": time.perf_counter() - tick}
