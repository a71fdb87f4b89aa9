"""Change over time: two-date change layers and alert timelines over a dated stack of one place.

Data flow (module names in brackets)::

    each date: scene -> classes + probabilities [workflows.scene.predict_scene on Dask]
               (or an existing <scene>.classes.tif is reused)
    window by window over the common grid [tiles.grid]:
        read every date's window on that grid [pipeline.change.align.read_aligned]
        -> transitions / index difference / alert state [pipeline.change.transitions]
        -> written as it goes [pipeline.inference.raster.CogWriter] -> COG
    -> polygons with dates, transition, area, confidence; area tables; quicklooks [pipeline.change.quicklook]

The heavy part, classifying each date, runs tiled on Dask as for one scene. The comparison reads each
window of the common grid from every date (GDAL warps only the source pixels under that window), so
memory is a window times the number of dates, never a scene.

From a notebook::

    from workflows.change import detect_change, run_timeline
    pair = detect_change("2009.tif", "2020.tif", "vegetation", "out/", bands="naip")
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from pipeline.change.align import GridSpec, covers, grid_meta, grid_of, pixel_area_rows, read_aligned
from pipeline.atomic import atomic_path
from pipeline.change.transitions import (
    ALERT_NODATA,
    CHANGE_NODATA,
    IndexDifference,
    accumulate_alerts,
    difference_model,
    transition_codes,
    transition_names,
    watch_matrix,
)
from pipeline.config import PredictConfig
from pipeline.change.dates import compile_date_pattern, days_since_epoch, scene_date
from pipeline.errors import ConfigError, InvalidSceneError
from pipeline.names import safe_name, scene_id
from pipeline.inference.raster import CogWriter, hex_to_rgba
from pipeline.inference.read import open_scene, parse_band_map, resolve_bands
from pipeline.inference.stitch import CLASS_NODATA, PROBA_UINT8_NODATA, PROBA_UINT8_SCALE, decode_proba
from tiles.grid import PixelWindow, plan_tiles
from workflows.cluster import dask_client

__all__ = ["DatedClasses", "ChangeResult", "TimelineResult", "detect_change", "run_timeline", "classify_dates",
           "common_grid", "compare_arrays"]

log = logging.getLogger("scenewatch")

# Confidence is stored as the probability rasters are (pipeline.inference.stitch): round(c * 254), 255 = nodata.
CONFIDENCE_NODATA = PROBA_UINT8_NODATA
CONFIDENCE_SCALE = PROBA_UINT8_SCALE
_CLASSES_SUFFIX = ".classes.tif"


@dataclass(frozen=True, slots=True)
class DatedClasses:
    """One date's class raster (made by :func:`workflows.scene.predict_scene` or given), with its date."""

    scene: str
    scene_id: str
    date: dt.date | None
    classes_path: Path
    proba_path: Path | None
    class_names: tuple[str, ...]
    model: str
    model_version: str


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

    def polygons(self):  # noqa: ANN201 - geopandas imported lazily
        """The change polygons as a GeoDataFrame."""
        import geopandas as gpd

        if self.polygons_path is None:
            raise ConfigError(f"change {self.name}: polygons were not written (polygons=False)")
        return gpd.read_file(self.polygons_path)

    def change_array(self, max_size: int | None = None):  # noqa: ANN201
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

    def events(self):  # noqa: ANN201
        """The change events (polygons with their first-detection date) as a GeoDataFrame."""
        import geopandas as gpd

        if self.events_polygons_path is None:
            raise ConfigError(f"timeline {self.name}: events were not vectorized (polygons=False)")
        return gpd.read_file(self.events_polygons_path)

    def alerts_array(self, max_size: int | None = None):  # noqa: ANN201
        """The alert raster (first_day, count, confidence, last_day) as an xarray DataArray."""
        from pipeline.arrays import read_dataarray

        return read_dataarray(self.alerts_path, max_size=max_size)

    def classes_array(self, max_size: int | None = None):  # noqa: ANN201
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


def _is_class_raster(path: str | Path) -> bool:
    return str(path).lower().endswith(_CLASSES_SUFFIX)


def _reuse_classes(path: Path, date: dt.date | None) -> DatedClasses:
    """An existing class raster (ours or anyone's with the same tags), with its probabilities if beside it."""
    with rasterio.open(path) as src:
        tags = src.tags()
    names = tuple(n for n in tags.get("SCENEWATCH_CLASSES", "").split(",") if n)
    if not names:
        raise InvalidSceneError(
            f"class raster {path.name}: no SCENEWATCH_CLASSES tag naming its classes; write one "
            "(e.g. gdal_edit.py -mo SCENEWATCH_CLASSES=other,vegetation) or pass the scene itself"
        )
    proba = path.with_name(path.name[: -len(_CLASSES_SUFFIX)] + ".proba.tif")
    sid = path.name[: -len(_CLASSES_SUFFIX)]
    return DatedClasses(str(path), sid, date, path, proba if proba.exists() else None, names,
                        tags.get("SCENEWATCH_MODEL", ""), tags.get("SCENEWATCH_MODEL_VERSION", ""))


def _date_or_none(path: str | Path, pattern: str | re.Pattern[str] | None) -> dt.date | None:
    try:
        return scene_date(path, pattern)
    except InvalidSceneError:
        return None


def classify_dates(scenes: Sequence[str | Path], model: Any, out_dir: Path, dates: Sequence[dt.date | None], *,
                   client: Any, progress: bool | None, options: dict[str, Any]) -> list[DatedClasses]:
    """Classify every scene with :func:`workflows.scene.predict_scene` (reusing given class rasters)."""
    from workflows.scene import predict_scene

    results = []
    for scene, date in zip(scenes, dates, strict=True):
        path = Path(scene)
        if _is_class_raster(path):
            results.append(_reuse_classes(path, date))
            continue
        res = predict_scene(path, model, out_dir, client=client, progress=progress, **options)
        results.append(DatedClasses(str(path), res.scene_id, date, res.classes_path, res.proba_path,
                                    res.model.class_names, res.model.name, res.model.version))
    first = results[0]
    for item in results[1:]:
        if item.class_names != first.class_names:
            raise InvalidSceneError(
                f"class rasters {first.classes_path.name} and {item.classes_path.name} have different classes "
                f"({','.join(first.class_names)} vs {','.join(item.class_names)}); compare rasters of one model"
            )
    return results


def _check_inputs(scenes: Sequence[str | Path]) -> None:
    """Refuse, before any cluster starts: class rasters without or with different class names, and two
    scenes to classify that would write the same ``<id>.classes.tif`` (same file name, other folder)."""
    given = [_reuse_classes(Path(s), None) for s in scenes if _is_class_raster(s)]
    for item in given[1:]:
        if item.class_names != given[0].class_names:
            raise InvalidSceneError(
                f"class rasters {given[0].classes_path.name} and {item.classes_path.name} have different classes "
                f"({','.join(given[0].class_names)} vs {','.join(item.class_names)}); compare rasters of one model"
            )
    seen: dict[str, str] = {}
    for scene in scenes:
        if _is_class_raster(scene):
            continue
        sid = scene_id(scene)
        if sid in seen:
            raise ConfigError(f"scenes {seen[sid]} and {scene} would both write {sid}.classes.tif in the output "
                              "folder; give each date a distinct file name (e.g. with its date)")
        seen[sid] = str(scene)


def common_grid(grid: str | os.PathLike[str] | GridSpec | None, first: str | Path) -> GridSpec:
    """The grid every date is compared on: the first scene's (``None``/``"first"``), a raster's, or given."""
    if isinstance(grid, GridSpec):
        return grid
    if grid is None or str(grid) == "first":
        return grid_of(first, "scene")
    return grid_of(grid, "grid")


def _check_overlap(grid: GridSpec, paths: Sequence[str | Path]) -> None:
    for path in paths:
        if not covers(grid, grid_of(path, "scene")):
            raise InvalidSceneError(f"scene {Path(path).name}: does not overlap the common grid; "
                                    "compare scenes of the same place or pass --grid")


def _windows(grid: GridSpec, size: int) -> Iterator[PixelWindow]:
    for tile in plan_tiles(grid.height, grid.width, size, 0):
        yield tile.core_window


def _split_options(options: dict[str, Any]) -> tuple[int | None, str | None, dict[str, Any]]:
    """Dask options (used once for every date) and the rest (passed to predict_scene)."""
    rest = dict(options)
    workers, scheduler = rest.pop("workers", None), rest.pop("scheduler", None)
    PredictConfig.build(**rest)  # refuse a bad option before any date is classified
    return workers, scheduler, rest


@contextlib.contextmanager
def _client_for(needed: bool, options: dict[str, Any], client: Any,
                model: Any = None) -> Iterator[tuple[Any, dict[str, Any]]]:
    """One Dask client for every tiled stage of a run (classifying dates with ``model``, vectorizing),
    started only when one is ``needed`` and none was given; and the options left for :func:`predict_scene`."""
    workers, scheduler, rest = _split_options(options)
    if not needed:
        yield client, rest
        return
    with dask_client(workers, scheduler, client, model=model) as dask:
        yield dask, rest


def _progress_bar(total: int, desc: str, progress: bool | None):  # noqa: ANN202
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="window", disable=None if progress is None else not progress,
                leave=False)


# ------------------------------------------------------------------------------------------------ two dates


def _read_classes(item: DatedClasses, grid: GridSpec, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
    """Classes (uint8, CLASS_NODATA where invalid) and the probability of each pixel's class (float32)."""
    data, valid = read_aligned(item.classes_path, grid, window, [1])
    classes = np.where(valid, data[0], CLASS_NODATA).astype(np.uint8)
    k = len(item.class_names)
    p = np.ones(classes.shape, dtype=np.float32)
    if item.proba_path is not None:
        stored, pvalid = read_aligned(item.proba_path, grid, window)
        proba = decode_proba(stored)
        idx = np.clip(classes, 0, k - 1).astype(np.intp)
        p = np.take_along_axis(proba, idx[None], axis=0)[0].astype(np.float32)
        p[~pvalid] = np.nan
    return classes, p


def _encode_confidence(conf: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.rint(np.nan_to_num(conf, nan=0.0) * CONFIDENCE_SCALE).astype(np.uint8)
    out[~valid | ~np.isfinite(conf)] = CONFIDENCE_NODATA
    return out


def _change_writer(path: Path, grid: GridSpec, names: Sequence[str], model: str, version: str,
                   extra_tags: dict[str, str]) -> CogWriter:
    colormap = {0: (235, 235, 235, 255), CHANGE_NODATA: (0, 0, 0, 0)}
    from pipeline.change.quicklook import CHANGE_COLORS

    for code in range(1, len(names)):
        colormap[code] = hex_to_rgba(CHANGE_COLORS[(code - 1) % len(CHANGE_COLORS)])
    tags = {"SCENEWATCH_CLASSES": ",".join(names), "SCENEWATCH_MODEL": model,
            "SCENEWATCH_MODEL_VERSION": version, "SCENEWATCH_PRODUCT": "change", **extra_tags}
    return CogWriter(path, grid_meta(grid), count=2, dtype="uint8", nodata=CHANGE_NODATA, resampling="nearest",
                     descriptions=["transition", "confidence"], colormap=colormap, tags=tags,
                     band_tags=[{}, {"SCALE_NOTE": f"confidence = value / {CONFIDENCE_SCALE}"}])


def _areas_table(counts: dict[int, float], pixels: dict[int, int], names: Sequence[str]):  # noqa: ANN202
    import pandas as pd

    rows = [{"code": c, "transition": names[c], "pixels": int(pixels.get(c, 0)),
             "area_m2": float(counts.get(c, 0.0))} for c in range(len(names))]
    return pd.DataFrame(rows)


def _accumulate_areas(codes: np.ndarray, row_areas: np.ndarray, n: int, areas: dict[int, float],
                      pixels: dict[int, int]) -> None:
    valid = codes != CHANGE_NODATA
    weights = np.broadcast_to(row_areas[:, None], codes.shape)
    area = np.bincount(codes[valid].astype(np.intp), weights=weights[valid], minlength=n)
    count = np.bincount(codes[valid].astype(np.intp), minlength=n)
    for c in range(n):
        areas[c] = areas.get(c, 0.0) + float(area[c])
        pixels[c] = pixels.get(c, 0) + int(count[c])


def detect_change(before: str | Path, after: str | Path, model: Any = "vegetation", out_dir: str | Path = ".", *,
                  grid: str | os.PathLike[str] | GridSpec | None = None, client: Any = None,
                  date_pattern: str | None = None, window_size: int = 1024, polygons: bool = True,
                  quicklook: bool = True, min_area: float = 0.0, progress: bool | None = None,
                  name: str | None = None, **options: Any) -> ChangeResult:
    """Compare two dates of one place: change raster (COG), change polygons, area table and a quicklook.

    ``before``/``after`` are scenes (classified here with ``model`` via :func:`predict_scene`; ``options``
    are its options such as ``bands="naip"``) or existing ``*.classes.tif`` rasters. ``model`` may also be an
    index-difference model, ``"dndvi"`` or ``"dnbr"`` (see :data:`pipeline.change.transitions.DIFFERENCE_MODELS`), which
    compares band values directly. Both dates are compared on ``grid``: the before scene's grid (default,
    ``"first"``), the grid of a raster path, or a :class:`GridSpec`. Pixels that are nodata on either date,
    or outside either scene, are nodata in the change raster (never "no change", never change).

    Writes ``OUT/<name>.change.tif`` (band 1 transition code with class names in the SCENEWATCH_CLASSES tag,
    band 2 confidence x254), ``OUT/<name>.change.gpkg`` (the project's polygon layer: ``class_name`` is the
    transition, ``area_m2``, ``proba_mean``/``proba_max`` the confidence, plus ``before_date``/``after_date``)
    and ``OUT/<name>.change.png``; ``name`` defaults to ``<before>__<after>``.

    Example::

        pair = detect_change("naip_2009.tif", "naip_2020.tif", "vegetation", "out/", bands="naip")
        pair.polygons().groupby("class_name").area_m2.sum()
    """
    out_dir = Path(out_dir)
    pattern = compile_date_pattern(date_pattern) if date_pattern else None
    dates = (_date_or_none(before, pattern), _date_or_none(after, pattern))
    name = safe_name(name) if name else f"{scene_id(before).removesuffix('.classes')}__" \
                                        f"{scene_id(after).removesuffix('.classes')}"
    target = common_grid(grid, before)
    _check_overlap(target, [before, after])
    change_path = out_dir / f"{name}.change.tif"
    diff_model = difference_model(model) if isinstance(model, str) else None
    date_tags = {f"SCENEWATCH_{k}_DATE": d.isoformat() for k, d in zip(("BEFORE", "AFTER"), dates) if d}
    to_classify = diff_model is None and not all(_is_class_raster(p) for p in (before, after))
    if diff_model is None:
        _check_inputs([before, after])
    with _client_for(to_classify or polygons, options, client, model if to_classify else None) as (dask, rest):
        if diff_model is not None:
            names, areas = _index_change(diff_model, before, after, target, change_path, rest.get("bands"),
                                         window_size, date_tags, progress)
            model_label, items = diff_model.name, ()
        else:
            items = tuple(classify_dates([before, after], model, out_dir, dates, client=dask, progress=progress,
                                         options=rest))
            names, areas = _class_change(items[0], items[1], target, change_path, window_size, date_tags,
                                         progress)
            model_label = items[0].model
        areas_table = _areas_table(*areas, names)
        poly_path = None
        if polygons:
            poly_path = _change_polygons(change_path, out_dir, name, names, dates, min_area, window_size, dask)
    ql_path = None
    if quicklook:
        ql_path = out_dir / f"{name}.change.png"
        _pair_quicklook(ql_path, before, after, change_path, target, names, dates, options.get("bands"))
    return ChangeResult(name, str(before), str(after), dates[0], dates[1], change_path, poly_path, ql_path,
                        target, names, model_label, areas_table, items)


def _class_change(before: DatedClasses, after: DatedClasses, grid: GridSpec, path: Path, window_size: int,
                  date_tags: dict[str, str], progress: bool | None):  # noqa: ANN202
    k = len(before.class_names)
    names = transition_names(before.class_names)
    row_areas_cache: dict[tuple[int, int], np.ndarray] = {}
    areas: dict[int, float] = {}
    pixels: dict[int, int] = {}
    windows = list(_windows(grid, window_size))
    tags = {**date_tags, "SCENEWATCH_BEFORE": before.scene_id, "SCENEWATCH_AFTER": after.scene_id}
    with _change_writer(path, grid, names, before.model, before.model_version, tags) as writer, \
            _progress_bar(len(windows), f"change {path.name}", progress) as bar:
        for window in windows:
            cls_b, p_b = _read_classes(before, grid, window)
            cls_a, p_a = _read_classes(after, grid, window)
            codes = transition_codes(cls_b, cls_a, k, nodata=CLASS_NODATA)
            valid = codes != CHANGE_NODATA
            conf = np.where(valid, p_b * p_a, np.nan).astype(np.float32)
            writer.write(window, np.stack([codes, _encode_confidence(conf, valid)]))
            key = (window.row_off, window.height)
            if key not in row_areas_cache:
                row_areas_cache[key] = pixel_area_rows(grid, window)
            _accumulate_areas(codes, row_areas_cache[key], len(names), areas, pixels)
            bar.update(1)
        writer.finish()
    return names, (areas, pixels)


def _index_change(model: IndexDifference, before: str | Path, after: str | Path, grid: GridSpec, path: Path,
                  bands: Any, window_size: int, date_tags: dict[str, str],
                  progress: bool | None):  # noqa: ANN202
    indexes = []
    for scene in (before, after):
        meta = open_scene(scene)
        indexes.append(resolve_bands(meta, parse_band_map(bands, meta), model.bands))
    names = model.class_names
    areas: dict[int, float] = {}
    pixels: dict[int, int] = {}
    windows = list(_windows(grid, window_size))
    tags = {**date_tags, "SCENEWATCH_BEFORE": scene_id(before), "SCENEWATCH_AFTER": scene_id(after),
            "SCENEWATCH_DESCRIPTION": model.description}
    with _change_writer(path, grid, names, model.name, model.version, tags) as writer, \
            _progress_bar(len(windows), f"change {path.name}", progress) as bar:
        for window in windows:
            data_b, valid_b = read_aligned(before, grid, window, indexes[0], dtype="float32")
            data_a, valid_a = read_aligned(after, grid, window, indexes[1], dtype="float32")
            valid = valid_b & valid_a
            codes, conf = model.classify(model.difference(data_b, data_a), valid)
            writer.write(window, np.stack([codes, _encode_confidence(conf, valid)]))
            _accumulate_areas(codes, pixel_area_rows(grid, window), len(names), areas, pixels)
            bar.update(1)
        writer.finish()
    return names, (areas, pixels)


def compare_arrays(before: np.ndarray, after: np.ndarray, model: Any = "vegetation", *,
                   bands: dict[str, int] | None = None, valid: np.ndarray | None = None):  # noqa: ANN201
    """Change between two co-registered ``(channels, H, W)`` arrays: chips without georeferencing, or a
    notebook's own arrays. The same products as :func:`detect_change`, with no files and no grid.

    ``bands`` maps the model's band names to 0-based channels (default: the model's bands in channel order);
    ``valid`` marks usable pixels (default: not all channels zero on both dates). Returns a Dataset with
    ``change`` (uint8 codes) and ``confidence`` (float32, NaN where invalid).

    Example (OMBRIA chips, SWIR/NIR/red composites)::

        ds = compare_arrays(before_png, after_png, "water-swir", bands={"swir16": 0, "nir": 1, "red": 2})
        flooded = ds.change == ds.attrs["class_names"].index("other->water")
    """
    import xarray as xr

    from pipeline.change.transitions import pair_confidence
    from pipeline.models.model import ModelRef, load_model
    from pipeline.inference.predict import predict_array
    from pipeline.inference.stitch import classify

    before = np.asarray(before, dtype=np.float32)
    after = np.asarray(after, dtype=np.float32)
    if before.shape != after.shape or before.ndim != 3:
        raise ConfigError(f"compare_arrays: before {before.shape} and after {after.shape} must be equal "
                          "(channels, rows, cols) arrays")
    if valid is None:
        valid = before.any(axis=0) & after.any(axis=0)
    diff_model = difference_model(model) if isinstance(model, str) else None
    band_names = diff_model.bands if diff_model is not None else \
        load_model(ModelRef.of(model)).info.bands
    mapping = bands if bands is not None else {b: i for i, b in enumerate(band_names)}
    missing = [b for b in band_names if b not in mapping]
    if missing:
        raise ConfigError(f"compare_arrays: the model needs band(s) {', '.join(missing)}; pass bands="
                          f"{{{', '.join(repr(b) + ': <channel>' for b in band_names)}}}")
    pick = [mapping[b] for b in band_names]
    if diff_model is not None:
        codes, conf = diff_model.classify(diff_model.difference(before[pick], after[pick]), valid)
        names = diff_model.class_names
    else:
        seg = load_model(ModelRef.of(model))
        p_b, p_a = predict_array(seg, before[pick], valid), predict_array(seg, after[pick], valid)
        c_b, c_a = classify(p_b, valid), classify(p_a, valid)
        names = transition_names(seg.info.class_names)
        codes = transition_codes(c_b, c_a, seg.info.num_classes, nodata=CLASS_NODATA)
        conf = pair_confidence(np.nanmax(np.where(valid, p_b, 0), axis=0), np.nanmax(np.where(valid, p_a, 0), axis=0),
                               codes != CHANGE_NODATA)
    return xr.Dataset({"change": (("y", "x"), codes), "confidence": (("y", "x"), conf)},
                      attrs={"class_names": list(names), "model": str(model), "nodata": CHANGE_NODATA})


# ----------------------------------------------------------------------------------------------- polygons


def _code_confidence(codes_path: Path, n_codes: int, confidence: Any, window_size: int) -> Path:
    """A temporary ``n_codes``-band probability raster beside ``codes_path``: band ``c`` holds the confidence
    (uint8 ``c x 254``, scale 1/254) of the pixels whose code is ``c``, nodata elsewhere. It is the form in
    which the vectorizer reads a class raster's probabilities, so polygons get their mean and max confidence.
    ``confidence(window)`` gives float32 confidence in [0, 1] (NaN unknown) for a window of the grid."""
    from pipeline.atomic import temp_path_for

    grid = grid_of(codes_path)
    tmp = temp_path_for(codes_path.with_name(codes_path.name.replace(".tif", ".confidence.tif")))
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": n_codes, "dtype": "uint8",
               "crs": grid.crs, "transform": grid.transform, "nodata": CONFIDENCE_NODATA, "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "zstd", "zstd_level": 1, "interleave": "band"}
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.scales = [1.0 / CONFIDENCE_SCALE] * n_codes
            for window in _windows(grid, window_size):
                codes = read_aligned(codes_path, grid, window, [1])[0][0]
                conf = confidence(window)
                enc = np.where(np.isfinite(conf), np.rint(np.nan_to_num(conf) * CONFIDENCE_SCALE),
                               CONFIDENCE_NODATA).astype(np.uint8)
                out = np.full((n_codes, window.height, window.width), CONFIDENCE_NODATA, np.uint8)
                rows, cols = np.nonzero(codes < n_codes)
                out[codes[rows, cols], rows, cols] = enc[rows, cols]
                dst.write(out, window=rasterio.windows.Window(window.col_off, window.row_off, window.width,
                                                              window.height))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _vectorize(codes_path: Path, proba_path: Path, out_dir: Path, layer_id: str, keep: Sequence[str],
               attributes: dict[str, Any], acquired: dt.date | None, min_area: float, client: Any) -> Path:
    """Polygons of ``codes_path`` (classes ``keep``) into ``OUT/<layer_id>.gpkg`` through the tiled vectorizer:
    the project's layer columns (id, class_id, class_name, area_m2, perimeter_m, pixels, proba_mean, proba_max,
    scene_id, acquired, model, model_version) plus ``attributes``."""
    from workflows.vectorize import vectorize_scene

    result = vectorize_scene(codes_path, out_dir, formats=("gpkg",), proba_path=proba_path, min_area=min_area,
                             classes=list(keep), client=client, attributes=attributes, scene_id=layer_id,
                             acquired=acquired, progress=False)
    return Path(result.paths["gpkg"])


def _change_polygons(change_path: Path, out_dir: Path, name: str, names: Sequence[str],
                     dates: Sequence[dt.date | None], min_area: float, window_size: int, client: Any) -> Path:
    def confidence(window: PixelWindow) -> np.ndarray:
        raw = read_aligned(change_path, grid, window, [2])[0][0]
        return np.where(raw == CONFIDENCE_NODATA, np.nan, raw / CONFIDENCE_SCALE).astype(np.float32)

    grid = grid_of(change_path)
    proba = _code_confidence(change_path, len(names), confidence, window_size)
    try:
        attributes = {k: d for k, d in zip(("before_date", "after_date"), dates) if d is not None}
        return _vectorize(change_path, proba, out_dir, f"{name}.change", names[1:], attributes, dates[1],
                          min_area, client)
    finally:
        proba.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ quicklook


def _preview_grid(grid: GridSpec, max_size: int = 800) -> GridSpec:
    from pipeline.change.quicklook import preview_shape

    h, w = preview_shape(grid, max_size)
    return GridSpec(grid.crs, grid.transform @ Affine.scale(grid.width / w, grid.height / h), h, w)


def _rgb_indexes(path: str | Path, bands: Any) -> list[int]:
    meta = open_scene(path)
    band_map = parse_band_map(bands, meta).indexes
    if all(b in band_map for b in ("red", "green", "blue")):
        return [band_map["red"], band_map["green"], band_map["blue"]]
    return [min(i, meta.count) for i in (1, 2, 3)]


def _pair_quicklook(path: Path, before: str | Path, after: str | Path, change_path: Path, grid: GridSpec,
                    names: Sequence[str], dates: Sequence[dt.date | None], bands: Any) -> None:
    from pipeline.change.quicklook import save_pair_quicklook, stretch_rgb

    preview = _preview_grid(grid)
    images = []
    for scene in (before, after):
        if _is_class_raster(scene):
            data, valid = read_aligned(scene, preview, preview.bounds, [1, 1, 1], dtype="float32")
        else:
            data, valid = read_aligned(scene, preview, preview.bounds, _rgb_indexes(scene, bands), dtype="float32")
        images.append(stretch_rgb(data, valid))
    change, valid = read_aligned(change_path, preview, preview.bounds, [1])
    titles = [f"{label} {d.isoformat()}" if d else label for label, d in zip(("before", "after"), dates)]
    save_pair_quicklook(path, images[0], images[1], np.where(valid, change[0], CHANGE_NODATA), names,
                        titles=titles)


# ------------------------------------------------------------------------------------------------- timeline


def run_timeline(scenes: Sequence[str | Path], model: Any = "vegetation", out_dir: str | Path = ".", *,
                 date_pattern: str | None = None, grid: str | os.PathLike[str] | GridSpec | None = None,
                 watch: str | Sequence[str] | None = None, confirm: int = 2, client: Any = None,
                 name: str = "timeline", window_size: int = 1024, polygons: bool = True, plot: bool = True,
                 min_area: float = 0.0, progress: bool | None = None, **options: Any) -> TimelineResult:
    """Follow a dated stack of one place: area per class per date, an alert raster and change events.

    Dates come from STAC items, TIFF tags or the file names (``date_pattern``, see :mod:`pipeline.change.dates`);
    scenes are sorted by date and classified with ``model`` (existing ``*.classes.tif`` are reused). On the
    common ``grid`` (the earliest scene's by default) every pixel runs the alert state machine of
    :func:`pipeline.change.transitions.accumulate_alerts` over the dates: a ``watch``-ed transition (default: any change
    of class, e.g. ``"vegetation->other"``) seen on ``confirm`` observations is a confirmed alert.

    Writes ``OUT/<name>.alerts.tif`` (uint16 bands first_day, count, confidence, last_day; days since
    1970-01-01, 0 = none, 65535 = never observed), ``OUT/<name>.events.tif`` (uint8 index of the date of first
    detection, class names are the dates), ``OUT/<name>.events.gpkg`` (polygons: ``class_name`` is the date of
    first detection, ``proba_mean`` the alert confidence as 0.5 low / 1.0 high, ``area_m2``),
    ``OUT/<name>.areas.csv`` / ``.parquet`` and ``OUT/<name>.areas.png``.
    """
    if len(scenes) < 2:
        raise ConfigError(f"timeline: {len(scenes)} scene(s) given; a timeline needs at least two dates")
    if confirm < 1:
        raise ConfigError(f"timeline: confirm={confirm}; an alert needs at least one observation")
    out_dir = Path(out_dir)
    name = safe_name(name)
    pattern = compile_date_pattern(date_pattern) if date_pattern else None
    dated = sorted(((scene_date(s, pattern), str(s)) for s in scenes), key=lambda x: (x[0], x[1]))
    if len(dated) > 250:
        raise ConfigError(f"timeline: {len(dated)} dates; the events raster indexes at most 250 dates")
    ordered = [s for _, s in dated]
    dates = [d for d, _ in dated]
    target = common_grid(grid, ordered[0])
    _check_overlap(target, ordered)
    _check_inputs(ordered)
    to_classify = not all(_is_class_raster(p) for p in ordered)
    with _client_for(to_classify or polygons, options, client, model if to_classify else None) as (dask, rest):
        items = classify_dates(ordered, model, out_dir, dates, client=dask, progress=progress, options=rest)
        return _timeline_products(items, dates, target, out_dir, name, watch, confirm, window_size, polygons,
                                  plot, min_area, progress, dask)


def _timeline_products(items: list[DatedClasses], dates: list[dt.date], target: GridSpec, out_dir: Path, name: str,
                       watch: str | Sequence[str] | None, confirm: int, window_size: int, polygons: bool,
                       plot: bool, min_area: float, progress: bool | None, client: Any) -> TimelineResult:
    """Everything after classification: the window-by-window pass over all dates, then tables, polygons, plot."""
    import pandas as pd

    class_names = items[0].class_names
    k = len(class_names)
    watched = watch_matrix(class_names, watch)
    days = [days_since_epoch(d) for d in dates]
    if days[0] < 1:
        raise ConfigError(f"timeline: date {dates[0]} is before 1970-01-02; alert days count from 1970-01-01")
    area = np.zeros((len(items), k))
    count = np.zeros((len(items), k), dtype=np.int64)
    valid_area = np.zeros(len(items))
    alerts_path = out_dir / f"{name}.alerts.tif"
    events_path = out_dir / f"{name}.events.tif"
    meta = grid_meta(target)
    tags = {"SCENEWATCH_MODEL": items[0].model, "SCENEWATCH_MODEL_VERSION": items[0].model_version,
            "SCENEWATCH_DATES": ",".join(d.isoformat() for d in dates),
            "SCENEWATCH_WATCH": watch if isinstance(watch, str) else ",".join(watch or ["*"]),
            "SCENEWATCH_CONFIRM": str(confirm)}
    event_names = ["no alert", *(d.isoformat() for d in dates)]
    windows = list(_windows(target, window_size))
    # each writer is inside the `with` as soon as it exists: if the second cannot be made, or the run is
    # stopped meanwhile, the first's staging file is removed too
    with (
        CogWriter(alerts_path, meta, count=4, dtype="uint16", nodata=ALERT_NODATA, resampling="nearest",
                  descriptions=["first_day", "count", "confidence", "last_day"],
                  tags={**tags, "SCENEWATCH_PRODUCT": "alerts",
                        "SCENEWATCH_ENCODING": "days since 1970-01-01 (0 = none); confidence 0 none, "
                                               "1 low (provisional), 2 high (confirmed)"}) as alerts_w,
        CogWriter(events_path, meta, count=1, dtype="uint8", nodata=CHANGE_NODATA, resampling="nearest",
                  descriptions=["first detection"],
                  tags={**tags, "SCENEWATCH_PRODUCT": "events",
                        "SCENEWATCH_CLASSES": ",".join(event_names)}) as events_w,
        _progress_bar(len(windows), f"timeline {name}", progress) as bar,
    ):
        for window in windows:
            stack = np.stack([_read_classes_only(item, target, window) for item in items])
            row_areas = pixel_area_rows(target, window)
            weights = np.broadcast_to(row_areas[:, None], stack.shape[1:])
            for t in range(len(items)):
                ok = stack[t] != CLASS_NODATA
                area[t] += np.bincount(stack[t][ok].astype(np.intp), weights=weights[ok], minlength=k)[:k]
                count[t] += np.bincount(stack[t][ok].astype(np.intp), minlength=k)[:k]
                valid_area[t] += weights[ok].sum()
            layers = accumulate_alerts(stack, days, watched, confirm=confirm, nodata=CLASS_NODATA)
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
    csv_path, parquet_path = out_dir / f"{name}.areas.csv", out_dir / f"{name}.areas.parquet"
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.3f")
    with atomic_path(parquet_path) as tmp:
        table.to_parquet(tmp, index=False)
    events_poly = None
    if polygons:
        events_poly = _event_polygons(events_path, alerts_path, out_dir, name, event_names,
                                      {"watch": tags["SCENEWATCH_WATCH"], "confirm": confirm}, min_area,
                                      window_size, client)
    plot_path = None
    if plot:
        from pipeline.change.quicklook import save_area_plot

        plot_path = out_dir / f"{name}.areas.png"
        save_area_plot(plot_path, dates, {c: list(area[:, i]) for i, c in enumerate(class_names)},
                       title=f"{name}: area per class ({items[0].model})")
    return TimelineResult(name, tuple(items), target, class_names, alerts_path, events_path, events_poly, table,
                          csv_path, parquet_path, plot_path)


def _read_classes_only(item: DatedClasses, grid: GridSpec, window: PixelWindow) -> np.ndarray:
    data, valid = read_aligned(item.classes_path, grid, window, [1])
    return np.where(valid, data[0], CLASS_NODATA).astype(np.uint8)


def _event_polygons(events_path: Path, alerts_path: Path, out_dir: Path, name: str, names: Sequence[str],
                    attributes: dict[str, Any], min_area: float, window_size: int, client: Any) -> Path:
    """Change events: one polygon per patch first detected on the same date (``class_name`` is that date);
    ``proba_mean``/``proba_max`` are the alert confidence as a probability (low 0.5, high 1.0)."""
    def confidence(window: PixelWindow) -> np.ndarray:
        level = read_aligned(alerts_path, grid, window, [3])[0][0].astype(np.float32)
        return np.where((level == 0) | (level == ALERT_NODATA), np.nan, level / 2.0).astype(np.float32)

    grid = grid_of(events_path)
    proba = _code_confidence(events_path, len(names), confidence, window_size)
    try:
        return _vectorize(events_path, proba, out_dir, f"{name}.events", names[1:], attributes, None, min_area,
                          client)
    finally:
        proba.unlink(missing_ok=True)
