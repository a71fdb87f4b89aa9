"""Labels on a scene's grid: a label raster, or vector polygons with a class attribute rasterized.

Training and evaluation both need, for any window of a scene, the class of every pixel as ``uint8`` with
:data:`IGNORE` (255) where nothing is known (label nodata, outside the label raster, scene nodata). Two
sources give that:

- a **label raster** whose values are class numbers 0..K-1 (its nodata, and 255, mean "unknown"). When its
  grid differs from the scene's (CRS, resolution, extent), it is warped onto the scene grid on the fly with
  nearest-neighbour resampling (GDAL's WarpedVRT), window by window.
- **vector labels** (GeoJSON, GeoPackage, anything pyogrio reads): polygons reprojected to the scene's CRS
  once (geopandas), then burned into each window (``rasterio.features.rasterize``). Pixels outside every
  polygon are class 0 (background), as usual for footprint labels. With a class attribute, each value must
  be a class name or a class number; without one, every polygon is class 1 (e.g. "building").

Reading (:func:`open_labels`) and burning (:func:`rasterize_labels`) are separate so the burning can be
tested on plain geometries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from pipeline.errors import ConfigError, SceneOpenError
from pipeline.inference.read import SceneMeta, open_raster
from pipeline.products import IGNORE
from tiles.grid import PixelWindow

__all__ = ["IGNORE", "VECTOR_SUFFIXES", "Labels", "open_labels", "read_labels", "rasterize_labels",
           "class_codes"]

VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".parquet", ".geoparquet")


@dataclass(frozen=True, slots=True)
class Labels:
    """Labels ready to be read window by window on ``meta``'s grid.

    Either ``raster`` (a path) or ``geometries``/``codes`` (polygons in the scene CRS and their class
    numbers) is set. ``num_classes`` is K; raster values outside 0..K-1 other than nodata are refused.
    """

    source: str
    meta: SceneMeta
    num_classes: int
    raster: str | None = None
    geometries: tuple[Any, ...] = ()
    codes: tuple[int, ...] = ()

    @property
    def is_vector(self) -> bool:
        return self.raster is None


def _is_vector(path: Path) -> bool:
    return path.suffix.lower() in VECTOR_SUFFIXES


def class_codes(values: Sequence[Any], class_names: Sequence[str], attribute: str, where: str) -> list[int]:
    """Class numbers for attribute values: a class name (any case) or a number 0..K-1; anything else is an
    error naming the value and the classes."""
    by_name = {c.lower(): i for i, c in enumerate(class_names)}
    codes = []
    for value in values:
        key = str(value).strip().lower()
        if key in by_name:
            codes.append(by_name[key])
            continue
        try:
            number = float(key)
        except ValueError:
            number = -1.0
        if number.is_integer() and 0 <= number < len(class_names):
            codes.append(int(number))
            continue
        raise ConfigError(f"labels {where}: {attribute}={value!r} is neither a class name nor a class number "
                          f"({', '.join(f'{i}={c}' for i, c in enumerate(class_names))}); fix the attribute "
                          f"or set the right `classes`")
    return codes


def open_labels(path: str | Path, meta: SceneMeta, class_names: Sequence[str],
                attribute: str | None = None) -> Labels:
    """Check the labels at ``path`` against the scene; vector labels are read and reprojected here, once."""
    path = Path(path)
    where = path.name
    if not path.exists():
        raise SceneOpenError(f"labels {where}: no such file ({path})")
    k = len(class_names)
    if not _is_vector(path):
        try:
            with open_raster(path, "labels") as src:  # a label raster is untrusted input as a scene is
                if src.crs is None:
                    raise ConfigError(f"labels {where}: the label raster has no CRS; give it the scene's")
        except SceneOpenError as err:
            if not isinstance(err.__cause__, RasterioIOError):
                raise  # not a regular file, a VRT, GDAL syntax: open_raster's line says it
            raise SceneOpenError(f"labels {where}: neither a vector file ({', '.join(VECTOR_SUFFIXES)}) nor a "
                                 f"readable raster") from err.__cause__
        return Labels(source=str(path), meta=meta, num_classes=k, raster=str(path))
    import geopandas as gpd

    try:
        frame = gpd.read_file(path)
    except Exception as err:  # pyogrio raises its own DataSourceError family; all mean "cannot read"
        raise SceneOpenError(f"labels {where}: cannot be read as vector data ({err})") from err
    if frame.crs is None:
        raise ConfigError(f"labels {where}: no CRS; write the file with one (GeoJSON is EPSG:4326 by default)")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    if attribute is not None:
        if attribute not in frame.columns:
            raise ConfigError(f"labels {where}: no attribute {attribute!r}; it has "
                              f"{', '.join(c for c in frame.columns if c != 'geometry')}")
        frame = frame[frame[attribute].notna()]
        codes = class_codes(frame[attribute].tolist(), class_names, attribute, where)
    else:
        if k < 2:
            raise ConfigError(f"labels {where}: without `label_attribute` every polygon is class 1, so give "
                              f"at least two classes (e.g. background,building)")
        codes = [1] * len(frame)
    frame = frame.to_crs(meta.crs)
    return Labels(source=str(path), meta=meta, num_classes=k, geometries=tuple(frame.geometry), codes=tuple(codes))


def rasterize_labels(geometries: Sequence[Any], codes: Sequence[int], window: PixelWindow,
                     meta: SceneMeta) -> np.ndarray:
    """Burn polygons (scene CRS) into ``window`` as uint8 class numbers, 0 outside every polygon. A pixel is
    a polygon's when its centre is inside (GDAL's default rule); where polygons overlap, the later wins."""
    from rasterio.features import rasterize
    from shapely import box

    transform = window_transform(Window(window.col_off, window.row_off, window.width, window.height),
                                 meta.transform)
    shape = (window.height, window.width)
    if not geometries:
        return np.zeros(shape, dtype=np.uint8)
    left, top = transform * (0, 0)
    right, bottom = transform * (window.width, window.height)
    area = box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    shapes = [(g, int(c)) for g, c in zip(geometries, codes, strict=True) if g.intersects(area)]
    if not shapes:
        return np.zeros(shape, dtype=np.uint8)
    return rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8")


def read_labels(labels: Labels, window: PixelWindow, valid: np.ndarray | None = None) -> np.ndarray:
    """Class numbers of ``window`` (uint8, :data:`IGNORE` where unknown or where ``valid`` is False)."""
    if labels.is_vector:
        out = rasterize_labels(labels.geometries, labels.codes, window, labels.meta)
    else:
        out = _read_label_raster(labels, window)
    if valid is not None:
        out[~valid] = IGNORE
    return out


def _read_label_raster(labels: Labels, window: PixelWindow) -> np.ndarray:
    from rasterio.vrt import WarpedVRT

    meta = labels.meta
    rio_window = Window(window.col_off, window.row_off, window.width, window.height)
    assert labels.raster is not None
    name = Path(labels.raster).name
    try:
        with open_raster(labels.raster, "labels") as src:
            same_grid = (src.crs == meta.crs and src.transform.almost_equals(meta.transform)
                         and (src.height, src.width) == (meta.height, meta.width))
            if same_grid:
                data = src.read(1, window=rio_window, masked=True)
            else:
                with WarpedVRT(src, crs=meta.crs, transform=meta.transform, height=meta.height,
                               width=meta.width, resampling=Resampling.nearest,
                               src_nodata=src.nodata if src.nodata is not None else IGNORE,
                               nodata=src.nodata if src.nodata is not None else IGNORE) as vrt:
                    data = vrt.read(1, window=rio_window, masked=True)
    except RasterioIOError as err:
        raise SceneOpenError(f"labels {name}: pixels cannot be read ({err})") from err
    values = np.ma.filled(data.astype(np.int64), IGNORE)
    bad = (values != IGNORE) & ((values < 0) | (values >= labels.num_classes))
    if bad.any():
        raise ConfigError(f"labels {name}: value {int(values[bad][0])} is not a class number 0.."
                          f"{labels.num_classes - 1} (nor nodata or 255); remap the raster or set the right "
                          f"`classes`")
    return values.astype(np.uint8)
