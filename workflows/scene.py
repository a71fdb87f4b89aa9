"""One scene, end to end: plan tiles, read and predict them in Dask workers, stitch and write COGs there too.

Data flow (module names in brackets)::

    scene header [pipeline.inference.read.open_scene] -> tile grid [tiles.grid]
      -> per batch of tiles, in a worker: read windows [pipeline.inference.read] -> model [pipeline.models.loader]
         -> weighted contributions [pipeline.inference.predict, tiles.blend]
      -> per piece (a tile high, a stripe wide, whole COG blocks), in a worker: blend the contributions of
         the tiles around it [pipeline.inference.stitch.Stitcher] -> classes and probabilities
         -> compressed COG blocks in a part file [pipeline.inference.assemble] -> halved for the level above
      -> per overview piece, in a worker: four halves of the level below -> blocks -> halved again
      -> per product, in a worker: the COG assembled from the blocks, copied byte for byte
         [pipeline.inference.assemble.assemble_cog] -> renamed into place

This process only submits tasks and follows them (:func:`_run`): no tile's pixels come here. Tiles go
out in stripes a few tiles wide, each top to bottom, one stripe per worker side by side (:func:`_batches`),
at most ``max_tiles_in_flight`` tiles ahead; a piece's task is submitted as soon as the predict tasks it
reads are, so a tile's contribution lives in a worker until the pieces around it are written (about a
column of tiles, as the single writer held before), and each piece task holds one piece.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, as_completed, fire_and_forget
from distributed import TimeoutError as DaskTimeoutError

from pipeline.atomic import atomic_path, output_folder, removed_if_left_empty, sweep_stale_temps, temp_path_for
from pipeline.colours import class_colours, colour_table
from pipeline.config import PredictConfig
from pipeline.errors import SceneTimeoutError, crosses_processes
from pipeline.inference.assemble import (
    BlockRef,
    CogSpec,
    assemble_cog,
    encode_blocks,
    part_path,
    remove_parts,
    write_part,
)
from pipeline.inference.masks import BoundMask, bind_mask
from pipeline.inference.overviews import reduce2
from pipeline.inference.predict import TileInput, predict_tiles
from pipeline.inference.read import SceneMeta, open_scene, parse_band_map, read_window, resolve_bands, use_read_cache
from pipeline.inference.stitch import Stitcher, TileContribution
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
from tiles.grid import PixelWindow, Tile, TileGrid, aligned_tile_size, plan_tiles
from workflows.backends import backend_tags
from workflows.cluster import dask_client, run_on_workers, threads_per_model
from workflows.packed import packed, run_packed
from workflows.threshold import resolve_auto_threshold

__all__ = ["SceneResult", "ScenePlan", "plan_scene", "predict_scene"]

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
                      allow_vrt=config.allow_vrt, max_ratio=config.max_ratio, max_block_bytes=config.max_block_bytes,
                      source=config.source_options)  # a STAC item: its grid, resampling, remote settings
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
    when = meta.tags.get("STAC_DATETIME", "") if meta.sources else ""  # a STAC item: its acquisition day
    dated = {Tag.DATE: when[:10]} if re.fullmatch(r"\d{4}-\d{2}-\d{2}", when[:10]) else {}
    return ScenePlan(meta, ref, info, indexes, grid, overlap, config.blend, sid, config, {**dated, **(tags or {})},
                     mask)


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


# Widest stripe :func:`_stripe_tiles` widens to, in pixels (what 4 tiles of 1024 px, the widest stripes of
# the default, already hold: the block cache and a piece grow with it, not with the scene).
MAX_STRIPE_PX = 4096


def _stripe_tiles(size: int, grid: TileGrid | None = None, lanes: int = 1) -> int:
    """Tiles across a stripe for batches of ``size`` tiles: :data:`STRIPE_TILES`, or ``size`` if wider.

    Given the ``grid`` and the ``lanes`` (workers) that walk it, a multiple of that, up to
    :data:`MAX_STRIPE_PX`, where the grid's columns split into whole groups of that many equal stripes
    (8192 px of 512 px tiles on 2 workers: 2 stripes of 8, not 4 of 4). A tile at a stripe's side reads the
    block beside it for its halo, which the next stripe's worker decodes again: each border between stripes
    costs two block columns decoded twice (8192² U-Net: 1.375 block decodes a tile at 4 tiles a stripe,
    1.125 at 8; a tile read 13-14 ms against 11-12 ms), and the contributions there travel to the other
    worker's piece task."""
    base = max(STRIPE_TILES, size)
    if grid is None or lanes < 2:
        return base
    widest = base
    for width in range(2 * base, MAX_STRIPE_PX // grid.tile_size + 1, base):
        if grid.cols % (width * lanes) == 0:
            widest = width
    return widest


# The height, in pixels, of the band of tile rows a group of side-by-side stripes walks before the next group
# takes over (where a scene is wider than one stripe per lane). The results at a border between groups wait
# for the group beside them: with each group walked the scene's whole height, a 16384² U-Net's workers held a
# border's 4-tile results (about 10 MB each) for 32 tile rows, 490 -> 820 MB each over the first group, and a
# taller scene held more. A band bounds it by its own height. Each stripe then decodes the block row above a
# band again for its halo.
BAND_PX = 4096


def _batches(grid: TileGrid, size: int, lanes: int = 1, stripe: int | None = None,
             band: int | None = None) -> Iterator[tuple[int, list[Tile]]]:
    """``(lane, batch)``: batches of up to ``size`` neighbouring tiles of one row, stripe by stripe
    (``stripe`` columns, default :func:`_stripe_tiles`), each stripe top to bottom, a band of ``band`` tile
    rows (default :data:`BAND_PX`) at a time.

    ``lanes`` stripes are walked side by side, a row of each in turn, and every batch carries the lane of its
    stripe (0 to ``lanes - 1``): :func:`_run` sends a lane to one worker, so that the blocks the tiles of a
    stripe share are decoded in one worker's cache. Handed out tile by tile instead, two workers each
    decoded most blocks of the stripe (15 ms of reading per 576 px tile against 8-10 ms, one worker reading
    a whole stripe). A scene wider than ``lanes`` stripes is walked band by band, each band group by group;
    one group of stripes is walked top to bottom whatever the band."""
    stripe = stripe or _stripe_tiles(size)
    band = band or max(1, BAND_PX // grid.tile_size)
    starts = list(range(0, grid.cols, stripe))
    for top in range(0, grid.rows, band):
        for group in range(0, len(starts), lanes):
            for row in range(top, min(top + band, grid.rows)):
                for lane, col0 in enumerate(starts[group : group + lanes]):
                    tiles = [grid.tile(row, col) for col in range(col0, min(col0 + stripe, grid.cols))]
                    for i in range(0, len(tiles), size):
                        yield lane, tiles[i : i + size]


def _class_colormap(info: ModelInfo) -> dict[int, tuple[int, int, int, int]]:
    """The model's class colours (or pipeline.colours' fallback for a model without them), nodata
    transparent: every class raster opens coloured, and the layers vectorized from it take these colours."""
    return colour_table(class_colours(info.class_names, info.class_colors), CLASS_NODATA)


def _specs(plan: ScenePlan, proba_dtype: str) -> dict[str, CogSpec]:
    """The two products' COGs, as their directories describe them: classes (mode overviews, colours) and
    probabilities (average overviews, uint8 with a scale or float32 with NaN nodata)."""
    info, meta = plan.info, plan.meta
    tags = {**model_tags(info.name, info.version), Tag.SCENE: plan.scene_id, **class_tags(info.class_names),
            **plan.tags}
    uint8 = proba_dtype == "uint8"
    grid = {"crs": meta.crs, "transform": meta.transform, "height": meta.height, "width": meta.width,
            "tags": tags}
    return {
        "classes": CogSpec(**grid, count=1, dtype="uint8", nodata=CLASS_NODATA, resampling="mode",
                           descriptions=("class",), colormap=_class_colormap(info)),
        "proba": CogSpec(**grid, count=info.num_classes, dtype=proba_dtype,
                         nodata=PROBA_UINT8_NODATA if uint8 else float("nan"), resampling="average",
                         descriptions=tuple(f"p({c})" for c in info.class_names),
                         scales=(1.0 / PROBA_UINT8_SCALE,) * info.num_classes if uint8 else None),
    }


@dataclass(frozen=True, slots=True)
class _Piece:
    """What a piece task hands on: where its blocks, and those of the pieces below it, are stored
    (``(product, level, block row, block column)``), the tiles without data it counted, and its level
    halved for the piece above it (None at the coarsest level)."""

    blocks: dict[tuple[str, int, int, int], BlockRef]
    skipped: int
    halves: dict[str, np.ndarray] | None


def _write_piece(specs: Mapping[str, CogSpec], level: int, window: PixelWindow, arrays: Mapping[str, np.ndarray],
                 out_dir: Path | None, token: str) -> tuple[dict[tuple[str, int, int, int], BlockRef],
                                                            dict[str, np.ndarray] | None]:
    """Compress ``arrays`` (one per product, covering ``window`` of ``level``) into a part file and halve
    them for the level above, unless ``level`` is the coarsest. ``out_dir`` None (workers that do not share
    the client's disk): the compressed blocks themselves are the references, carried in the task result."""
    blocks: dict[tuple[str, int, int, int], bytes] = {}
    for name, spec in specs.items():
        size = spec.block_size
        cols = -(-window.width // size)
        for i, data in enumerate(encode_blocks(spec, arrays[name])):
            blocks[name, level, window.row_off // size + i // cols, window.col_off // size + i % cols] = data
    refs: dict[Any, BlockRef] = dict(blocks) if out_dir is None else write_part(
        part_path(out_dir, token, f"L{level}-{window.row_off}-{window.col_off}"), blocks,
        owner=token.rsplit(".", 1)[0])  # errors name the scene (its id), not the part file
    coarsest = len(next(iter(specs.values())).factors)
    halves = None if level == coarsest else {
        name: reduce2(arrays[name], spec.resampling, spec.nodata) for name, spec in specs.items()}
    return refs, halves


@crosses_processes
def _stitch_piece(specs: Mapping[str, CogSpec], window: PixelWindow, grid: TileGrid, overlap: int,
                  num_classes: int, batches: Sequence[Sequence[Tile]],
                  results: Sequence[Sequence[TileContribution | None]], out_dir: Path | None, token: str
                  ) -> _Piece:
    """The Dask task of a full-resolution piece: blend the cores that reach ``window`` from the contributions
    of the tiles around them (:class:`Stitcher`), then compress and halve it (:func:`_write_piece`)."""
    proba_spec = specs["proba"]
    cores = {t.index for t in grid.tiles_touching(window)}
    stitcher = Stitcher(grid, overlap, num_classes, proba_spec.dtype, cores)
    needed = {n.index for t in grid.tiles_touching(window) for n in stitcher.covered_cores(t)}
    classes = np.full((1, window.height, window.width), CLASS_NODATA, dtype=np.uint8)
    proba = np.full((num_classes, window.height, window.width), proba_spec.nodata, dtype=proba_spec.dtype)
    skipped = 0
    for tiles, contributions in zip(batches, results, strict=True):
        for tile, contribution in zip(tiles, contributions, strict=True):
            if tile.index not in needed:
                continue
            # a tile is counted by the piece its core's first pixel lies in
            skipped += contribution is None and tile.index in cores and window.intersection(
                PixelWindow(tile.core_window.row_off, tile.core_window.col_off, 1, 1)) is not None
            for done in stitcher.add(tile, contribution):
                part = done.tile.core_window.intersection(window)
                assert part is not None
                src_r, src_c = part.relative_to(done.tile.core_window)
                dst_r, dst_c = part.relative_to(window)
                classes[0, dst_r, dst_c] = done.classes[src_r, src_c]
                proba[:, dst_r, dst_c] = done.proba[:, src_r, src_c]
    blocks, halves = _write_piece(specs, 0, window, {"classes": classes, "proba": proba}, out_dir, token)
    return _Piece(blocks, skipped, halves)


@crosses_processes
def _reduce_piece(specs: Mapping[str, CogSpec], level: int, window: PixelWindow,
                  children: Sequence[tuple[int, int, _Piece]], out_dir: Path | None, token: str) -> _Piece:
    """The Dask task of an overview piece: the halves of up to four pieces of the level below (``(row
    offset, column offset, piece)`` in ``window``), put side by side, compressed and halved again."""
    arrays = {}
    for name, spec in specs.items():
        out = np.empty((spec.count, window.height, window.width), dtype=spec.dtype)
        for row, col, child in children:
            assert child.halves is not None
            half = child.halves[name]
            out[:, row:row + half.shape[1], col:col + half.shape[2]] = half
        arrays[name] = out
    blocks, halves = _write_piece(specs, level, window, arrays, out_dir, token)
    for _, _, child in children:
        blocks |= child.blocks
    return _Piece(blocks, sum(child.skipped for _, _, child in children), halves)


@crosses_processes
def _assemble(spec: CogSpec, name: str, root: _Piece, path: Path) -> int:
    """The Dask task that writes one product's COG from the blocks of every piece; returns the tiles
    without data that the pieces counted."""
    assemble_cog(spec, {key[1:]: ref for key, ref in root.blocks.items() if key[0] == name}, path)
    return root.skipped


@crosses_processes
def _assemble_bytes(spec: CogSpec, name: str, root: _Piece) -> tuple[int, bytes]:
    """:func:`_assemble` for workers that do not share the client's disk: the COG is assembled in the
    worker's own temporary folder and its bytes go back as the result, for the client to write."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="scenewatch-cog-") as tmp:
        path = Path(tmp) / f"{name}.tif"
        assemble_cog(spec, {key[1:]: ref for key, ref in root.blocks.items() if key[0] == name}, path)
        return root.skipped, path.read_bytes()


def workers_share_disk(dask: Client, folder: Path) -> bool:
    """Whether every worker sees ``folder`` as this process does (a LocalCluster, a shared file system):
    a probe file written here must exist for each of them. Where one does not (a cluster of machines with
    local disks), pieces travel as task results and the COGs are written here (:func:`_assemble_bytes`)."""
    probe = temp_path_for(folder / "workers-probe")
    probe.write_bytes(b"")
    try:
        seen = run_on_workers(dask, os.path.isfile, str(probe))  # a worker dying meanwhile: left out
    finally:
        probe.unlink(missing_ok=True)
    return bool(seen) and all(seen.values())


def _piece_size(grid: TileGrid, stripe: int, block: int) -> tuple[int, int]:
    """Rows and columns of a full-resolution piece: a tile's height and a stripe's width (the tiles a lane
    walks, :func:`_batches`), each rounded up to whole COG blocks."""
    def whole(px: int) -> int:
        return -(-px // block) * block

    return whole(grid.tile_size), whole(stripe * grid.tile_size)


def predict_scene(plan: ScenePlan, out_dir: str | Path = ".", *, client: Client | None = None,
                  progress: bool | None = None, preload: Sequence[str] = ()) -> SceneResult:
    """Segment a planned scene into ``<out_dir>/<scene>.classes.tif`` and ``<scene>.proba.tif`` (COGs).

    ``plan`` comes from :func:`plan_scene`. Runs on ``client`` if given, else on ``plan.config.scheduler``
    if set, else on a new LocalCluster of ``plan.config.workers`` processes. Workers write the COGs (into
    ``out_dir``, which they must see as this process does).

    ``preload``: modules that a pass run next on the same cluster needs (``("workflows.vectorize",)`` when
    polygons follow). They are imported while the scene ends, when the cores would otherwise idle: by each
    worker once it has nothing else to do (its lane of tiles done; :func:`_preload_in_workers`) and by this
    process once the last tile is done, so that the next pass starts without importing them (8192² U-Net:
    about 0.25 s of CPU in each process, on the path from the COGs to the first polygons).

    Example::

        from pipeline.config import PredictConfig
        from workflows.scene import plan_scene, predict_scene

        result = predict_scene(plan_scene("naip.tif", "vegetation", PredictConfig(bands="naip")), "out/")
        result.classes_path, result.proba_path
    """
    started = time.perf_counter()
    config = plan.config
    out_dir = Path(out_dir)
    token = f"{plan.scene_id}.{uuid.uuid4().hex[:8]}"  # names this run's keys and part files
    with removed_if_left_empty(out_dir):  # a failed first run leaves no empty folder behind
        output_folder(out_dir)
        sweep_stale_temps(out_dir)  # what a killed run of this host left here
        try:
            with dask_client(config.workers, config.scheduler, client, model=plan.model) as dask:
                plan = resolve_auto_threshold(plan, dask)  # threshold=auto: one histogram pass (workflows.threshold)
                ref = plan.model if plan.model.threads else plan.model.with_threads(threads_per_model(dask))
                # precision auto settled in every worker first, and recorded in the COGs' tags
                plan = dataclasses.replace(plan, tags={**plan.tags, **backend_tags(
                    dask, plan.meta, plan.grid, plan.band_indexes, ref)})
                timings = _run(dask, plan, ref, config, out_dir, progress, token, tuple(preload))
        finally:
            remove_parts(out_dir, token)  # after the cluster: no task of this run writes one any more
    skipped = int(timings.pop("tiles_skipped"))
    result = SceneResult(
        scene=plan.scene, scene_id=plan.scene_id, classes_path=classes_path(out_dir, plan.scene_id),
        proba_path=proba_path(out_dir, plan.scene_id), tiles_planned=len(plan.grid), tiles_skipped=skipped,
        seconds=time.perf_counter() - started, model=plan.info, grid=plan.grid, extra=timings,
    )
    log.info("scene %s: %d tiles (%d without data) in %.1f s; the COGs were finished %.1f s after the last "
             "tile", plan.scene_id, result.tiles_planned, skipped, result.seconds, timings["finishing_seconds"])
    return result


@dataclass(slots=True)
class _PieceJob:
    """A piece not yet submitted: its task's arguments and how many of its inputs are not yet submitted."""

    level: int
    window: PixelWindow
    waiting: int
    inputs: list[Any] = field(default_factory=list)  # predict batch numbers (level 0) or child positions
    children: list[tuple[int, int, Any]] = field(default_factory=list)  # (row, col, future) of level > 0


def _piece_plan(grid: TileGrid, specs: Mapping[str, CogSpec], stitcher: Stitcher, batches: Sequence[Sequence[Tile]],
                piece: tuple[int, int], rank: Sequence[int] | None = None
                ) -> tuple[list[dict[tuple[int, int], _PieceJob]], dict[int, list[_PieceJob]]]:
    """The pieces of every level (``(row, col)`` -> job) and, per predict batch, the full-resolution pieces
    that read its tiles. A piece reads its batches in the order of ``rank`` (default: as given), which is
    the order its blend adds their tiles in: floating-point sums depend on it."""
    spec = specs["classes"]
    rank = range(len(batches)) if rank is None else rank
    batch_of = {t.index: i for i, tiles in enumerate(batches) for t in tiles}
    levels: list[dict[tuple[int, int], _PieceJob]] = []
    readers: dict[int, list[_PieceJob]] = {}
    for level in range(len(spec.factors) + 1):
        rows, cols = spec.level_shape(level)
        jobs = {}
        for i in range(-(-rows // piece[0])):
            for j in range(-(-cols // piece[1])):
                window = PixelWindow(i * piece[0], j * piece[1], min(piece[0], rows - i * piece[0]),
                                     min(piece[1], cols - j * piece[1]))
                job = jobs[i, j] = _PieceJob(level, window, 0)
                if level == 0:
                    needed = {n.index for t in grid.tiles_touching(window) for n in stitcher.covered_cores(t)}
                    job.inputs = sorted({batch_of[index] for index in needed}, key=rank.__getitem__)
                    for b in job.inputs:
                        readers.setdefault(b, []).append(job)
                else:
                    below = levels[-1]
                    job.inputs = [(di, dj) for di in (0, 1) for dj in (0, 1) if (2 * i + di, 2 * j + dj) in below]
                job.waiting = len(job.inputs)
        levels.append(jobs)
    return levels, readers


def _run(dask: Client, plan: ScenePlan, ref: ModelRef, config: PredictConfig, out_dir: Path,
         progress: bool | None, token: str, preload: tuple[str, ...] = ()) -> dict[str, float]:
    """Submit the graph of a scene and follow it; returns tiles skipped and the seconds between the last
    tile's result and the COGs in place.

    Predict tasks go out as before (stripes, lanes, at most ``max_tiles_in_flight`` tiles ahead); each piece
    task (:func:`_stitch_piece`, then :func:`_reduce_piece` up the overview levels) is submitted as soon as
    the tasks it reads are, and Dask runs it where its inputs are once they are done; the two
    :func:`_assemble` tasks end the graph. This process holds futures only: no pixel comes here. Every task
    goes packed (:mod:`workflows.packed`), so the scheduler imports none of the modules the tasks need."""
    from tqdm import tqdm

    overlap = 0 if plan.blend == "none" else plan.overlap
    stitcher = Stitcher(plan.grid, overlap, plan.info.num_classes, config.proba_dtype)
    specs = _specs(plan, config.proba_dtype)
    # one lane of stripes per worker, each pinned to it loosely (Dask may still move a task to an idle worker)
    workers = sorted(dask.scheduler_info(n_workers=-1).get("workers", {}))
    every_worker = list(workers)
    task_size = max(config.batch_size, TILES_PER_TASK)
    # tiles in flight (default: two tasks per worker, one running and one waiting), as tasks
    tiles_in_flight = config.max_tiles_in_flight or 2 * task_size * max(1, len(workers))
    in_flight = max(1, -(-tiles_in_flight // task_size))
    stripe = _stripe_tiles(task_size, plan.grid, len(workers))
    lanes = min(len(workers), -(-plan.grid.cols // stripe))
    if lanes <= 1:
        workers = []  # one stripe at a time: Dask places every task, nothing is pinned
    batches = list(_batches(plan.grid, task_size, max(1, lanes), stripe))
    # a piece blends its tiles in the order of a walk without bands, which made the products' bytes before
    walk = _batches(plan.grid, task_size, max(1, lanes), stripe, band=plan.grid.rows)
    first = {tiles[0].index: n for n, (_, tiles) in enumerate(walk)}
    rank = [first[tiles[0].index] for _, tiles in batches]
    stripe_px = stripe * plan.grid.tile_size + 2 * plan.grid.halo
    piece = _piece_size(plan.grid, stripe, specs["classes"].block_size)
    levels, readers = _piece_plan(plan.grid, specs, stitcher, [tiles for _, tiles in batches], piece, rank)
    pending = as_completed(timeout=config.timeout)  # the scene's time budget, from now
    predicts: dict[int, Any] = {}  # batch number -> future, until every piece reading it is submitted
    tiles_of: dict[str, int] = {}  # predict key -> tiles, for the progress bar
    finals: list[Any] = []
    shared = workers_share_disk(dask, out_dir)
    part_dir = out_dir if shared else None  # else the blocks travel in the task results
    inline: list[Path] = []  # no shared disk: where this process writes each COG the workers return
    preloads: list[Any] = []  # the workers' preload tasks, once the last tiles are out
    submitted = 0

    def submit_piece(job: _PieceJob) -> None:
        where = f"{token}-{job.level}-{job.window.row_off}-{job.window.col_off}"
        if job.level == 0:
            stitch = functools.partial(_stitch_piece, specs, job.window, plan.grid, overlap, plan.info.num_classes,
                                       [batches[b][1] for b in job.inputs])
            fut = dask.submit(run_packed, packed(stitch, part_dir, token), [predicts[b] for b in job.inputs],
                              key=f"piece-{where}", pure=False)
            for b in job.inputs:
                readers[b].remove(job)
                if not readers[b]:
                    del predicts[b]  # Dask keeps the result while a piece task still needs it
        else:
            reduce = functools.partial(_reduce_piece, specs, job.level, job.window)
            fut = dask.submit(run_packed, packed(reduce, part_dir, token), list(job.children), key=f"piece-{where}",
                              pure=False)
            job.children.clear()
        if job.level + 1 == len(levels):  # the top: one piece, then the two COGs
            for name, spec in specs.items():
                path = (classes_path if name == "classes" else proba_path)(out_dir, plan.scene_id)
                if shared:
                    task = packed(functools.partial(_assemble, spec, name), path)
                else:
                    task = packed(functools.partial(_assemble_bytes, spec, name))
                    inline.append(path)
                final = dask.submit(run_packed, task, fut, key=f"assemble-{token}-{name}", pure=False)
                finals.append(final)
                pending.add(final)
            return
        i, j = job.window.row_off // piece[0], job.window.col_off // piece[1]
        parent = levels[job.level + 1][i // 2, j // 2]
        parent.children.append(((i % 2) * piece[0] // 2, (j % 2) * piece[1] // 2, fut))
        parent.waiting -= 1
        if parent.waiting == 0:
            submit_piece(parent)

    def submit_next() -> bool:
        nonlocal submitted
        if submitted == len(batches):
            return False
        lane, tiles = batches[submitted]
        task = packed(_predict_batch, plan.meta, tiles, plan.band_indexes, ref, plan.grid, plan.overlap, plan.blend,
                      config.proba_dtype, stripe_px, config.batch_size, plan.mask)
        fut = dask.submit(run_packed, task, pure=False, key=f"predict-{token}-{tiles[0].row}-{tiles[0].col}",
                          **({"workers": [workers[lane]], "allow_other_workers": True} if workers else {}))
        predicts[submitted] = fut
        tiles_of[fut.key] = len(tiles)
        pending.add(fut)
        for job in list(readers.get(submitted, ())):
            job.waiting -= 1
            if job.waiting == 0:
                submit_piece(job)
        submitted += 1
        if submitted == len(batches) and preload:
            preloads.extend(_preload_in_workers(dask, every_worker, preload, token))
        return True

    bar = tqdm(total=len(plan.grid), desc=f"{plan.scene_id}", unit="tile", disable=None if progress is None
               else not progress, leave=False)
    last_tile = time.perf_counter()
    with bar:
        try:
            for _ in range(in_flight):
                if not submit_next():
                    break
            for fut in pending:
                if fut.status == "error":
                    fut.result()  # raises the task's error here
                if fut.key in tiles_of:
                    bar.update(tiles_of.pop(fut.key))
                    submit_next()
                    last_tile = time.perf_counter()
                    if preload and not tiles_of and submitted == len(batches):
                        # every tile done: what is left (the last pieces, the overviews, the assembly) keeps
                        # a core or so busy, and this process only waits
                        _import_beside(preload)
            skipped = finals[0].result()
            if not shared:
                skipped = skipped[0]
                for path, final in zip(inline, finals, strict=True):
                    with atomic_path(path) as tmp:
                        tmp.write_bytes(final.result()[1])
        except BaseException as err:
            _stop(dask, [*pending.futures, *predicts.values(), *finals, *preloads], token)
            if isinstance(err, DaskTimeoutError):
                raise SceneTimeoutError(f"scene {plan.scene_id}: not finished after {config.timeout:g} s, the "
                                        "scene's `timeout`; stopped (raise it for scenes this large)") from err
            raise
    for fut in preloads:
        fire_and_forget(fut)  # a worker busy to the end imports before the next pass's first task reaches it
    return {"tiles_skipped": skipped, "finishing_seconds": time.perf_counter() - last_tile}


def _import_modules(modules: Sequence[str]) -> None:
    """Import ``modules`` ahead of the pass that needs them. An error is left for that pass's own import to
    raise, where it is reported: this is only its head start."""
    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _import_beside(modules: Sequence[str]) -> None:
    """:func:`_import_modules` in a thread of this process, so that whatever this process runs meanwhile (a
    worker: its next task) is not held up."""
    threading.Thread(target=_import_modules, args=(tuple(modules),), name="scenewatch-preload", daemon=True).start()


@crosses_processes
def _preload(modules: Sequence[str]) -> None:
    """The Dask task that starts importing ``modules`` in a worker (:func:`_import_beside`) and returns."""
    _import_beside(modules)


def _preload_in_workers(dask: Client, workers: Sequence[str], modules: Sequence[str], token: str) -> list[Any]:
    """One :func:`_preload` task per worker, submitted as the last tiles go out, pinned to its worker and of
    the lowest priority: it starts once that worker has nothing else ready (its lane of tiles done), and the
    import runs beside the worker's later tasks (the pieces and the assembly that end the scene) rather than
    before them, on the core that worker's lane leaves idle. As a task of its own, it took that worker's
    slot for the whole import, and a piece that became ready meanwhile waited for it."""
    task = packed(_preload, tuple(modules))
    return [dask.submit(run_packed, task, key=f"preload-{token}-{n}", workers=[address], allow_other_workers=False,
                        priority=-1, pure=False) for n, address in enumerate(workers)]


# How long a stopped run waits for its tasks already running on workers (a piece or an assembly, seconds
# each), so that none of them writes a part file after the run has removed them.
STOP_WAIT_S = 60.0


def _stop(dask: Client, futures: Sequence[Any], token: str) -> None:
    """Cancel this run's tasks and wait until none of them runs on a worker any more."""
    with contextlib.suppress(Exception):
        dask.cancel(list(futures))
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        try:
            running = [k for keys in dask.processing().values() for k in keys if token in str(k)]
        except Exception:  # noqa: BLE001 - a cluster going away: nothing runs there any more
            return
        if not running:
            return
        time.sleep(0.1)
