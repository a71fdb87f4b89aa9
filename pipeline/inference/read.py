"""Reading scenes: metadata checks before any pixel, band maps, and window reads.

The first stage of the pipeline. :func:`open_scene` reads only the header and refuses, with one line naming
the file, what cannot work (not a raster, no CRS, too many pixels, a truncated file). :func:`read_window`
reads one tile's pixels; it is what each Dask task calls, so every worker opens the file itself and no
process ever holds the whole scene.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.errors import CRSError, NodataShadowWarning, RasterioIOError
from rasterio.windows import Window

from pipeline.errors import BandMapError, InvalidSceneError, SceneOpenError, SceneReadError
from tiles.grid import PixelWindow

__all__ = [
    "SceneMeta",
    "BandMap",
    "SENSOR_PRESETS",
    "open_scene",
    "parse_band_map",
    "resolve_bands",
    "read_window",
    "read_cache_bytes",
    "use_read_cache",
    "SUPPORTED_DTYPES",
]

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")

# STAC "eo" common names, in file band order, for the usual products.
SENSOR_PRESETS: dict[str, tuple[str, ...]] = {
    "rgb": ("red", "green", "blue"),
    "rgbn": ("red", "green", "blue", "nir"),
    "naip": ("red", "green", "blue", "nir"),
    "bgrn": ("blue", "green", "red", "nir"),  # WorldView/Planet 4-band analytic order
    # Sentinel-2 L1C, all 13 bands B01..B12 with B8A after B08.
    "sentinel2": ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
                  "nir09", "cirrus", "swir16", "swir22"),
    # Sentinel-2 L2A, 12 bands (no B10 cirrus).
    "sentinel2-l2a": ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
                      "nir09", "swir16", "swir22"),
    # Landsat 8/9 OLI Collection 2 surface reflectance, SR_B1..SR_B7.
    "landsat8": ("coastal", "blue", "green", "red", "nir", "swir16", "swir22"),
    "landsat9": ("coastal", "blue", "green", "red", "nir", "swir16", "swir22"),
    # Landsat 4-7 TM/ETM+ reflective bands SR_B1..SR_B5, SR_B7.
    "landsat7": ("blue", "green", "red", "nir", "swir16", "swir22"),
    "landsat5": ("blue", "green", "red", "nir", "swir16", "swir22"),
}

# Band descriptions that name a common band, as files from common tools write them.
_DESCRIPTION_ALIASES: dict[str, str] = {
    "b01": "coastal", "b1": "coastal", "b02": "blue", "b2": "blue", "b03": "green", "b3": "green",
    "b04": "red", "b4": "red", "b05": "rededge1", "b5": "rededge1", "b06": "rededge2", "b6": "rededge2",
    "b07": "rededge3", "b7": "rededge3", "b08": "nir", "b8": "nir", "b8a": "nir08", "b09": "nir09",
    "b9": "nir09", "b10": "cirrus", "b11": "swir16", "b12": "swir22", "near infrared": "nir",
    "near-infrared": "nir", "infrared": "nir", "swir1": "swir16", "swir2": "swir22",
}
_COMMON_NAMES = frozenset(n for names in SENSOR_PRESETS.values() for n in names)


@dataclass(frozen=True, slots=True)
class SceneMeta:
    """What the pipeline knows of a scene before reading pixels. ``assumed_crs`` marks a CRS given by the
    user for a file that has none."""

    path: str
    crs: CRS
    transform: Affine
    height: int
    width: int
    count: int
    dtype: str
    nodata: float | None
    block_height: int
    block_width: int
    descriptions: tuple[str | None, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def bounds(self) -> PixelWindow:
        return PixelWindow(0, 0, self.height, self.width)


@dataclass(frozen=True, slots=True)
class BandMap:
    """Band names to 1-based band indexes in a file, e.g. ``red -> 1, nir -> 4``."""

    indexes: Mapping[str, int]

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.indexes.items())


def _scene_error_prefix(path: str | Path) -> str:
    return f"scene {Path(path).name}"


def open_scene(path: str | Path, *, max_pixels: int | None = None, assume_crs: str | None = None) -> SceneMeta:
    """Read and check a scene's header; no pixel is decoded except one block to detect truncation.

    Raises :class:`SceneOpenError` for a missing or non-raster file and :class:`InvalidSceneError` for a
    raster that cannot be used (no CRS and none assumed, more than ``max_pixels`` pixels, unsupported type).
    """
    path = str(path)
    where = _scene_error_prefix(path)
    if not Path(path).exists() and "://" not in path and not path.startswith("/vsi"):
        raise SceneOpenError(f"{where}: no such file ({path})")
    try:
        src = rasterio.open(path)
    except RasterioIOError as err:
        reason = str(err).splitlines()[0] if str(err) else "unreadable header"
        raise SceneOpenError(f"{where}: not a readable raster ({reason})") from err
    with src:
        if max_pixels is not None and src.height * src.width > max_pixels:
            raise InvalidSceneError(
                f"{where}: {src.width} x {src.height} px is {src.width * src.height:,} pixels, over the limit "
                f"of {max_pixels:,}; raise `max_pixels` if this is intended"
            )
        crs = src.crs
        if assume_crs is not None:
            try:
                crs = CRS.from_user_input(assume_crs)
            except CRSError as err:
                raise InvalidSceneError(f"{where}: `assume_crs` {assume_crs!r} is not a CRS") from err
        if crs is None:
            raise InvalidSceneError(
                f"{where}: no CRS; re-export it with one or set `assume_crs` (e.g. EPSG:32618)"
            )
        dtypes = set(src.dtypes)
        if len(dtypes) != 1 or src.dtypes[0] not in SUPPORTED_DTYPES:
            raise InvalidSceneError(
                f"{where}: band data type {', '.join(sorted(dtypes))} is not supported "
                f"(supported: {', '.join(SUPPORTED_DTYPES)})"
            )
        block_h, block_w = src.block_shapes[0]
        _probe_last_block(src, where, block_h, block_w)
        return SceneMeta(
            path=path,
            crs=crs,
            transform=src.transform,
            height=src.height,
            width=src.width,
            count=src.count,
            dtype=src.dtypes[0],
            nodata=src.nodata,
            block_height=block_h,
            block_width=block_w,
            descriptions=tuple(src.descriptions),
            tags=dict(src.tags()),
        )


def _probe_last_block(src: rasterio.DatasetReader, where: str, block_h: int, block_w: int) -> None:
    """Decode the last block of the last band: a truncated file fails here, before any work is planned."""
    row = ((src.height - 1) // block_h) * block_h
    col = ((src.width - 1) // block_w) * block_w
    window = Window(col, row, min(block_w, src.width - col), min(block_h, src.height - row))
    try:
        src.read(src.count, window=window)
    except RasterioIOError as err:
        raise SceneReadError(f"{where}: pixels cannot be read, the file looks truncated or corrupt") from err


_PAIR = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(\d+)\s*$")


def parse_band_map(spec: str | Mapping[str, int] | BandMap | None, meta: SceneMeta | None = None) -> BandMap:
    """A band map from ``"red=1,nir=4"``, a preset name (``naip``, ``sentinel2``, ...), a mapping, or, given
    None, from the scene's band descriptions.
    """
    if isinstance(spec, BandMap):
        return spec
    if isinstance(spec, Mapping):
        return BandMap(dict(spec))
    if spec is None or spec == "":
        return _band_map_from_descriptions(meta) if meta is not None else BandMap({})
    key = spec.strip().lower()
    if key in SENSOR_PRESETS:
        return BandMap({name: i + 1 for i, name in enumerate(SENSOR_PRESETS[key])})
    indexes: dict[str, int] = {}
    for part in spec.split(","):
        match = _PAIR.match(part)
        if match is None:
            presets = ", ".join(SENSOR_PRESETS)
            raise BandMapError(
                f"band map {spec!r}: cannot read {part.strip()!r}; write name=index pairs like "
                f"red=1,nir=4 or use a preset ({presets})"
            )
        name, index = match.group(1).lower(), int(match.group(2))
        if index < 1:
            raise BandMapError(f"band map {spec!r}: band indexes start at 1, got {name}={index}")
        indexes[name] = index
    return BandMap(indexes)


def _band_map_from_descriptions(meta: SceneMeta) -> BandMap:
    indexes: dict[str, int] = {}
    for i, desc in enumerate(meta.descriptions, start=1):
        if not desc:
            continue
        name = desc.strip().lower()
        name = _DESCRIPTION_ALIASES.get(name, name)
        if name in _COMMON_NAMES and name not in indexes:
            indexes[name] = i
    return BandMap(indexes)


def resolve_bands(meta: SceneMeta, band_map: BandMap, required: Sequence[str]) -> tuple[int, ...]:
    """The 1-based band indexes of ``required`` bands, in that order; an error names every problem."""
    where = _scene_error_prefix(meta.path)
    out_of_range = {n: i for n, i in band_map.indexes.items() if i > meta.count}
    if out_of_range:
        listed = ", ".join(f"{n}={i}" for n, i in out_of_range.items())
        raise BandMapError(f"{where}: band map names band {listed} but the file has {meta.count} band(s)")
    missing = [name for name in required if name not in band_map.indexes]
    if missing:
        have = str(band_map) or "no named bands"
        raise BandMapError(
            f"{where}: the model needs band(s) {', '.join(missing)} but the band map has {have}; "
            f"set `bands` (e.g. red=1,green=2,blue=3,nir=4) or a preset such as naip or sentinel2"
        )
    return tuple(band_map.indexes[name] for name in required)


def read_window(meta: SceneMeta, window: PixelWindow, indexes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Read ``indexes`` over ``window``: float32 pixels ``(bands, rows, cols)`` and a ``(rows, cols)`` bool
    mask of valid pixels.

    Validity is GDAL's dataset mask (an internal mask or alpha band if the file has one; otherwise a pixel
    is nodata when every band holds the nodata value, so a black collar is nodata but a dark pixel with one
    zero band is not), and NaN or infinite values in the bands read are invalid too.

    Invalid pixels are set to 0 in the returned data so that models see a defined value.
    """
    rio_window = Window(window.col_off, window.row_off, window.width, window.height)
    try:
        src = _open_for_reading(meta.path)
        data = src.read(list(indexes), window=rio_window, out_dtype="float32")
        valid = _valid_from_bands(src, indexes, data)
        if valid is None:
            with warnings.catch_warnings():
                # A 4-band file whose last band GDAL takes for alpha, and which also has a nodata value:
                # nodata wins, which is what we want; the warning would repeat for every tile.
                warnings.simplefilter("ignore", NodataShadowWarning)
                valid = src.dataset_mask(window=rio_window) > 0
    except (RasterioIOError, OSError) as err:
        raise SceneReadError(
            f"scene {meta.name}: pixels at rows {window.row_off}-{window.row_end}, columns "
            f"{window.col_off}-{window.col_end} cannot be read; the file looks truncated or corrupt"
        ) from err
    if any(src.dtypes[band - 1] in _FLOAT_DTYPES for band in indexes):
        valid &= np.all(np.isfinite(data), axis=0)
    if not valid.all():
        data[:, ~valid] = 0.0
    return data, valid


_FLOAT_DTYPES = ("float16", "float32", "float64", "complex64", "complex128")
# integer types that float32 holds exactly, so that a nodata value compares equal after the read
_SMALL_INTS = ("uint8", "int8", "uint16", "int16")


def _valid_from_bands(src: rasterio.DatasetReader, indexes: Sequence[int], data: np.ndarray) -> np.ndarray | None:
    """GDAL's dataset mask computed from the bands just read, where that gives the same answer; None
    where only GDAL can tell (an internal mask, an alpha band, bands not read, float nodata).

    With no mask at all every pixel is valid; with a nodata value on every band (and nothing else), a
    pixel is invalid where every band holds its nodata value. Asking GDAL re-read every band from the block
    cache for that: about 1 ms of a 9 ms read of a 576 px, 4-band uint16 tile.
    """
    flags = src.mask_flag_enums
    if all(f == [MaskFlags.all_valid] for f in flags):
        return np.ones(data.shape[1:], dtype=bool)
    if not (all(f == [MaskFlags.nodata] for f in flags) and set(indexes) == set(range(1, src.count + 1))
            and all(t in _SMALL_INTS for t in src.dtypes)):
        return None
    valid = np.zeros(data.shape[1:], dtype=bool)
    for i, band in enumerate(indexes):
        valid |= data[i] != np.float32(src.nodatavals[band - 1])
    return valid


# Datasets stay open between windows, per thread (a GDAL dataset is not thread-safe), so that the blocks
# neighbouring tiles share are decoded once and served from GDAL's block cache: a 576 px window of a tile
# with a 32 px halo touches 3 x 3 blocks of 512 px, and reopening the file for every tile decoded each
# block up to nine times (51 ms per tile against 6.5 ms for the core alone).
_OPEN_PER_THREAD = 2
_local = threading.local()


def _open_for_reading(path: str) -> rasterio.DatasetReader:
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size, stat.st_ino)  # a file rewritten in place is reopened
    handles: OrderedDict[tuple[Any, ...], rasterio.DatasetReader] = _local.__dict__.setdefault(
        "handles", OrderedDict())
    src = handles.get(key)
    if src is None or src.closed:
        src = handles[key] = rasterio.open(path)
        while len(handles) > _OPEN_PER_THREAD:
            handles.popitem(last=False)[1].close()
    handles.move_to_end(key)
    return src


READ_CACHE_MB = 256


def read_cache_bytes(meta: SceneMeta, halo: int, span: int | None = None) -> int:
    """GDAL block cache worth having while reading tiles of ``meta`` with ``halo`` across ``span`` pixels
    (default: the scene's width): three rows of blocks over the span (a tile row reads its own blocks and
    the halo's rows above and below, which the next tile row reads again; an LRU cache smaller than that
    evicts exactly the blocks needed next), at most :data:`READ_CACHE_MB`; 16 MiB when tiles have no halo,
    whose blocks are read once. ``predict_scene`` reads in stripes a few tiles wide, so the cache follows
    the stripe, not the scene."""
    if halo <= 0:
        return 16 * 2**20
    span = meta.width if span is None else min(span, meta.width)
    block_w = meta.block_width if meta.block_width < meta.width else meta.width
    across = min(meta.width, (-(-span // block_w) + 1) * block_w)  # a span starts anywhere in a block
    row = across * meta.block_height * meta.count * np.dtype(meta.dtype).itemsize
    return int(min(READ_CACHE_MB * 2**20, 3 * row + 16 * 2**20))


def use_read_cache(meta: SceneMeta, halo: int, span: int | None = None) -> None:
    """Size this process's GDAL block cache for reading tiles of ``meta`` (:func:`read_cache_bytes`)."""
    want = read_cache_bytes(meta, halo, span)
    if get_gdal_config("GDAL_CACHEMAX") != want:
        set_gdal_config("GDAL_CACHEMAX", want)  # bytes (rasterio hands the number to GDAL as is)
