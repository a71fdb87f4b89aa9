"""Change products on disk: each date's classes read window by window on the common grid, and the change,
alert and event rasters written (COGs, through :class:`pipeline.inference.raster.CogWriter`).

Tags and file names follow :mod:`pipeline.products`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from pipeline.change.align import GridSpec, grid_meta, grid_of, read_aligned
from pipeline.change.compare import CONFIDENCE_NODATA, CONFIDENCE_SCALE
from pipeline.change.transitions import ALERT_NODATA, CHANGE_NODATA
from pipeline.colours import change_colours, colour_table, layer_colours
from pipeline.errors import InvalidSceneError
from pipeline.inference.raster import CogWriter
from pipeline.inference.read import open_raster
from pipeline.inference.stitch import decode_proba
from pipeline.products import CLASS_NODATA, Tag, class_names_from_tags, class_tags, model_tags, name_of, proba_beside
from tiles.grid import PixelWindow, plan_tiles

__all__ = [
    "DatedClasses",
    "dated_classes",
    "windows",
    "read_classes",
    "read_classes_only",
    "change_writer",
    "alerts_writer",
    "events_writer",
    "write_code_confidence",
]


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


def dated_classes(path: Path, date: dt.date | None) -> DatedClasses:
    """An existing class raster (ours or anyone's with the same tags), with its probabilities if beside it."""
    with open_raster(path, "class raster") as src:  # given by the user: untrusted input, as a scene is
        tags = src.tags()
    names = tuple(n for n in class_names_from_tags(tags) if n)
    if not names:
        raise InvalidSceneError(
            f"class raster {path.name}: no {Tag.CLASSES} tag naming its classes; write one "
            f"(e.g. gdal_edit.py -mo {Tag.CLASSES}=other,vegetation) or pass the scene itself"
        )
    proba = proba_beside(path)
    return DatedClasses(str(path), name_of(path), date, path, proba if proba.exists() else None, names,
                        tags.get(Tag.MODEL, ""), tags.get(Tag.MODEL_VERSION, ""))


def windows(grid: GridSpec, size: int) -> Iterator[PixelWindow]:
    """The grid in windows of ``size`` pixels, row-major."""
    for tile in plan_tiles(grid.height, grid.width, size, 0):
        yield tile.core_window


def read_classes(item: DatedClasses, grid: GridSpec, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
    """Classes (uint8, CLASS_NODATA where invalid) and the probability of each pixel's class (float32; 1 when
    the date has no probability raster, NaN where it has no data)."""
    classes = read_classes_only(item, grid, window)
    k = len(item.class_names)
    p = np.ones(classes.shape, dtype=np.float32)
    if item.proba_path is not None:
        stored, pvalid = read_aligned(item.proba_path, grid, window)
        proba = decode_proba(stored)
        idx = np.clip(classes, 0, k - 1).astype(np.intp)
        p = np.take_along_axis(proba, idx[None], axis=0)[0].astype(np.float32)
        p[~pvalid] = np.nan
    return classes, p


def read_classes_only(item: DatedClasses, grid: GridSpec, window: PixelWindow) -> np.ndarray:
    data, valid = read_aligned(item.classes_path, grid, window, [1])
    return np.where(valid, data[0], CLASS_NODATA).astype(np.uint8)


def change_writer(path: Path, grid: GridSpec, names: Sequence[str], model: str, version: str,
                  extra_tags: Mapping[str, str]) -> CogWriter:
    """The change raster's writer: band 1 transition code (names in the class tag; colour table: the change
    palette of :mod:`pipeline.colours`), band 2 confidence."""
    colormap = colour_table(change_colours(names), CHANGE_NODATA)
    tags = {**class_tags(names), **model_tags(model, version), Tag.PRODUCT: "change", **extra_tags}
    return CogWriter(path, grid_meta(grid), count=2, dtype="uint8", nodata=CHANGE_NODATA, resampling="nearest",
                     descriptions=["transition", "confidence"], colormap=colormap, tags=tags,
                     band_tags=[{}, {"SCALE_NOTE": f"confidence = value / {CONFIDENCE_SCALE}"}])


def alerts_writer(path: Path, grid: GridSpec, tags: Mapping[str, str]) -> CogWriter:
    """A timeline's alert raster: uint16 first_day, count, confidence, last_day."""
    return CogWriter(path, grid_meta(grid), count=4, dtype="uint16", nodata=ALERT_NODATA, resampling="nearest",
                     descriptions=["first_day", "count", "confidence", "last_day"],
                     tags={**tags, Tag.PRODUCT: "alerts",
                           Tag.ENCODING: "days since 1970-01-01 (0 = none); confidence 0 none, "
                                         "1 low (provisional), 2 high (confirmed)"})


def events_writer(path: Path, grid: GridSpec, event_names: Sequence[str], tags: Mapping[str, str]) -> CogWriter:
    """A timeline's events raster: uint8 index of the date of first detection (the class names; colour
    table: :func:`pipeline.colours.layer_colours`' date ramp, "no alert" light grey)."""
    return CogWriter(path, grid_meta(grid), count=1, dtype="uint8", nodata=CHANGE_NODATA, resampling="nearest",
                     descriptions=["first detection"],
                     colormap=colour_table(layer_colours(event_names), CHANGE_NODATA),
                     tags={**tags, Tag.PRODUCT: "events", **class_tags(event_names)})


def write_code_confidence(codes_path: Path, n_codes: int, confidence: Callable[[PixelWindow], np.ndarray],
                          window_size: int) -> Path:
    """A temporary ``n_codes``-band probability raster beside ``codes_path``: band ``c`` holds the confidence
    (uint8 ``c x 254``, scale 1/254) of the pixels whose code is ``c``, nodata elsewhere. It is the form in
    which the vectorizer reads a class raster's probabilities, so polygons get their mean and max confidence.
    ``confidence(window)`` gives float32 confidence in [0, 1] (NaN unknown) for a window of the grid. The
    caller removes the file."""
    from pipeline.atomic import temp_path_for

    grid = grid_of(codes_path)
    tmp = temp_path_for(codes_path.with_name(codes_path.name.replace(".tif", ".confidence.tif")))
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": n_codes, "dtype": "uint8",
               "crs": grid.crs, "transform": grid.transform, "nodata": CONFIDENCE_NODATA, "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "zstd", "zstd_level": 1, "interleave": "band"}
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.scales = [1.0 / CONFIDENCE_SCALE] * n_codes
            for window in windows(grid, window_size):
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
