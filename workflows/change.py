"""Change over time: two-date change layers and alert timelines over a dated stack of one place.

Data flow (module names in brackets)::

    each date: scene -> classes + probabilities [workflows.scene.predict_scene on Dask]
               (or an existing <scene>.classes.tif is reused)
    window by window over the common grid [pipeline.change.rasters.windows]:
        read every date's window on that grid [pipeline.change.rasters, pipeline.change.align]
        -> transitions / index difference / alert state [pipeline.change.compare, pipeline.change.transitions]
        -> written as it goes [pipeline.change.rasters writers] -> COG
    -> polygons [workflows.vectorize]; area tables; quicklooks [pipeline.change.quicklook]

This module only orchestrates: the arithmetic is in :mod:`pipeline.change`, which takes arrays. The heavy
part, classifying each date, runs tiled on Dask as for one scene. The comparison reads each window of the
common grid from every date (GDAL warps only the source pixels under that window), so memory is a window
times the number of dates, never a scene.

From a notebook::

    from pipeline.config import ChangeConfig, PredictConfig
    from workflows.change import detect_change

    config = ChangeConfig(predict=PredictConfig(bands="naip"))
    pair = detect_change("2009.tif", "2020.tif", "vegetation", "out/", config)
    pair.polygons()          # GeoDataFrame of change polygons
    pair.areas               # pandas table of area per transition
    pair.change_array()      # xarray DataArray of transition codes
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

from pipeline.atomic import atomic_path, output_folder, sweep_stale_temps
from pipeline.change.align import GridSpec, covers, grid_of, grid_offset, pixel_area_rows, read_aligned
from pipeline.change.compare import (
    CONFIDENCE_NODATA,
    CONFIDENCE_SCALE,
    AreaTally,
    class_areas,
    class_change,
    compare_arrays,
    encode_confidence,
)
from pipeline.change.dates import compile_date_pattern, days_since_epoch, scene_date
from pipeline.change.rasters import (
    DatedClasses,
    alerts_writer,
    change_writer,
    dated_classes,
    events_writer,
    read_classes,
    read_classes_only,
    windows,
    write_code_confidence,
)
from pipeline.change.transitions import (
    ALERT_NODATA,
    CHANGE_NODATA,
    IndexDifference,
    accumulate_alerts,
    difference_model,
    transition_names,
    watch_matrix,
)
from pipeline.config import ChangeConfig, PredictConfig, TimelineConfig, VectorizeConfig
from pipeline.errors import ConfigError, InvalidSceneError
from pipeline.inference.masks import BoundMask, bind_mask, dilate, unusable_pixels
from pipeline.inference.read import open_scene, parse_band_map, resolve_bands
from pipeline.models.contract import ModelRef
from pipeline.names import safe_name, scene_id
from pipeline.products import CLASS_NODATA, PRODUCTS, Tag, is_classes_path, product_path
from pipeline.threshold import is_auto
from tiles.grid import PixelWindow
from workflows.cluster import dask_client
from workflows.threshold import pair_threshold_tags, resolve_pair_threshold

if TYPE_CHECKING:  # imported lazily where used: loading the module stays light
    import geopandas as gpd
    import xarray as xr
    from tqdm import tqdm

__all__ = ["DatedClasses", "ChangeResult", "TimelineResult", "detect_change", "run_timeline", "classify_dates",
           "common_grid", "compare_arrays"]

log = logging.getLogger("scenewatch")

Model = str | os.PathLike[str] | ModelRef


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """What :func:`detect_change` wrote, and the pieces a notebook wants as tables and arrays."""

    name: str
    before: str
    after: str
    before_date: dt.date | None
    after_date: dt.date | None
    change_path: Path
    polygons_path: Path | None
    quicklook_path: Path | None
    grid: GridSpec
    class_names: tuple[str, ...]
    model: str
    areas: Any  # pandas.DataFrame: code, transition, pixels, area_m2
    dates: tuple[DatedClasses, ...] = ()

    def polygons(self) -> gpd.GeoDataFrame:
        """The change polygons as a GeoDataFrame."""
        import geopandas as gpd

        if self.polygons_path is None:
            raise ConfigError(f"change {self.name}: polygons were not written (polygons=False)")
        return gpd.read_file(self.polygons_path, layer=self.polygons_path.stem)  # beside it: layer_styles

    def change_array(self, max_size: int | None = None) -> xr.DataArray:
        """The transition codes (band 1) and confidence (band 2) as an xarray DataArray."""
        from pipeline.arrays import read_dataarray

        return read_dataarray(self.change_path, max_size=max_size)


@dataclass(frozen=True, slots=True)
class TimelineResult:
    """What :func:`run_timeline` wrote: alert raster, events raster and layer, area table and plot."""

    name: str
    dates: tuple[DatedClasses, ...]
    grid: GridSpec
    class_names: tuple[str, ...]
    alerts_path: Path
    events_path: Path
    events_polygons_path: Path | None
    areas: Any  # pandas.DataFrame: date, scene_id, class, pixels, area_m2, valid_area_m2
    areas_csv: Path
    areas_parquet: Path
    plot_path: Path | None
    extra: dict[str, Any] = field(default_factory=dict)

    def events(self) -> gpd.GeoDataFrame:
        """The change events (polygons with their first-detection date) as a GeoDataFrame."""
        import geopandas as gpd

        if self.events_polygons_path is None:
            raise ConfigError(f"timeline {self.name}: events were not vectorized (polygons=False)")
        return gpd.read_file(self.events_polygons_path, layer=self.events_polygons_path.stem)

    def alerts_array(self, max_size: int | None = None) -> xr.DataArray:
        """The alert raster (first_day, count, confidence, last_day) as an xarray DataArray."""
        from pipeline.arrays import read_dataarray

        return read_dataarray(self.alerts_path, max_size=max_size)

    def classes_array(self, max_size: int | None = None) -> xr.DataArray:
        """Every date's classes on the common grid as a ``(time, y, x)`` DataArray (NaN = nodata)."""
        import xarray as xr

        from pipeline.arrays import coords_for

        grid = self.grid
        if max_size and max(grid.height, grid.width) > max_size:
            scale = max(grid.height, grid.width) / max_size
            h, w = max(1, round(grid.height / scale)), max(1, round(grid.width / scale))
            grid = GridSpec(grid.crs, grid.transform @ Affine.scale(grid.width / w, grid.height / h), h, w)
        layers = []
        for item in self.dates:
            data, valid = read_aligned(item.classes_path, grid, grid.bounds, [1])
            layers.append(np.where(valid, data[0].astype(np.float32), np.float32(np.nan)))
        y, x = coords_for(grid.transform, grid.height, grid.width)
        times = [np.datetime64(d.date) for d in self.dates]
        return xr.DataArray(np.stack(layers), dims=("time", "y", "x"), coords={"time": times, "y": y, "x": x},
                            attrs={"crs": grid.crs.to_wkt(), "class_names": list(self.class_names)},
                            name=f"{self.name} classes")


# ------------------------------------------------------------------------------------------- per-date input


def _date_or_none(path: str | Path, pattern: str | re.Pattern[str] | None) -> dt.date | None:
    try:
        return scene_date(path, pattern)
    except InvalidSceneError:
        return None


def classify_dates(scenes: Sequence[str | Path], model: Model, out_dir: Path, dates: Sequence[dt.date | None],
                   config: PredictConfig, *, client: Any, progress: bool | None) -> list[DatedClasses]:
    """Classify every scene with :func:`workflows.scene.predict_scene` (reusing given class rasters)."""
    from workflows.scene import plan_scene, predict_scene

    results = []
    for scene, date in zip(scenes, dates, strict=True):
        path = str(scene) if "://" in str(scene) else Path(scene)  # a URL stays one (Path folds its "//")
        if is_classes_path(path):
            results.append(dated_classes(Path(path), date))
            continue
        res = predict_scene(plan_scene(path, model, config), out_dir, client=client, progress=progress)
        results.append(DatedClasses(str(path), res.scene_id, date, res.classes_path, res.proba_path,
                                    res.model.class_names, res.model.name, res.model.version))
    _check_same_classes(results)
    return results


def _check_same_classes(items: Sequence[DatedClasses]) -> None:
    for item in items[1:]:
        if item.class_names != items[0].class_names:
            raise InvalidSceneError(
                f"class rasters {items[0].classes_path.name} and {item.classes_path.name} have different classes "
                f"({','.join(items[0].class_names)} vs {','.join(item.class_names)}); compare rasters of one model"
            )


def _check_inputs(scenes: Sequence[str | Path]) -> None:
    """Refuse, before any cluster starts: class rasters without or with different class names, and two
    scenes to classify that would write the same ``<id>.classes.tif`` (same file name, other folder)."""
    _check_same_classes([dated_classes(Path(s), None) for s in scenes if is_classes_path(s)])
    seen: dict[str, str] = {}
    for scene in scenes:
        if is_classes_path(scene):
            continue
        sid = scene_id(scene)
        if sid in seen:
            raise ConfigError(f"scenes {seen[sid]} and {scene} would both write {sid}{PRODUCTS['classes'].suffix} "
                              "in the output folder; give each date a distinct file name (e.g. with its date)")
        seen[sid] = str(scene)


def common_grid(grid: str | os.PathLike[str] | GridSpec | None, first: str | Path) -> GridSpec:
    """The grid every date is compared on: the first scene's (``None``/``"first"``), a raster's, or given."""
    if isinstance(grid, GridSpec):
        return grid
    if grid is None or str(grid) == "first":
        return grid_of(first, "scene")
    return grid_of(grid, "grid")


def _check_overlap(grid: GridSpec, paths: Sequence[str | Path], max_offset: float | None = None) -> None:
    """Every date must overlap the common grid; a date whose pixels are a fraction of a pixel off it is
    warned about, or refused when ``max_offset`` (pixels) is set and exceeded."""
    for path in paths:
        other = grid_of(path, "scene")
        if not covers(grid, other):
            raise InvalidSceneError(f"scene {Path(path).name}: does not overlap the common grid; "
                                    "compare scenes of the same place or set `grid`")
        offset = grid_offset(grid, other)
        if offset is not None and max_offset is not None and max(abs(offset.rows), abs(offset.cols)) > max_offset:
            raise InvalidSceneError(f"scene {Path(path).name}: its pixels are {offset.rows:.2f} px (rows) and "
                                    f"{offset.cols:.2f} px (columns) off the common grid, over `max_offset` "
                                    f"({max_offset:g} px): align the dates first (gdalwarp -tap)")
        if offset is not None and offset.misaligned():
            # a fraction of a pixel reads as change along every edge (half a pixel: 6 % of the scene)
            log.warning("scene %s: its pixels are %.2f px (rows) and %.2f px (columns) off the common grid%s; "
                        "resampled onto it, edges will show as change: align the dates first (gdalwarp -tap)",
                        Path(path).name, offset.rows, offset.cols, "" if offset.same_resolution else
                        f" and {offset.x_scale:.3g} x {offset.y_scale:.3g} its pixel size")


@contextlib.contextmanager
def _client_for(needed: bool, config: PredictConfig, client: Any, model: Model | None = None) -> Iterator[Any]:
    """One Dask client for every tiled stage of a run (classifying dates with ``model``, vectorizing),
    started only when one is ``needed`` and none was given."""
    if not needed:
        yield client
        return
    with dask_client(config.workers, config.scheduler, client, model=model) as dask:
        yield dask


def _progress_bar(total: int, desc: str, progress: bool | None) -> tqdm:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="window", disable=None if progress is None else not progress,
                leave=False)


# ------------------------------------------------------------------------------------------------ two dates


def detect_change(before: str | Path, after: str | Path, model: Model = "vegetation", out_dir: str | Path = ".",
                  config: ChangeConfig = ChangeConfig(), *, client: Any = None,
                  progress: bool | None = None) -> ChangeResult:
    """Compare two dates of one place: change raster (COG), change polygons, area table and a quicklook.

    ``before``/``after`` are scenes (classified here with ``model`` as ``config.predict`` says, e.g. its band
    map) or existing ``*.classes.tif`` rasters. ``model`` may also be an index-difference model, ``"dndvi"``
    or ``"dnbr"`` (see :data:`pipeline.change.transitions.DIFFERENCE_MODELS`), which compares band values
    directly. Both dates are compared on ``config.grid``: the before scene's grid (default, ``"first"``) or
    the grid of a raster path. Pixels that are nodata on either date, or outside either scene, are nodata in
    the change raster (never "no change", never change).

    Writes ``OUT/<name>.change.tif`` (band 1 transition code with class names in the SCENEWATCH_CLASSES tag,
    band 2 confidence x254), ``OUT/<name>.change.gpkg`` (the project's polygon layer: ``class_name`` is the
    transition, ``area_m2``, ``proba_mean``/``proba_max`` the confidence, plus ``before_date``/``after_date``)
    and ``OUT/<name>.change.png``; ``name`` defaults to ``<before>__<after>``.

    Example::

        from pipeline.config import ChangeConfig, PredictConfig

        config = ChangeConfig(predict=PredictConfig(bands="naip"), min_area="0.1ha")
        pair = detect_change("naip_2009.tif", "naip_2020.tif", "vegetation", "out/", config)
        pair.polygons().groupby("class_name").area_m2.sum()
    """
    out_dir = Path(out_dir)
    pattern = compile_date_pattern(config.date_pattern) if config.date_pattern else None
    dates = (_date_or_none(before, pattern), _date_or_none(after, pattern))
    name = safe_name(config.name) if config.name else \
        f"{scene_id(before).removesuffix('.classes')}__{scene_id(after).removesuffix('.classes')}"
    target = common_grid(config.grid, before)
    _check_overlap(target, [before, after], config.max_offset)
    change_path = product_path(out_dir, name, "change")
    diff_model = _difference_of(model)
    date_tags = {tag: d.isoformat() for tag, d in zip((Tag.BEFORE_DATE, Tag.AFTER_DATE), dates, strict=True) if d}
    to_classify = diff_model is None and not all(is_classes_path(p) for p in (before, after))
    if diff_model is None:
        _check_inputs([before, after])
    sweep_stale_temps(output_folder(out_dir))
    items: tuple[DatedClasses, ...]
    with _client_for(to_classify or config.polygons, config.predict, client, model if to_classify else None) as dask:
        if diff_model is not None:
            tally = _index_change(diff_model, before, after, target, change_path, config, date_tags, progress)
            model_label, items = diff_model.name, ()
        else:
            items = tuple(classify_dates([before, after], model, out_dir, dates, config.predict, client=dask,
                                         progress=progress))
            tally = _class_change(items[0], items[1], target, change_path, config.window_size, date_tags,
                                  progress, _darkening(model, (before, after), items, target, config))
            model_label = items[0].model
        poly_path = None
        if config.polygons:
            poly_path = _change_polygons(change_path, out_dir, name, tally.names, dates, config, dask)
    ql_path = None
    if config.quicklook:
        from pipeline.change.quicklook import write_pair_quicklook

        ql_path = product_path(out_dir, name, "change_quicklook")
        write_pair_quicklook(ql_path, before, after, change_path, target, tally.names, dates, config.predict.bands)
    return ChangeResult(name, str(before), str(after), dates[0], dates[1], change_path, poly_path, ql_path,
                        target, tally.names, model_label, tally.table(), items)


def _difference_of(model: Model) -> IndexDifference | None:
    """The index-difference model ``model`` names (a name, or a ModelRef of one with options), or None.

    A symmetric two-edge model (``dndvi``: loss above +t, gain below -t) takes ``threshold`` t; a model with
    published class edges (``dnbr``, Key & Benson's severities) takes none."""
    if isinstance(model, ModelRef):
        diff = difference_model(model.source) if model.source else None
        options = {k: v for k, v in model.options if k != "precision"}
    else:
        diff, options = difference_model(str(model)), {}
    if diff is None or not options:
        return diff
    symmetric = len(diff.edges) == 2 and diff.edges[0] == -diff.edges[1]
    unknown = sorted(set(options) - {"threshold"})
    if unknown or not symmetric:
        takes = "takes only `threshold`" if symmetric else "has fixed, published class edges and takes no options"
        raise ConfigError(f"model {diff.name}: {takes} (got `model_options` {', '.join(unknown or options)})")
    t = options["threshold"]
    if is_auto(t):  # the pair's own threshold, from |difference| over both dates (_index_change)
        return replace(diff, auto=True)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 2:
        raise ConfigError(f"model {diff.name}: `threshold` {t!r}: give the index change that counts, a number "
                          f"between 0 and 2 (default {diff.edges[1]:g})")
    described = f"{diff.description.split(';')[0]}; loss > {t:g}, gain < {-t:g}"
    return replace(diff, edges=(-float(t), float(t)), description=described)


def _darkening(model: Model, scenes: tuple[str | Path, str | Path], items: Sequence[DatedClasses], grid: GridSpec,
               config: ChangeConfig) -> tuple[Any, str] | None:
    """For ``flood-sar`` on two scenes: the step that makes water on both dates that got darker new water (as
    :func:`pipeline.change.compare.compare_arrays` does), with the pair's no-change level from a first pass over
    the windows; and a line for the change raster's description. None for any other model."""
    if items[0].model != "flood-sar" or any(is_classes_path(p) for p in scenes):
        return None
    from pipeline.change.transitions import RATIO_RANGE, darkened_water_codes, no_change_level, ratio_histogram
    from pipeline.models.loader import load_model
    from pipeline.models.sar import is_backscatter

    seg = load_model(ModelRef.of(model))
    if not is_backscatter(seg):
        return None
    indexes = []
    for scene in scenes:
        meta = open_scene(scene, max_pixels=config.predict.max_pixels, assume_crs=config.predict.assume_crs)
        indexes.append(resolve_bands(meta, parse_band_map(config.predict.bands, meta), seg.info.bands))

    def db(window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
        b, a = (seg.index_values(read_aligned(scene, grid, window, index, dtype="float32")[0][None])[0]
                for scene, index in zip(scenes, indexes, strict=True))
        return b, a

    hist = np.zeros(RATIO_RANGE.bins, dtype=np.int64)
    for window in windows(grid, config.window_size):
        land = (read_classes_only(items[0], grid, window) == 0) & (read_classes_only(items[1], grid, window) == 0)
        hist += ratio_histogram(*db(window), land)
    level = no_change_level(hist)

    def refine(window: PixelWindow, codes: np.ndarray, c_b: np.ndarray, c_a: np.ndarray) -> np.ndarray:
        return darkened_water_codes(codes, *db(window), c_b, c_a, level)

    return refine, (f"flood-sar change: new water = water after that was not water before, or water on both "
                    f"dates darker after than the pair's no-change level {level:+.2f} dB")


def _class_change(before: DatedClasses, after: DatedClasses, grid: GridSpec, path: Path, window_size: int,
                  date_tags: dict[str, str], progress: bool | None,
                  darkening: tuple[Any, str] | None = None) -> AreaTally:
    k = len(before.class_names)
    tally = AreaTally(transition_names(before.class_names))
    row_areas: dict[tuple[int, int], np.ndarray] = {}
    todo = list(windows(grid, window_size))
    tags = {**date_tags, Tag.BEFORE: before.scene_id, Tag.AFTER: after.scene_id,
            **pair_threshold_tags(before.classes_path, after.classes_path)}
    if darkening is not None:
        tags[Tag.DESCRIPTION] = darkening[1]
    with change_writer(path, grid, tally.names, before.model, before.model_version, tags) as writer, \
            _progress_bar(len(todo), f"change {path.name}", progress) as bar:
        for window in todo:
            (c_b, p_b), (c_a, p_a) = read_classes(before, grid, window), read_classes(after, grid, window)
            codes, confidence = class_change(c_b, p_b, c_a, p_a, k)
            if darkening is not None:
                codes = darkening[0](window, codes, c_b, c_a)
            writer.write(window, np.stack([codes, confidence]))
            key = (window.row_off, window.height)
            if key not in row_areas:
                row_areas[key] = pixel_area_rows(grid, window)
            tally.add(codes, row_areas[key])
            bar.update(1)
        writer.finish()
    return tally


def _index_change(model: IndexDifference, before: str | Path, after: str | Path, grid: GridSpec, path: Path,
                  config: ChangeConfig, date_tags: dict[str, str], progress: bool | None) -> AreaTally:
    indexes, masks = [], []
    for scene in (before, after):
        meta = open_scene(scene, max_pixels=config.predict.max_pixels, assume_crs=config.predict.assume_crs)
        band_map = parse_band_map(config.predict.bands, meta)
        indexes.append(resolve_bands(meta, band_map, model.bands))
        mask = config.predict.mask
        if mask is not None:
            resolve_bands(meta, band_map, mask.bands)
            masks.append(bind_mask(mask, band_map.indexes, config.predict.mask_dilate, f"scene {meta.name}"))
    if masks:
        date_tags = {**date_tags, Tag.MASK: str(config.predict.mask)}
    tally = AreaTally(model.class_names)
    todo = list(windows(grid, config.window_size))
    tags = {**date_tags, Tag.BEFORE: scene_id(before), Tag.AFTER: scene_id(after)}

    def pair(window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
        data_b, valid_b = read_aligned(before, grid, window, indexes[0], dtype="float32")
        data_a, valid_a = read_aligned(after, grid, window, indexes[1], dtype="float32")
        valid = valid_b & valid_a
        for scene, bound in zip((before, after), masks, strict=False):
            valid &= ~_unusable_on_grid(scene, grid, window, bound)
        return model.difference(data_b, data_a), valid

    if model.auto:  # threshold=auto: a first pass sums the pair's histogram of |difference| (workflows.threshold)
        model, tags[Tag.THRESHOLD] = resolve_pair_threshold(model, map(pair, todo), f"{scene_id(before)}__"
                                                            f"{scene_id(after)}")
    tags[Tag.DESCRIPTION] = model.description
    with change_writer(path, grid, tally.names, model.name, model.version, tags) as writer, \
            _progress_bar(len(todo), f"change {path.name}", progress) as bar:
        for window in todo:
            diff, valid = pair(window)
            codes, conf = model.classify(diff, valid)
            writer.write(window, np.stack([codes, encode_confidence(conf, valid)]))
            tally.add(codes, pixel_area_rows(grid, window))
            bar.update(1)
        writer.finish()
    return tally


def _unusable_on_grid(scene: str | Path, grid: GridSpec, window: PixelWindow, mask: BoundMask) -> np.ndarray:
    """The pixels of ``window`` of the common grid that ``mask``'s bands of ``scene`` mark unusable (nearest
    neighbour onto the grid), dilated on the grid; read over the window grown by the dilation, so that
    windows join without seams."""
    grown = window.expand(mask.dilate, PixelWindow(0, 0, grid.height, grid.width)) if mask.dilate else window
    bands, covered = read_aligned(scene, grid, grown, mask.indexes)
    unusable = dilate(unusable_pixels(mask.mask, bands) & covered, mask.dilate)
    r0, c0 = window.row_off - grown.row_off, window.col_off - grown.col_off
    return unusable[r0 : r0 + window.height, c0 : c0 + window.width]


# ----------------------------------------------------------------------------------------------- polygons


def _vectorize(codes_path: Path, proba_path: Path, out_dir: Path, layer_id: str, keep: Sequence[str],
               attributes: dict[str, Any], acquired: dt.date | None, config: ChangeConfig | TimelineConfig,
               client: Any, class_attributes: dict[str, dict[int, Any]] | None = None) -> Path:
    """Polygons of ``codes_path`` (classes ``keep``) into ``OUT/<layer_id>.gpkg`` through the tiled vectorizer:
    the project's layer columns (id, class_id, class_name, area_m2, perimeter_m, pixels, proba_mean, proba_max,
    scene_id, acquired, model, model_version) plus ``attributes`` and ``class_attributes``; styled in the
    raster's colour table (the change palette, the date ramp)."""
    from workflows.vectorize import vectorize_scene

    vector = VectorizeConfig(formats=("gpkg",), min_area=config.min_area, sieve=config.sieve, classes=tuple(keep))
    result = vectorize_scene(codes_path, out_dir, vector, proba_path=proba_path, client=client,
                             attributes=attributes, class_attributes=class_attributes, scene_id=layer_id,
                             acquired=acquired, progress=False)
    return Path(result.paths["gpkg"])


def _change_polygons(change_path: Path, out_dir: Path, name: str, names: Sequence[str],
                     dates: Sequence[dt.date | None], config: ChangeConfig, client: Any) -> Path:
    def confidence(window: PixelWindow) -> np.ndarray:
        raw = read_aligned(change_path, grid, window, [2])[0][0]
        return np.where(raw == CONFIDENCE_NODATA, np.nan, raw / CONFIDENCE_SCALE).astype(np.float32)

    grid = grid_of(change_path)
    proba = write_code_confidence(change_path, len(names), confidence, config.window_size)
    try:
        attributes = {k: d for k, d in zip(("before_date", "after_date"), dates, strict=True) if d is not None}
        return _vectorize(change_path, proba, out_dir, f"{name}.change", names[1:], attributes, dates[1], config,
                          client)
    finally:
        proba.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- timeline


def run_timeline(scenes: Sequence[str | Path], model: Model = "vegetation", out_dir: str | Path = ".",
                 config: TimelineConfig = TimelineConfig(), *, client: Any = None,
                 progress: bool | None = None) -> TimelineResult:
    """Follow a dated stack of one place: area per class per date, an alert raster and change events.

    Dates come from STAC items, TIFF tags or the file names (``config.date_pattern``, see
    :mod:`pipeline.change.dates`); scenes are sorted by date and classified with ``model`` as
    ``config.predict`` says (existing ``*.classes.tif`` are reused). On the common ``config.grid`` (the
    earliest scene's by default) every pixel runs the alert state machine of
    :func:`pipeline.change.transitions.accumulate_alerts` over the dates: a ``watch``-ed transition (default:
    any change of class, e.g. ``"vegetation->other"``) seen on ``confirm`` observations is a confirmed alert.

    Writes ``OUT/<name>.alerts.tif`` (uint16 bands first_day, count, confidence, last_day; days since
    1970-01-01, 0 = none, 65535 = never observed), ``OUT/<name>.events.tif`` (uint8 index of the date of first
    detection, class names are the dates), ``OUT/<name>.events.gpkg`` (polygons: ``class_name`` is the date of
    first detection as text, ``first_detected`` and ``acquired`` that date as a date, ``proba_mean`` the alert
    confidence as 0.5 low / 1.0 high, ``area_m2``; styled yellow (earliest) to dark red (latest)),
    ``OUT/<name>.areas.csv`` / ``.parquet`` and ``OUT/<name>.areas.png``.

    Example::

        from pipeline.config import PredictConfig, TimelineConfig

        config = TimelineConfig(predict=PredictConfig(bands="swir16=1,nir=2,red=3"), watch="canopy->bare")
        timeline = run_timeline(sorted(Path("pucallpa").glob("*.tif")), ModelRef.of("bare", threshold="auto"),
                                "out/", config)
    """
    if len(scenes) < 2:
        raise ConfigError(f"timeline: {len(scenes)} scene(s) given; a timeline needs at least two dates")
    out_dir = Path(out_dir)
    name = safe_name(config.name)
    pattern = compile_date_pattern(config.date_pattern) if config.date_pattern else None
    dated = sorted(((scene_date(s, pattern), str(s)) for s in scenes), key=lambda x: (x[0], x[1]))
    if len(dated) > 250:
        raise ConfigError(f"timeline: {len(dated)} dates; the events raster indexes at most 250 dates")
    ordered = [s for _, s in dated]
    dates = [d for d, _ in dated]
    target = common_grid(config.grid, ordered[0])
    _check_overlap(target, ordered, config.max_offset)
    _check_inputs(ordered)
    sweep_stale_temps(output_folder(out_dir))
    to_classify = not all(is_classes_path(p) for p in ordered)
    with _client_for(to_classify or config.polygons, config.predict, client, model if to_classify else None) as dask:
        items = classify_dates(ordered, model, out_dir, dates, config.predict, client=dask, progress=progress)
        return _timeline_products(items, dates, target, out_dir, name, config, progress, dask)


def _timeline_products(items: list[DatedClasses], dates: list[dt.date], target: GridSpec, out_dir: Path, name: str,
                       config: TimelineConfig, progress: bool | None, client: Any) -> TimelineResult:
    """Everything after classification: the window-by-window pass over all dates, then tables, polygons, plot."""
    import pandas as pd

    class_names = items[0].class_names
    k = len(class_names)
    watched = watch_matrix(class_names, config.watch)
    days = [days_since_epoch(d) for d in dates]
    if days[0] < 1:
        raise ConfigError(f"timeline: date {dates[0]} is before 1970-01-02; alert days count from 1970-01-01")
    area = np.zeros((len(items), k))
    count = np.zeros((len(items), k), dtype=np.int64)
    valid_area = np.zeros(len(items))
    alerts_path = product_path(out_dir, name, "alerts")
    events_path = product_path(out_dir, name, "events")
    watch_text = ",".join(config.watch or ["*"])
    tags = {Tag.MODEL: items[0].model, Tag.MODEL_VERSION: items[0].model_version,
            Tag.DATES: ",".join(d.isoformat() for d in dates), Tag.WATCH: watch_text, Tag.CONFIRM: str(config.confirm)}
    event_names = ["no alert", *(d.isoformat() for d in dates)]
    todo = list(windows(target, config.window_size))
    # each writer is inside the `with` as soon as it exists: if the second cannot be made, or the run is
    # stopped meanwhile, the first's staging file is removed too
    with (
        alerts_writer(alerts_path, target, tags) as alerts_w,
        events_writer(events_path, target, event_names, tags) as events_w,
        _progress_bar(len(todo), f"timeline {name}", progress) as bar,
    ):
        for window in todo:
            stack = np.stack([read_classes_only(item, target, window) for item in items])
            row_areas = pixel_area_rows(target, window)
            for t in range(len(items)):
                a, c, v = class_areas(stack[t], row_areas, k)
                area[t] += a
                count[t] += c
                valid_area[t] += v
            layers = accumulate_alerts(stack, days, watched, confirm=config.confirm, nodata=CLASS_NODATA)
            alerts_w.write(window, np.stack([layers.first_day, layers.count, layers.confidence, layers.last_day]))
            events = np.where(layers.first_index == ALERT_NODATA, CHANGE_NODATA, layers.first_index).astype(np.uint8)
            events_w.write(window, events)
            bar.update(1)
        alerts_w.finish()
        events_w.finish()
    rows = [{"date": dates[t].isoformat(), "scene_id": items[t].scene_id, "class": class_names[c],
             "pixels": int(count[t, c]), "area_m2": float(area[t, c]), "valid_area_m2": float(valid_area[t])}
            for t in range(len(items)) for c in range(k)]
    table = pd.DataFrame(rows)
    csv_path, parquet_path = product_path(out_dir, name, "areas_csv"), product_path(out_dir, name, "areas_parquet")
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.3f")
    with atomic_path(parquet_path) as tmp:
        table.to_parquet(tmp, index=False)
    events_poly = None
    if config.polygons:
        events_poly = _event_polygons(events_path, alerts_path, out_dir, name, event_names, dates,
                                      {"watch": watch_text, "confirm": config.confirm}, config, client)
    plot_path = None
    if config.plot:
        from pipeline.change.quicklook import raster_class_colours, save_area_plot

        plot_path = product_path(out_dir, name, "areas_plot")
        save_area_plot(plot_path, dates, {c: list(area[:, i]) for i, c in enumerate(class_names)},
                       title=f"{name}: area per class ({items[0].model})",
                       colours=raster_class_colours(items[0].classes_path))
    return TimelineResult(name, tuple(items), target, class_names, alerts_path, events_path, events_poly, table,
                          csv_path, parquet_path, plot_path)


def _event_polygons(events_path: Path, alerts_path: Path, out_dir: Path, name: str, names: Sequence[str],
                    dates: Sequence[dt.date], attributes: dict[str, Any], config: TimelineConfig,
                    client: Any) -> Path:
    """Change events: one polygon per patch first detected on the same date (``class_name`` is that date as
    text, ``first_detected`` and ``acquired`` the same date as a date field, filterable in QGIS);
    ``proba_mean``/``proba_max`` are the alert confidence as a probability (low 0.5, high 1.0)."""
    def confidence(window: PixelWindow) -> np.ndarray:
        level = read_aligned(alerts_path, grid, window, [3])[0][0].astype(np.float32)
        return np.where((level == 0) | (level == ALERT_NODATA), np.nan, level / 2.0).astype(np.float32)

    grid = grid_of(events_path)
    proba = write_code_confidence(events_path, len(names), confidence, config.window_size)
    try:
        by_class = {i + 1: d for i, d in enumerate(dates)}  # event class i + 1 is the i-th date (0: no alert)
        return _vectorize(events_path, proba, out_dir, f"{name}.events", names[1:], attributes, None, config, client,
                          class_attributes={"first_detected": by_class, "acquired": by_class})
    finally:
        proba.unlink(missing_ok=True)
