"""One class raster to polygon layers: per-tile vectorizing in Dask workers, seams merged, layers exported.

Data flow (module names in brackets)::

    class raster header [pipeline.inference.read.open_scene] -> tile grid [tiles.grid]
      -> per tile, in a worker: read its class (and probability) window [pipeline.vectors.vectorize]
         -> sieve -> label and polygonize -> split: interior polygons are finished there (measured,
            attributes [pipeline.vectors.measure, pipeline.vectors.export.feature_table]); border pieces come back
      -> in this process, in row-major order: which border pieces form one object [pipeline.vectors.merge.SeamGroups],
         from each tile's outline (classes and edge strips; the pieces themselves stay on the workers)
      -> per finished row of tiles, in a worker: those groups unioned beside their pieces
         [pipeline.vectors.merge.merge_groups] and turned into rows
      -> rows staged on disk [pipeline.vectors.export.LayerStager]: by the workers in part files where they
         see the output folder (this process keeps only their order and counts), else here
      -> each format written [pipeline.vectors.export], by a worker where the workers see the output folder,
         else here

No process holds the class raster: each task reads its own window. At most ``max_tiles_in_flight`` tasks
are ahead of the merge, which holds only the border pieces of about one row of tiles (in the workers; this
process holds their outlines); finished rows go to a staging file on disk, so memory does not grow with the
raster. What is left in this process per tile (an outline's union-find, staging the rows) is small next to
the unions it used to do here (docs/benchmarks.md: the client's share of the CPU with polygons). Tiles
go in batches, each one submission and one message back (:func:`_run`), so that what Dask costs this
process per message is paid per batch rather than per tile. Every task is sent packed
(:mod:`workflows.packed`): the scheduler, which unpickles the graphs it is sent, keeps their functions and
arguments as bytes and so never imports this module and its dependencies (about 0.6 s of CPU in a fresh one).

On a cluster whose workers do not see the raster's folder (machines with local disks only, found by the
probe of :func:`workflows.scene.workers_share_disk`), this process reads each tile's windows as it submits
the tile and sends them with the task (the classes, their mask and the probabilities as stored). Those
windows live as long as their task: the tiles in flight, and the tiles of about one row whose seams are open
(the scheduler keeps a finished task's arguments, to recompute it if its worker is lost). The layers are
then written here too, as the workers do not see the staging file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from distributed import Client, Future, wait

from pipeline.atomic import output_folder, removed_if_left_empty, sweep_stale_temps
from pipeline.config import VectorizeConfig
from pipeline.errors import ConfigError, InvalidSceneError, crosses_processes
from pipeline.inference.read import SceneMeta, open_scene
from pipeline.names import safe_name
from pipeline.products import Tag, class_names_from_tags, name_of
from pipeline.vectors.export import (
    Bounds,
    LayerSpec,
    LayerStager,
    StagedLayer,
    StagedPart,
    export_layer,
    feature_rows,
    stage_part,
    table_bounds,
)
from pipeline.vectors.measure import area_basis, pixel_size_m
from pipeline.vectors.merge import BorderOutline, Group, SeamGroups, merge_groups, outline, split_border
from pipeline.vectors.vectorize import (
    CorePieces,
    PolygonLimitError,
    StoredProba,
    keep_mask,
    own_class_stored,
    polygonize_core,
    read_class_window,
    read_stored_proba,
    sieve_classes,
)
from tiles.grid import PixelWindow, Tile, TileGrid, plan_tiles
from workflows.cluster import dask_client, worker_count
from workflows.packed import packed, run_packed
from workflows.scene import workers_share_disk

__all__ = ["VectorResult", "vectorize_scene", "class_names_of", "resolve_classes"]

log = logging.getLogger("scenewatch")

_DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d\d)-?(0[1-9]|1[0-2])-?(0[1-9]|[12]\d|3[01])(?!\d)")


@dataclass(frozen=True, slots=True)
class VectorResult:
    scene_id: str
    paths: dict[str, Path]  # format -> written file
    features: int
    tiles: int
    seconds: float
    grid: TileGrid


@dataclass(frozen=True, slots=True)
class _TileJob:
    """What every tile task needs (small and picklable)."""

    classes_path: str
    proba_path: str | None
    grid: TileGrid
    keep: tuple[int, ...] | None
    sieve: int
    max_polygons: int
    spec: LayerSpec
    inline: bool = False  # the workers cannot read the rasters: each task comes with its windows (_TileWindows)


@dataclass(frozen=True, slots=True)
class _TileWindows:
    """A tile's windows, read by this process for workers that cannot see the rasters: the classes over the
    core and its sieve halo, the probabilities over the core as stored, masks packed 8 pixels a byte (for
    uint8 probabilities of ``k`` classes, about ``1.1 * (1 + k)`` bytes a pixel travel)."""

    classes: np.ndarray
    valid: bytes
    proba: StoredProba | None  # its nodata mask packed too

    @classmethod
    def pack(cls, classes: np.ndarray, valid: np.ndarray, proba: StoredProba | None) -> _TileWindows:
        if proba is not None:
            proba = dataclasses.replace(proba, nodata=np.packbits(proba.nodata, axis=None))
        return cls(classes, np.packbits(valid, axis=None).tobytes(), proba)

    def unpack(self) -> tuple[np.ndarray, np.ndarray, StoredProba | None]:
        """``(classes, valid, proba)`` as read."""
        valid = _unpack_bits(self.valid, self.classes.shape)
        proba = self.proba
        if proba is not None:
            proba = dataclasses.replace(proba, nodata=_unpack_bits(proba.nodata.tobytes(), proba.data.shape))
        return self.classes, valid, proba


def _unpack_bits(bits: bytes, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    return np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=count).astype(bool).reshape(shape)


@dataclass(frozen=True, slots=True)
class _Border:
    """A tile's border pieces as its task returns them: kept on its worker until merged, and sent to the merge
    tasks of other workers with their polygons as flat coordinate arrays (:func:`shapely.to_ragged_array`),
    which Dask sends as buffers, rather than one pickled WKB string per polygon (the background object's
    pieces of half an 8192² scene, 1.2 M vertices: about 0.12 s to pickle and unpickle, against 0.03 s)."""

    core: CorePieces

    def __reduce__(self) -> tuple[Any, ...]:
        geometry = self.core.pieces.geometry
        if not len(geometry) or not np.all(shapely.get_type_id(geometry) == shapely.GeometryType.POLYGON):
            return _Border, (self.core,)
        _, xy, offsets = shapely.to_ragged_array(geometry)
        pieces = dataclasses.replace(self.core.pieces, geometry=np.empty(0, dtype=object))
        return _border_from_ragged, (dataclasses.replace(self.core, pieces=pieces), xy, offsets)


def _border_from_ragged(core: CorePieces, xy: np.ndarray, offsets: tuple[np.ndarray, ...]) -> _Border:
    geometry = shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, offsets)
    return _Border(dataclasses.replace(core, pieces=dataclasses.replace(core.pieces, geometry=geometry)))


def _class_read_window(job: _TileJob, tile: Tile) -> PixelWindow:
    """The window a tile's classes are read over: its core, plus the sieve's halo."""
    core = tile.core_window
    return core.expand(job.sieve, job.grid.bounds) if job.sieve > 1 else core


def _read_windows(job: _TileJob, tile: Tile) -> tuple[np.ndarray, np.ndarray, StoredProba | None]:
    """A tile's classes (core and sieve halo) and valid mask, and its probabilities as stored (core)."""
    classes, valid = read_class_window(job.classes_path, _class_read_window(job, tile))
    proba = read_stored_proba(job.proba_path, tile.core_window) if job.proba_path is not None else None
    return classes, valid, proba


@crosses_processes
def _vectorize_tile(job: _TileJob, tile: Tile, windows: _TileWindows | None = None,
                    part: Path | None = None) -> tuple[pa.Table | StagedPart, _Border]:
    """The Dask task: read one core (with a sieve halo), polygonize it, finish the interior polygons.
    ``windows``: what this process read for it, when the worker cannot read the rasters. ``part``: where
    the workers see the staging folder, the finished rows are staged in this part file and what was staged
    is returned in their place (:func:`pipeline.vectors.export.stage_part`)."""
    core = tile.core_window
    read = _class_read_window(job, tile)
    classes, valid, stored = _read_windows(job, tile) if windows is None else windows.unpack()
    if job.sieve > 1:
        # A group smaller than the sieve lies within `sieve` pixels of any core pixel it covers, so the
        # halo lets every such group be seen whole; groups cut by the halo edge are larger than the sieve.
        classes = sieve_classes(classes, valid, job.sieve)
        rows, cols = core.relative_to(read)
        classes, valid = classes[rows, cols], valid[rows, cols]
    keep = keep_mask(classes, valid, job.keep)
    proba = None
    if stored is not None:
        proba = own_class_stored(stored, classes)
    pieces = polygonize_core(classes, keep, core, job.grid.bounds, proba=proba, max_polygons=job.max_polygons)
    interior, border = split_border(pieces)
    table, bounds = feature_rows(interior, job.spec)
    if part is not None:  # kept on the worker until its border pieces are merged: what was staged, not the rows
        return stage_part([table], part, job.spec, [bounds]), _Border(border)
    return table, _Border(border)


def class_names_of(meta: SceneMeta) -> dict[int, str]:
    """Class value -> name from the raster's class-name tag (value = position)."""
    return {value: name for value, name in enumerate(class_names_from_tags(meta.tags)) if name}


def resolve_classes(wanted: Sequence[str | int] | None, names: Mapping[int, str], where: str) -> tuple[int, ...] | None:
    """Class values to keep from names or values; None keeps all."""
    if wanted is None:
        return None
    by_name = {n.lower(): v for v, n in names.items()}
    values: list[int] = []
    for item in wanted:
        text = str(item).strip()
        if text.lower() in by_name:
            values.append(by_name[text.lower()])
        elif re.fullmatch(r"-?\d+", text):
            values.append(int(text))
        else:
            known = ", ".join(f"{v}={n}" for v, n in names.items()) or "none named; use class values"
            raise ConfigError(f"{where}: no class named {text!r} (classes: {known})")
    return tuple(sorted(set(values)))


def _acquired(meta: SceneMeta, scene_id: str, given: dt.date | str | None) -> dt.date | None:
    """The acquisition date: as given, else a SCENEWATCH_ACQUIRED tag, else a date in the scene's name."""
    if isinstance(given, dt.date):
        return given
    text = given or meta.tags.get(Tag.ACQUIRED)
    if text:
        try:
            return dt.date.fromisoformat(str(text)[:10])
        except ValueError as err:
            raise ConfigError(f"acquisition date {text!r}: write it as YYYY-MM-DD") from err
    match = _DATE_IN_NAME.search(scene_id)
    if match is None:
        return None
    try:
        return dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


def _colour_table(path: Path, names: Mapping[int, str]) -> dict[int, str]:
    """The ``#rrggbb`` colour of each named class in the raster's colour table (none: empty)."""
    import rasterio

    with rasterio.open(path) as src:
        try:
            table = src.colormap(1)
        except ValueError:  # no colour table
            return {}
    return {v: "#{:02x}{:02x}{:02x}".format(*table[v][:3]) for v in names if v in table}


def _default_scene_id(path: Path, meta: SceneMeta) -> str:
    tag = meta.tags.get(Tag.SCENE)
    return safe_name(tag if tag else name_of(path))


def _threshold_column(tags: Mapping[str, str]) -> dict[str, str]:
    """The index threshold the raster was made with (``SCENEWATCH_THRESHOLD``: value, auto/fallback/fixed and
    why) as a ``threshold`` column, so the layer says how its classes were drawn."""
    return {"threshold": tags[Tag.THRESHOLD]} if tags.get(Tag.THRESHOLD) else {}


def vectorize_scene(classes_path: str | Path, out_dir: str | Path, config: VectorizeConfig = VectorizeConfig(), *,
                    proba_path: str | Path | None = None, scene_id: str | None = None,
                    acquired: dt.date | str | None = None, attributes: Mapping[str, Any] | None = None,
                    class_attributes: Mapping[str, Mapping[int, Any]] | None = None,
                    client: Client | None = None, progress: bool | None = None) -> VectorResult:
    """Turn a class raster into polygon layers ``<out_dir>/<scene_id>.<ext>``, one per ``config.formats``.

    ``config`` (a :class:`VectorizeConfig`; default: exact pixel-edge polygons of every class as a GeoPackage,
    2048 px tiles) says what is kept and how (``min_area`` in m², ``sieve`` in pixels, ``simplify`` in metres,
    ``classes`` by name, from the raster's SCENEWATCH_CLASSES tag, or value).
    ``proba_path``: the matching probability raster (band ``c`` = class ``c``) for the confidence columns;
    without it they are null. ``attributes``: constant columns added to every feature (e.g. both dates of a
    change product). ``class_attributes``: columns whose value depends on the class (column -> class value ->
    value, e.g. a timeline's ``first_detected`` dates; ``acquired`` there sets that column per class).
    ``scene_id`` and ``acquired`` default to the raster's tags or file name. The GeoPackage's default style
    takes the raster's colour table (the model's class colours, the change palette, ...), else
    :mod:`pipeline.colours`' colours for the class names.

    Raises :class:`pipeline.vectors.vectorize.PolygonLimitError` when the layer would exceed ``max_polygons``.

    Example::

        from pipeline.config import VectorizeConfig
        from workflows.vectorize import vectorize_scene

        config = VectorizeConfig(formats=("gpkg", "parquet"), classes=("vegetation",), min_area="0.1ha")
        result = vectorize_scene("out/naip.classes.tif", "out/", config, proba_path="out/naip.proba.tif")
    """
    started = time.perf_counter()
    cfg = config
    classes_path, out_dir = Path(classes_path), Path(out_dir)
    meta = open_scene(classes_path, max_pixels=cfg.max_pixels, assume_crs=cfg.assume_crs)
    where = f"classes {classes_path.name}"
    if np.dtype(meta.dtype).kind not in "iu":
        raise InvalidSceneError(f"{where}: {meta.dtype} pixels are not classes; vectorize needs an integer raster "
                                f"(run `scenewatch predict` first, or round the raster to integers)")
    proba = _check_proba(proba_path, meta)
    names = class_names_of(meta)
    sid = safe_name(scene_id) if scene_id else _default_scene_id(classes_path, meta)
    basis = area_basis(meta.crs, meta.transform, meta.height, meta.width)
    simplify_px = cfg.simplify / pixel_size_m(basis, meta.transform, meta.height, meta.width) if cfg.simplify else 0.0
    spec = LayerSpec(
        scene_id=sid, crs_wkt=meta.crs.to_wkt(), transform=meta.transform, basis=basis, class_names=names,
        model=meta.tags.get(Tag.MODEL) or None, model_version=meta.tags.get(Tag.MODEL_VERSION) or None,
        acquired=_acquired(meta, sid, acquired), attributes=_threshold_column(meta.tags) | dict(attributes or {}),
        simplify_px=simplify_px,
        min_area_m2=cfg.min_area, class_attributes=dict(class_attributes or {}),
        class_colors=_colour_table(classes_path, names),
    )
    grid = plan_tiles(meta.height, meta.width, cfg.tile_size, 0)
    job = _TileJob(str(classes_path), proba, grid, resolve_classes(cfg.classes, names, where), cfg.sieve,
                   cfg.max_polygons, spec)
    with removed_if_left_empty(out_dir), dask_client(cfg.workers, cfg.scheduler, client) as dask, \
            LayerStager(output_folder(out_dir), spec) as stager:
        sweep_stale_temps(out_dir)
        in_flight = cfg.max_tiles_in_flight or 4 * worker_count(dask)
        inputs = [classes_path.parent, *([Path(proba).parent] if proba is not None else [])]
        seen = _workers_see(dask, [*inputs, out_dir])
        if not all(seen[folder.resolve()] for folder in inputs):
            job = dataclasses.replace(job, inline=True)
            log.info("%s: the workers do not see %s; tiles travel with their tasks", sid, classes_path.parent)
        _run(dask, job, stager, in_flight, progress, where, in_parts=seen[out_dir.resolve()])
        paths = _export(dask, stager.staged(), out_dir, cfg.formats, in_workers=seen[out_dir.resolve()])
        count = stager.count
    result = VectorResult(sid, paths, count, len(grid), time.perf_counter() - started, grid)
    log.info("vectorized %s: %d polygons from %d tiles in %.1f s", sid, count, len(grid), result.seconds)
    return result


def _workers_see(dask: Client, folders: Sequence[Path]) -> dict[Path, bool]:
    """Whether every worker sees each folder (resolved; each probed once) as this process does; a folder
    this process cannot write the probe into (read-only) counts as unseen: the tiles travel with their
    tasks, and the layers are written here."""
    seen: dict[Path, bool] = {}
    for folder in (f.resolve() for f in folders):
        if folder not in seen:
            try:
                seen[folder] = workers_share_disk(dask, folder)
            except OSError:
                seen[folder] = False
    return seen


@crosses_processes
def _export_layer(layer: StagedLayer, path: Path, fmt: str) -> Path:
    """The Dask task that writes one format of a layer from its staging file (:func:`export_layer`)."""
    return export_layer(layer, path, fmt)


def _export(dask: Client, layer: StagedLayer, out_dir: Path, formats: Sequence[str], *,
            in_workers: bool) -> dict[str, Path]:
    """Each format of the staged layer written to ``<out_dir>/<scene_id>.<fmt>``: by the workers, one task
    a format, where they see ``out_dir`` (and so the staging file beside it) as this process does, else
    here. Either way each file is written beside its target and renamed into place
    (:func:`pipeline.atomic.atomic_path`), and the bytes are the same."""
    targets = {fmt: out_dir / f"{layer.spec.scene_id}.{fmt}" for fmt in formats}
    if not in_workers:
        return {fmt: export_layer(layer, path, fmt) for fmt, path in targets.items()}
    layer = layer.resolved()  # a worker's working folder may differ
    run = uuid.uuid4().hex[:8]
    futures = dask.map(run_packed, [packed(_export_layer, layer, path.resolve(), fmt) for fmt, path in targets.items()],
                       key=[f"vectorize-export-{layer.spec.scene_id}-{run}-{fmt}" for fmt in targets], pure=False)
    try:
        wait(futures)  # all of them done before the staging file can go, even when one failed
        dask.gather(futures)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return targets


def _check_proba(proba_path: str | Path | None, meta: SceneMeta) -> str | None:
    if proba_path is None:
        return None
    proba = open_scene(proba_path)
    if (proba.width, proba.height) != (meta.width, meta.height) or not proba.transform.almost_equals(meta.transform):
        raise InvalidSceneError(
            f"probabilities {Path(proba_path).name}: grid {proba.width} x {proba.height} does not match classes "
            f"{meta.name} ({meta.width} x {meta.height}, same transform needed); pass the proba.tif written with it"
        )
    return str(proba_path)


@crosses_processes
def _rows_of_tiles(results: list[tuple[pa.Table, _Border]]) -> list[tuple[pa.Table, Bounds, BorderOutline]]:
    """The Dask task that takes what this process needs of a batch of tiles' results, in one message: per
    tile its finished rows (and their bounds, so that this process never parses their geometry) and its
    border pieces' outline. The results themselves (the border pieces) stay on the workers."""
    return [(interior, table_bounds(interior), outline(border.core)) for interior, border in results]


@crosses_processes
def _staged_tiles(results: list[tuple[StagedPart, _Border]]) -> list[tuple[StagedPart, BorderOutline]]:
    """:func:`_rows_of_tiles` for workers that see the staging folder, where each tile task staged its
    finished rows in a part file of its own: per tile what was staged (count, bounds, classes) and the
    outline of its border pieces."""
    return [(staged, outline(border.core)) for staged, border in results]


@crosses_processes
def _stage_merges(parts: list[tuple[pa.Table, Bounds]], spec: LayerSpec, path: Path) -> StagedPart:
    """The row's merged objects (its :func:`_merge_seams` results, in order) staged end to end as one
    batch in the part file ``path``, as :meth:`_Rows.stage` stages them in this process."""
    return stage_part([pa.concat_tables([t for t, _ in parts])], path, spec, [_union_bounds([b for _, b in parts])])


def _union_bounds(boxes: Sequence[Bounds]) -> Bounds:
    """The bounds of tables put end to end, from theirs (None for a table without rows)."""
    known = [b for b in boxes if b is not None]
    return (min(b[0] for b in known), min(b[1] for b in known), max(b[2] for b in known),
            max(b[3] for b in known)) if known else None


def _pack_groups(groups: list[Group]) -> tuple[np.ndarray, np.ndarray]:
    """Groups as two arrays (each member's tile index and local index, and each group's size): a task's
    argument that Dask neither walks nor sizes item by item, as it does a list of lists of tuples."""
    members = np.array([m for group in groups for m in group], dtype=np.int64).reshape(-1, 2)
    return members, np.array([len(group) for group in groups], dtype=np.int64)


def _unpack_groups(members: np.ndarray, sizes: np.ndarray) -> list[Group]:
    return [[(int(i), int(local)) for i, local in part.tolist()]
            for part in np.split(members, np.cumsum(sizes)[:-1])] if len(sizes) else []


@crosses_processes
def _merge_seams(tiles: dict[int, tuple[pa.Table | StagedPart, _Border]], spec: LayerSpec, members: np.ndarray,
                 sizes: np.ndarray) -> tuple[pa.Table, Bounds]:
    """The Dask task that unions finished groups (:func:`_pack_groups`) into rows; the results of the tiles
    they span come to it."""
    groups = _unpack_groups(members, sizes)
    return feature_rows(merge_groups({i: result[1].core.pieces for i, result in tiles.items()}, groups), spec)


@dataclass(slots=True)
class _Rows:
    """Rows waiting to be staged, in layer order: a tile's interior rows (``table``, ``bounds``; or where a
    worker staged them, ``part``: the part file, the batch and the classes), or a row of tiles' merge tasks
    (``merges``; or the one task that staged their rows in the part file ``merged_into``) and the objects
    they make (``count``)."""

    count: int
    table: pa.Table | None = None
    bounds: Bounds = None
    merges: list[Future] | None = None
    part: tuple[Path, int, frozenset[int]] | None = None
    merged_into: Path | None = None

    def ready(self) -> bool:
        return self.merges is None or all(f.done() for f in self.merges)

    def stage(self, dask: Client, stager: LayerStager) -> None:
        if self.part is not None:
            path, index, classes = self.part
            stager.add_part(path, index, self.count, self.bounds, classes)
            return
        if self.merges is None:
            assert self.table is not None
            stager.add(self.table, self.bounds)
            return
        parts = dask.gather(self.merges)  # one message for the row's merges
        for f in self.merges:
            f.release()
        if self.merged_into is not None:
            (staged,) = parts
            stager.add_part(self.merged_into, 0, staged.counts[0], staged.bounds[0], staged.classes[0])
            return
        # one table, as one merge in this process made: the layer's batches (Parquet row groups) too
        table = pa.concat_tables([t for t, _ in parts]).combine_chunks()
        stager.add(table, _union_bounds([b for _, b in parts]))


def _chunks(groups: list[Group], parts: int) -> list[list[Group]]:
    """``groups`` cut into at most ``parts`` consecutive runs of about as many pieces each (merged apart
    and put end to end, they keep their order). Each cut is the boundary between groups nearest to its
    share of the pieces, so that a group larger than a share (a row's background object, which can be
    most of its pieces and most of its vertices) is cut off from the groups beside it rather than merged
    with all of them in one task."""
    if parts < 2 or len(groups) < 2:
        return [groups] if groups else []
    before = np.concatenate([[0], np.cumsum([len(g) for g in groups])])  # pieces before each boundary
    targets = before[-1] * np.arange(1, parts) / parts
    after = np.clip(np.searchsorted(before, targets), 1, len(groups))  # the first boundary at or past each target
    cuts = np.where(targets - before[after - 1] < before[after] - targets, after - 1, after)
    bounds = [0, *sorted({int(c) for c in cuts if 0 < c < len(groups)}), len(groups)]
    return [groups[i:j] for i, j in itertools.pairwise(bounds)]


def _spread(dask: Client, spans: list[dict[int, Future]], pieces: list[int]) -> list[list[str] | None]:
    """A worker for each of the merges of the last row of tiles, once no tile is left to run: each a different
    one, so that a merge of the row's background object (which can take most of its pieces, and most of its
    time) runs beside the others rather than after them on one worker, as Dask may place them by where their
    tiles' results lie. The merges with more pieces choose first, each the free worker that holds the most of
    its tiles' results; a merge left without one is placed by Dask (None). The places are preferences
    (``allow_other_workers``): a worker that leaves does not hold a merge up."""
    holders = dask.who_has([future for span in spans for future in span.values()])
    free = sorted(dask.scheduler_info(n_workers=-1).get("workers", {}))
    places: list[list[str] | None] = [None] * len(spans)
    for k in sorted(range(len(spans)), key=lambda k: -pieces[k]):
        if not free:
            break
        held = Counter(w for future in spans[k].values() for w in holders.get(future.key, ()))
        best = max(free, key=lambda w: held[w])  # the first of the most holding (sorted): the same every run
        free.remove(best)
        places[k] = [best]
    return places


def _batches(grid: TileGrid, size: int) -> Iterator[list[Tile]]:
    """The grid's tiles in row-major order, ``size`` at a time (the last batch may be shorter)."""
    tiles = iter(grid)
    while batch := list(itertools.islice(tiles, size)):
        yield batch


def _run(dask: Client, job: _TileJob, stager: LayerStager, in_flight: int, progress: bool | None,
         where: str, *, in_parts: bool = False) -> None:
    """Submit tiles in row-major order, at most ``in_flight`` ahead, group their seams in that order and
    stage the rows in that order too: each tile's interior rows, then the objects its row completes (so
    the layer's row order, like its ids, does not depend on which worker finishes first, and is the order
    of a merge done in one process).

    Tiles go in batches of consecutive tiles (half of ``in_flight``, at most a row's worth), so that each batch
    costs this process one submission, one small task (:func:`_rows_of_tiles`) and one message back,
    whatever its tiles: a task's result stays on its worker, and this process fetches only the batch's
    interior rows and the outlines of its border pieces. Once a row of tiles completes objects, their
    groups are unioned by tasks that take the results of the tiles they span (:func:`_merge_seams`), one
    run of groups per worker, submitted together and fetched together; their rows are staged end to end
    as one table.

    ``in_parts`` (the workers see the staging folder): the rows never come to this process; each tile task
    stages its interior rows in a part file of its own (:func:`_vectorize_tile`; its batch's task returns
    what was staged, :func:`_staged_tiles`), so that neither those rows nor the tile's result (held until its
    border pieces are merged, and fetched by the merge tasks) carry them; a row's merges are staged by one
    more task (:func:`_stage_merges`), and this process keeps only their order, counts, bounds and classes
    (:meth:`LayerStager.add_part`): the same batches in the same order as staging them here."""
    from tqdm import tqdm

    run = uuid.uuid4().hex[:8]  # keys unique per run: a failed earlier run's keys may still be on the scheduler
    size = max(1, min(job.grid.cols, in_flight // 2))
    batches = _batches(job.grid, size)
    queue: deque[tuple[list[Tile], list[Future], Future, list[Path] | None]] = deque()
    seams = SeamGroups(job.grid)
    held: dict[int, Future] = {}  # tile index -> its task's result, while some of its border pieces are not merged
    outputs: deque[_Rows] = deque()  # rows to stage, in layer order
    queued = 0  # rows in `outputs` (objects of merge tasks counted before min_area drops any)
    ahead = 0  # tiles submitted and not yet taken
    workers = max(1, worker_count(dask))

    def submit_batches() -> None:
        nonlocal ahead
        while not queue or ahead + size <= in_flight:
            tiles = next(batches, None)
            if tiles is None:
                return
            keys = [f"vectorize-{job.spec.scene_id}-{run}-{tile.row}-{tile.col}" for tile in tiles]
            parts = [stager.part_path().resolve() for _ in tiles] if in_parts else None
            tasks = [packed(_vectorize_tile, job, tile, _TileWindows.pack(*_read_windows(job, tile)) if job.inline
                            else None, parts[n] if parts else None) for n, tile in enumerate(tiles)]
            futures = dask.map(run_packed, tasks, key=keys, pure=False)
            rows = dask.submit(run_packed, packed(_staged_tiles if parts else _rows_of_tiles), futures, pure=False,
                               key=f"vectorize-rows-{keys[0][10:]}")
            queue.append((tiles, futures, rows, parts))
            ahead += len(tiles)

    def stage_ready(wait: bool) -> None:
        nonlocal queued
        while outputs and (wait or len(outputs) > in_flight or outputs[0].ready()):
            rows = outputs.popleft()
            queued -= rows.count
            rows.stage(dask, stager)

    def merge(row: int, finished: list[Group]) -> _Rows:
        parts = [_pack_groups(part) for part in _chunks(finished, workers)]
        spans = [{i: held[i] for i in np.unique(members[:, 0]).tolist()} for members, _ in parts]
        keys = [f"vectorize-merge-{job.spec.scene_id}-{run}-{row}-{n}" for n in range(len(parts))]
        tasks = [packed(_merge_seams, job.spec, m, s) for m, s in parts]
        if row < job.grid.rows - 1 or len(parts) < 2:
            merges = dask.map(run_packed, tasks, spans, key=keys, pure=False)
        else:  # nothing else left to run: each merge on a worker of its own (the largest where most of its tiles are)
            places = _spread(dask, spans, [int(sizes.sum()) for _, sizes in parts])
            merges = [dask.submit(run_packed, task, span, key=key, pure=False, workers=place,
                                  allow_other_workers=True) for task, span, key, place in zip(tasks, spans, keys,
                                                                                                places, strict=True)]
        if not in_parts:
            return _Rows(len(finished), merges=merges)
        path = stager.part_path().resolve()
        staged = dask.submit(run_packed, packed(_stage_merges, job.spec, path), merges, pure=False,
                             key=f"vectorize-staged-{job.spec.scene_id}-{run}-{row}")
        return _Rows(len(finished), merges=[staged], merged_into=path)

    bar = tqdm(total=len(job.grid), desc=f"{job.spec.scene_id} polygons", unit="tile",
               disable=None if progress is None else not progress, leave=False)
    with bar:
        try:
            submit_batches()
            while queue:
                tiles, futures, light, part = queue.popleft()
                try:
                    results = light.result()
                except PolygonLimitError as err:
                    raise PolygonLimitError(f"{where}: {err}") from err
                light.release()
                ahead -= len(tiles)
                submit_batches()
                for tile, fut, rows, shape in zip(tiles, futures, *_tile_rows(results, part), strict=True):
                    if len(shape):
                        held[tile.row * job.grid.cols + tile.col] = fut
                    else:
                        fut.release()
                    outputs.append(rows)
                    queued += rows.count
                    finished = seams.add(tile, shape)
                    if finished:
                        outputs.append(merge(tile.row, finished))
                        queued += len(finished)
                    for released in seams.released:
                        held.pop(released).release()  # the merge tasks keep what they need
                    if stager.count + queued + seams.held > job.max_polygons:
                        raise PolygonLimitError(
                            f"{where}: more than {job.max_polygons:,} polygons; remove speckle first with `sieve` "
                            f"(pixels), keep fewer `classes` or raise `max_polygons`"
                        )
                stage_ready(wait=False)
                bar.update(len(tiles))
            stage_ready(wait=True)
        except BaseException:
            for _, futures, light, _ in queue:
                for fut in futures:
                    fut.cancel()
                light.cancel()
            for rows in outputs:
                for f in rows.merges or []:
                    f.cancel()
            for fut in held.values():
                fut.cancel()
            raise


def _tile_rows(results: Any, parts: list[Path] | None) -> tuple[list[_Rows], list[BorderOutline]]:
    """Per tile of a batch, its interior rows to stage and its border pieces' outline, from what the
    batch's task returned: :func:`_rows_of_tiles`, or :func:`_staged_tiles` (each tile's rows in its own
    part file of ``parts``, one batch, none when it had no rows)."""
    if parts is None:
        return [_Rows(t.num_rows, t, box) for t, box, _ in results], [shape for _, _, shape in results]
    rows = [_Rows(staged.counts[0], bounds=staged.bounds[0], part=(path, 0, staged.classes[0]))
            for (staged, _), path in zip(results, parts, strict=True)]
    return rows, [shape for _, shape in results]
