"""Reading scenes: metadata checks before any pixel, band maps, and window reads.

The first stage of the pipeline. :func:`open_scene` reads only the header and refuses, with one line naming
the file, what cannot work (not a raster, no CRS, too many pixels, a truncated file). :func:`read_window`
reads one tile's pixels; it is what each Dask task calls, so every worker opens the file itself and no
process ever holds the whole scene.

Scenes are untrusted input, and GDAL opens whatever a file says it is: a ``.tif`` that is really VRT XML
reads other files or URLs of its author's choosing, a FIFO blocks forever, a 400-byte file can declare
gigabytes. :func:`open_raster` is the one way an input raster is opened here and in the stages that read
other inputs (label rasters, class rasters, grids): only regular files or explicit remote URLs, only the
drivers in :data:`SCENE_DRIVERS` (VRT when the caller asks), no GDAL filename syntax, no sidecar files.
:func:`open_scene` then checks the declared size against the file's before any pixel is decoded.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
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

from pipeline.errors import BandMapError, InvalidSceneError, SceneOpenError, SceneReadError, ScenewatchError
from pipeline.inference.masks import BoundMask, dilate, unusable_pixels
from pipeline.inference.stac import (
    BandSource,
    ItemGrid,
    SourceOptions,
    cloud_settings,
    default_resampling,
    is_stac_item,
    item_grid,
    item_sources,
    load_item,
    read_source,
    split_fragment,
)
from tiles.grid import PixelWindow

__all__ = [
    "clear_remote_cache",
    "SceneMeta",
    "BandMap",
    "SENSOR_PRESETS",
    "SCENE_DRIVERS",
    "REMOTE_SCHEMES",
    "DEFAULT_MAX_COMPRESSION_RATIO",
    "DEFAULT_MAX_BLOCK_BYTES",
    "check_input_path",
    "check_georeferenced",
    "open_raster",
    "open_scene",
    "parse_band_map",
    "resolve_bands",
    "read_window",
    "read_item_on_grid",
    "read_cache_bytes",
    "use_read_cache",
    "SUPPORTED_DTYPES",
]

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")

SCENE_DRIVERS: tuple[str, ...] = ("GTiff",)
"""GDAL drivers an input raster may be read with. A COG is a GeoTIFF to a reader (GDAL's COG driver only
writes), and GeoTIFF/COG is all that README.md and docs/ promise. ``VRT`` is added only when a caller passes
``allow_vrt``: a VRT reads whatever files and URLs its XML names."""

REMOTE_SCHEMES: tuple[str, ...] = ("http", "https", "s3", "gs", "az")
"""URL schemes accepted when the user gives a URL as the input itself (STAC hrefs); GDAL reads them through
its /vsicurl/-family handlers, which a path written as /vsi... may not name directly."""

DEFAULT_MAX_COMPRESSION_RATIO = 10_000.0
"""Most a scene's declared pixels (width x height x bands x bytes per value) may outnumber its file's bytes
before :func:`open_scene` refuses it. GDAL's security notes: "huge raster dimensions but a very small file
size might be suspicious". Measured: every GeoTIFF in shared/data and examples/data is under 37 (a
mostly-empty burn-scar mask; imagery 0.8-1.4), the OMBRIA PNG masks reach 440, and a constant class raster
written as our COGs are (DEFLATE level 1, with overviews) 576 (ZSTD level 9: 3,700). A 106 KB file
declaring 48000 x 48000 x 4 bytes, which ran 185 s, is 87,000."""

DEFAULT_MAX_BLOCK_BYTES = 256 * 2**20
"""Largest one block (block width x height x bands x bytes per value) :func:`open_scene` accepts: GDAL
decodes a whole block to read any pixel of it, so a 370-byte file with one 1 GiB block cost 2.7 GB of
memory. The largest block in shared/data and examples/data is 1 MiB (512 x 512 x 4 bytes)."""

# STAC "eo" common names, in file band order, for the usual products.
SENSOR_PRESETS: dict[str, tuple[str, ...]] = {
    "rgb": ("red", "green", "blue"),
    "rgbn": ("red", "green", "blue", "nir"),
    "naip": ("red", "green", "blue", "nir"),
    "bgrn": ("blue", "green", "red", "nir"),  # WorldView/Planet 4-band analytic order
    # Sentinel-2 L1C, all 13 bands B01..B12 with B8A after B08.
    "sentinel2": ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
                  "nir09", "cirrus", "swir16", "swir22"),
    # Sentinel-2 L2A, 12 bands (no B10 cirrus), then the scene classification SCL if the file has it
    # (`--mask scl`); a band a preset names past the file's last is simply absent.
    "sentinel2-l2a": ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
                      "nir09", "swir16", "swir22", "scl"),
    # Landsat 8/9 OLI Collection 2 surface reflectance, SR_B1..SR_B7, then QA_PIXEL (`--mask qa_pixel`).
    "landsat8": ("coastal", "blue", "green", "red", "nir", "swir16", "swir22", "qa_pixel"),
    "landsat9": ("coastal", "blue", "green", "red", "nir", "swir16", "swir22", "qa_pixel"),
    # Landsat 4-7 TM/ETM+ reflective bands SR_B1..SR_B5, SR_B7, then QA_PIXEL.
    "landsat7": ("blue", "green", "red", "nir", "swir16", "swir22", "qa_pixel"),
    "landsat5": ("blue", "green", "red", "nir", "swir16", "swir22", "qa_pixel"),
}

# Band descriptions that name a common band, as files from common tools write them.
_DESCRIPTION_ALIASES: dict[str, str] = {
    "b01": "coastal", "b1": "coastal", "b02": "blue", "b2": "blue", "b03": "green", "b3": "green",
    "b04": "red", "b4": "red", "b05": "rededge1", "b5": "rededge1", "b06": "rededge2", "b6": "rededge2",
    "b07": "rededge3", "b7": "rededge3", "b08": "nir", "b8": "nir", "b8a": "nir08", "b09": "nir09",
    "b9": "nir09", "b10": "cirrus", "b11": "swir16", "b12": "swir22", "near infrared": "nir",
    "near-infrared": "nir", "infrared": "nir", "swir1": "swir16", "swir2": "swir22",
    "qa": "qa_pixel", "qa pixel": "qa_pixel",
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
    driver: str = "GTiff"  # what open_scene opened it with; every later read uses this driver only
    # A STAC item (pipeline.inference.stac): one source per band, read onto this grid; () for a raster file.
    sources: tuple[BandSource, ...] = ()
    gdal_env: tuple[tuple[str, str], ...] = ()  # GDAL settings its readers run under (remote reads)

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
    # band name -> a band of the scene by name (``nir=nir08``, ``red=B04``): a STAC item's common name or
    # asset key, or a file's band description
    names: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return ",".join([f"{k}={v}" for k, v in self.indexes.items()] + [f"{k}={v}" for k, v in self.names.items()])


def _scene_error_prefix(path: str | Path) -> str:
    return f"scene {Path(path).name}"


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# GDAL's "DRIVER:...:" filename syntax (GTIFF_DIR:1:x.tif, NETCDF:"x.nc":var, HDF5:...); two letters at
# least, so that a Windows drive letter is still a path.
_DRIVER_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_+-]+):")
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _is_remote(path: str) -> bool:
    match = _URL.match(path)
    return match is not None and match.group(1).lower() in REMOTE_SCHEMES


def check_input_path(path: str | os.PathLike[str], what: str = "scene") -> str:
    """``path`` as a string GDAL may be given, or an error naming it: a regular file (after following
    symlinks), or a URL with one of :data:`REMOTE_SCHEMES` given as such.

    Refused at once, before GDAL sees them: GDAL filename syntax where a path is expected (``/vsi...``,
    ``DRIVER:...:`` prefixes, inline XML), other URL schemes, and anything that is not a regular file (a
    FIFO would block GDAL's open forever, ``/dev/zero`` never ends, a directory is no raster), or is empty.
    ``what`` names the input in the message (``scene``, ``labels``, ``grid``...).
    """
    text = os.fspath(path)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if "\0" in text:
        raise SceneOpenError(f"{what} {text.replace(chr(0), '?')!r}: a path cannot contain a NUL character")
    head = text.lstrip()
    if head.startswith("<"):
        raise SceneOpenError(f"{what} {head[:24]!r}...: is GDAL XML, not a file path; save it as a file and "
                             f"give that file's path")
    url = _URL.match(text)
    if url is not None:
        if url.group(1).lower() in REMOTE_SCHEMES:
            return text
        raise SceneOpenError(f"{what} {text}: {url.group(1)}:// is not a supported URL scheme; give a file path "
                             f"or a {', '.join(s + '://' for s in REMOTE_SCHEMES)} URL")
    where = f"{what} {Path(text).name or text}"
    if text.startswith("/vsi") or os.path.normpath(text).startswith("/vsi"):
        raise SceneOpenError(f"{where}: GDAL virtual file system paths ({text.split('/')[1]}/...) are not "
                             f"accepted; give a plain file path, or an http(s):// or s3:// URL")
    prefix = _DRIVER_PREFIX.match(text)
    if prefix is not None:
        raise SceneOpenError(f"{where}: {prefix.group(1)}: is GDAL driver syntax, not a file path; give a plain "
                             f"file path (./{text} for a file whose name has a colon)")
    try:
        st = os.stat(text)  # follows symlinks: a link to /dev/zero is judged by what it points at
    except FileNotFoundError as err:
        raise SceneOpenError(f"{where}: no such file ({text})") from err
    except (OSError, ValueError) as err:
        raise SceneOpenError(f"{where}: cannot be read ({getattr(err, 'strerror', None) or err})") from err
    _check_regular(st.st_mode, where, text)
    if st.st_size == 0:  # no raster; and /proc files, which say 0 bytes, may block a reader (/proc/kmsg)
        raise SceneOpenError(f"{where}: not a readable raster (the file is empty)")
    return text


def _check_regular(mode: int, where: str, path: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
    target = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
    raise SceneOpenError(f"{where}: not a regular file but {kind}{target}; give the path of a GeoTIFF file")


def _sniff(path: str, where: str) -> bytes:
    """The first bytes of a local file, read without blocking (a FIFO swapped in after the check does not
    hang here), and checked once more to be a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise SceneOpenError(f"{where}: cannot be read ({err.strerror})") from err
    try:
        _check_regular(os.fstat(fd).st_mode, where, path)
        return os.read(fd, 256)
    except OSError as err:
        raise SceneOpenError(f"{where}: cannot be read ({err.strerror})") from err
    finally:
        os.close(fd)


def _is_vrt(head: bytes) -> bool:
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<VRTDataset")


_LOCAL_ENV = (("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR"),)
_REMOTE_ENV = cloud_settings()


CONNECT_RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Seconds between tries of a remote open that could not connect at all. GDAL's own retries
(GDAL_HTTP_MAX_RETRY) cover 429/5xx, timeouts and reset connections, not a refused one (an S3 endpoint
restarting, a proxy briefly down); :func:`open_raster` tries those again, about 15 s in all."""
_CONNECT_FAILED = re.compile(r"(Could not|Couldn't|Failed to) connect", re.IGNORECASE)


def clear_remote_cache() -> None:
    """GDAL's ``VSICurlClearCache()``: forget what /vsicurl/ and /vsis3/ remember of remote files (a failed
    stat stays cached as "does not exist"). rasterio does not expose it; it is called in the GDAL library
    rasterio loaded. Best effort: where that library cannot be found, the retry simply meets the cache."""
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            found = next((line.split()[-1] for line in maps if "libgdal" in line.rsplit("/", 1)[-1]), None)
        if found is not None:
            ctypes.CDLL(found).VSICurlClearCache()
    except (OSError, AttributeError):
        pass


def open_raster(path: str | os.PathLike[str], what: str = "scene", *, allow_vrt: bool = False,
                driver: str | None = None, open_options: Mapping[str, str] | None = None) -> rasterio.DatasetReader:
    """Open an input raster for reading, as untrusted input: the caller closes it (``with``).

    The path is checked first (:func:`check_input_path`); GDAL may then use only :data:`SCENE_DRIVERS`
    (and ``VRT`` with ``allow_vrt``), or only ``driver`` when given (what :func:`open_scene` found, so that a
    file swapped since is not read another way). Sidecar files (``x.tif.ovr``, ``.aux.xml``, ``.msk``) are
    not looked for: an ``.ovr`` beside a scene is opened with any driver GDAL has, a VRT included.
    """
    text = check_input_path(path, what)
    where = f"{what} {Path(text).name}"
    drivers: tuple[str, ...] = SCENE_DRIVERS + (("VRT",) if allow_vrt else ())
    if driver is not None:
        if driver not in (*SCENE_DRIVERS, "VRT"):
            raise ValueError(f"open_raster: driver {driver!r} is not one an input may be read with")  # a bug
        drivers = (driver,)
    if not _is_remote(text):
        is_vrt = _is_vrt(_sniff(text, where))
        if is_vrt and "VRT" not in drivers:
            raise SceneOpenError(f"{where}: is a GDAL VRT (XML that reads the files and URLs it names), not a "
                                 f"GeoTIFF; VRT inputs are read only when asked: set `allow_vrt`")
        drivers = ("VRT",) if is_vrt else tuple(d for d in drivers if d != "VRT") or drivers
    first: RasterioIOError | None = None
    for name in drivers:
        waits = iter(CONNECT_RETRY_DELAYS if _is_remote(text) else ())
        while True:
            try:
                with rasterio.Env(**dict(_REMOTE_ENV if _is_remote(text) else _LOCAL_ENV)):
                    return rasterio.open(text, driver=name, **dict(open_options or {}))
            except RasterioIOError as err:
                wait = next(waits, None) if _CONNECT_FAILED.search(str(err)) else None
                if wait is None:
                    first = first or err
                    break
                time.sleep(wait)  # the store is restarting or unreachable for a moment: try again,
                clear_remote_cache()  # without GDAL's cached "does not exist" of the failed try
    assert first is not None
    reason = str(first).splitlines()[0] if str(first) else "unreadable header"
    hint = ""
    if "not recognized" in reason or "supported file format" in reason:
        hint = "; inputs are read as GeoTIFF/COG only (convert it: gdal_translate -of COG in out.tif)"
    raise SceneOpenError(f"{where}: not a readable raster ({reason}){hint}") from first


def open_scene(path: str | Path, *, max_pixels: int | None = None, assume_crs: str | None = None,
               allow_vrt: bool = False, max_ratio: float | None = DEFAULT_MAX_COMPRESSION_RATIO,
               max_block_bytes: int | None = DEFAULT_MAX_BLOCK_BYTES,
               source: SourceOptions | None = None) -> SceneMeta:
    """Read and check a scene's header; no pixel is decoded except one block to detect truncation.

    Raises :class:`SceneOpenError` for a missing or non-raster file, and for one :func:`open_raster` refuses
    (not a regular file, GDAL filename syntax, a VRT without ``allow_vrt``), and :class:`InvalidSceneError`
    for a raster that cannot be used: no CRS and none assumed; a CRS but no geotransform; more than
    ``max_pixels`` pixels; declared pixels more than ``max_ratio`` times the file's bytes or one block over
    ``max_block_bytes`` (checked before any block is decoded; None turns a check off; neither applies to
    remote files, whose size is not known here, and the ratio not to a VRT); an unsupported data type.

    A ``.json`` path or URL is a STAC item (:func:`open_item`); ``source`` says how it is read.
    """
    path = str(path)
    if is_stac_item(path):
        return open_item(path, max_pixels=max_pixels, max_block_bytes=max_block_bytes, source=source)
    where = _scene_error_prefix(path)
    # a remote scene is read (here and by every worker) under the cloud settings, endpoint and requester-pays
    env = cloud_settings(source or SourceOptions()) if _is_remote(path) else ()
    with _gdal_env(env), open_raster(path, "scene", allow_vrt=allow_vrt) as src:
        if max_pixels is not None and src.height * src.width > max_pixels:
            raise InvalidSceneError(
                f"{where}: {src.width} x {src.height} px is {src.width * src.height:,} pixels, over the limit "
                f"of {max_pixels:,}; raise `max_pixels` if this is intended"
            )
        file_bytes = None if _is_remote(path) or src.driver == "VRT" else os.stat(path).st_size
        _check_declared_size(src, where, file_bytes, max_ratio, max_block_bytes)
        crs = src.crs
        check_georeferenced(src, where)
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
            driver=src.driver,
            gdal_env=env,
        )


def open_item(path: str, *, max_pixels: int | None = None, max_block_bytes: int | None = DEFAULT_MAX_BLOCK_BYTES,
              source: SourceOptions | None = None) -> SceneMeta:
    """A STAC item (a local ``.json`` file or an http(s):// or s3:// URL) as a scene whose bands are its
    assets (:mod:`pipeline.inference.stac`): the grid is the finest asset's (or ``source.resolution``'s),
    each band keeps its asset's href, scale, offset, nodata and resampling, and :func:`read_window` reads
    them onto the grid window by window. The asset on the grid is opened here (its header: the href is
    readable, its block size sizes tiles); the others are opened by the workers that read them.

    Asset hrefs are explicit remote inputs (the user named the item); each is opened as any scene is
    (:func:`open_raster`: GeoTIFF only, so an asset that is a VRT is refused, local or remote).
    """
    options = source or SourceOptions()
    location, item_id = split_fragment(path)
    text = check_input_path(location, "STAC item")
    where = f"scene {Path(text.split('?', 1)[0]).name}" + (f"#{item_id}" if item_id else "")
    env = cloud_settings(options)
    with rasterio.Env(**dict(env)):
        item = load_item(text, where, item_id, options)
        sources = item_sources(item, text, where, _asset_header)
        grid = item_grid(sources, options.resolution, where)
        if max_pixels is not None and grid.height * grid.width > max_pixels:
            raise InvalidSceneError(f"{where}: {grid.width} x {grid.height} px is {grid.width * grid.height:,} "
                                    f"pixels, over the limit of {max_pixels:,}; raise `max_pixels` if this is intended")
        overrides = dict(options.resampling)
        unknown = [b for b in overrides if not any(b in s.aliases for s in sources)]
        if unknown:
            raise BandMapError(f"{where}: `resampling` names band(s) {', '.join(unknown)} that the item does not "
                               f"have (it has {', '.join(s.name for s in sources)})")
        grid_res = float(np.hypot(grid.transform.a, grid.transform.d))
        sources = [replace(s, resampling=next((overrides[a] for a in s.aliases if a in overrides), None)
                           or default_resampling(s.mask_like, s.resolution, grid_res)) for s in sources]
        finest = min(sources, key=lambda s: s.resolution)
        header = _asset_header(finest.href, f"{where}: asset {finest.key}", max_block_bytes)
    block_h, block_w = header["block_shape"]
    when = item.get("properties", {}).get("datetime")
    tags = {"STAC_ITEM": str(item.get("id", ""))} | ({"STAC_DATETIME": str(when)} if when else {})
    return SceneMeta(path=path, crs=grid.crs, transform=grid.transform, height=grid.height, width=grid.width,
                     count=len(sources), dtype="float32", nodata=None, block_height=block_h, block_width=block_w,
                     descriptions=tuple(s.name for s in sources), tags=tags, sources=tuple(sources), gdal_env=env)


def _asset_header(href: str, what: str, max_block_bytes: int | None = DEFAULT_MAX_BLOCK_BYTES) -> dict[str, Any]:
    """What an item's asset says of itself, read through :func:`open_raster` (one clear line if it cannot
    be: missing, forbidden, not a GeoTIFF)."""
    try:
        with open_raster(href, what) as src:
            _check_declared_size(src, what, None, None, max_block_bytes)
            return {"crs": src.crs, "transform": src.transform, "height": src.height, "width": src.width,
                    "dtype": src.dtypes[0], "count": src.count, "nodata": src.nodata,
                    "block_shape": src.block_shapes[0]}
    except SceneOpenError as err:
        raise SceneOpenError(f"{what} ({href}): {str(err).split(': ', 2)[-1]}") from err


def _check_declared_size(src: rasterio.DatasetReader, where: str, file_bytes: int | None,
                         max_ratio: float | None, max_block_bytes: int | None) -> None:
    """Refuse a header whose pixels the file cannot plausibly hold, or whose one block is too large to
    decode, before any block is: both only cost a header read to check."""
    itemsize = max(np.dtype(t).itemsize for t in src.dtypes)
    if max_block_bytes is not None:
        block = max(h * w for h, w in src.block_shapes) * src.count * itemsize
        if block > max_block_bytes:
            block_h, block_w = src.block_shapes[0]
            raise InvalidSceneError(
                f"{where}: one block of {block_w} x {block_h} px x {src.count} band(s) of {src.dtypes[0]} is "
                f"{block / 2**20:,.0f} MiB, over the limit of {max_block_bytes / 2**20:,.0f} MiB; re-tile it "
                f"(gdal_translate -of COG) or raise `max_block_bytes` if the file is trusted"
            )
    if max_ratio is not None and file_bytes is not None:
        declared = src.width * src.height * src.count * itemsize
        ratio = declared / max(file_bytes, 1)
        if ratio > max_ratio:
            raise InvalidSceneError(
                f"{where}: declares {src.width} x {src.height} px x {src.count} band(s) of {src.dtypes[0]} "
                f"({_size(declared)}) in a file of {file_bytes:,} bytes, {ratio:,.1f} times its size (limit "
                f"{max_ratio:,g}): almost empty or crafted; raise `max_ratio` if the file is trusted"
            )


def _size(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_georeferenced(src: rasterio.DatasetReader, where: str) -> None:
    """Refuse a raster that does not say where its pixels are, with how to fix it: a degenerate
    geotransform, ground control points or RPCs without one, or a CRS with no geotransform (GDAL reports
    the identity), which gave polygons in pixel coordinates labelled with that CRS. A file with neither
    CRS nor geotransform passes: :func:`open_scene` refuses it for its missing CRS unless the user assumes
    one (as before)."""
    t = src.transform
    if not all(np.isfinite(t[:6])) or t.a * t.e - t.b * t.d == 0:
        raise InvalidSceneError(
            f"{where}: its geotransform {tuple(t[:6])} is degenerate (a pixel of size 0 or not a number); "
            f"re-export it with a valid one (gdal_edit.py -a_ullr <ulx> <uly> <lrx> <lry> {Path(src.name).name})"
        )
    if not t.is_identity:
        return
    name = Path(src.name).name
    if src.gcps[0] or src.rpcs:
        how = "-rpc " if src.rpcs else ""
        raise InvalidSceneError(
            f"{where}: has {'RPCs' if src.rpcs else 'ground control points'} but no geotransform; warp it onto a "
            f"map grid first (gdalwarp {how}-t_srs <crs> {name} warped.tif)"
        )
    if src.crs is None:
        return  # neither: "no CRS" below, unless the user assumes one (as before)
    raise InvalidSceneError(
        f"{where}: has a CRS but no geotransform, so its pixels have no place on the map; re-export it with "
        f"one (gdal_edit.py -a_ullr <ulx> <uly> <lrx> <lry> {name})"
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
_NAME_PAIR = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*([A-Za-z][A-Za-z0-9_]*)\s*$")


def parse_band_map(spec: str | Mapping[str, int] | BandMap | None, meta: SceneMeta | None = None) -> BandMap:
    """A band map from ``"red=1,nir=4"``, a preset name (``naip``, ``sentinel2``, ...), a mapping, or, given
    None, from the scene's band descriptions.
    """
    if isinstance(spec, BandMap):
        return spec
    if isinstance(spec, Mapping):
        return BandMap(dict(spec))
    if meta is not None and meta.sources:  # a STAC item: every band by its names, then the name=band pairs
        return _item_band_map(meta, parse_band_map(spec).names)
    if spec is None or spec == "":
        return _band_map_from_descriptions(meta) if meta is not None else BandMap({})
    key = spec.strip().lower()
    if key in SENSOR_PRESETS:
        return BandMap({name: i + 1 for i, name in enumerate(SENSOR_PRESETS[key])})
    indexes: dict[str, int] = {}
    names: dict[str, str] = {}
    for part in spec.split(","):
        match = _PAIR.match(part)
        named = _NAME_PAIR.match(part) if match is None else None
        if named is not None:
            names[named.group(1).lower()] = named.group(2).lower()
            continue
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
    return BandMap(indexes, names)


def _item_band_map(meta: SceneMeta, names: Mapping[str, str]) -> BandMap:
    """A STAC item's bands by every name they have (common name, asset key, band name) and ``names`` pairs
    mapped onto them (kept in ``names`` too, so that :func:`resolve_bands` prefers them); a preset's or a
    pair's index does not apply to an item, whose bands have no order."""
    indexes: dict[str, int] = {}
    for i, source in enumerate(meta.sources, start=1):
        for alias in source.aliases:
            indexes.setdefault(alias, i)
    indexes.update({n: indexes[t] for n, t in names.items() if t in indexes})
    return BandMap(indexes, dict(names))


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
    """The 1-based band indexes of ``required`` bands, in that order; an error names every problem. A band
    the map names past the file's last band is an error only when it is required (a preset's optional
    quality band, ``scl`` of ``sentinel2-l2a``, may be absent).

    A ``name=band`` pair (``nir=nir08``) picks a band by its name: a STAC item's common name or asset key,
    a file's band description. A STAC item's bands are picked by name only: a required band is the item's
    band of that name, unless a pair maps it to another (indexes, a preset's included, do not apply)."""
    where = _scene_error_prefix(meta.path)
    band_map = _named_indexes(meta, band_map, required, where)
    out_of_range = {n: i for n, i in band_map.indexes.items() if i > meta.count and n in required}
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


def _named_indexes(meta: SceneMeta, band_map: BandMap, required: Sequence[str], where: str) -> BandMap:
    """``band_map`` with its ``name=band`` pairs (and, for a STAC item, every band) as indexes of ``meta``."""
    if not band_map.names and not meta.sources:
        return band_map
    lookup: dict[str, int] = {}
    if meta.sources:
        for i, source in enumerate(meta.sources, start=1):
            for alias in source.aliases:
                lookup.setdefault(alias, i)
    else:
        for i, desc in enumerate(meta.descriptions, start=1):
            if desc:
                name = desc.strip().lower()
                lookup.setdefault(name, i)
                lookup.setdefault(_DESCRIPTION_ALIASES.get(name, name), i)
    unknown = {n: t for n, t in band_map.names.items() if t not in lookup and n in required}
    if unknown:
        have = ", ".join(s.name for s in meta.sources) if meta.sources else ", ".join(d for d in meta.descriptions if d)
        listed = ", ".join(f"{n}={t}" for n, t in unknown.items())
        raise BandMapError(f"{where}: band map names {listed} but the scene has no band of that name (it has "
                           f"{have or 'no named bands'})")
    named = {n: lookup[t] for n, t in band_map.names.items() if t in lookup}
    if not meta.sources:
        return BandMap({**band_map.indexes, **named})
    indexes = {n: lookup[n] for n in required if n in lookup and n not in named} | named
    missing = [n for n in required if n not in indexes]
    if missing:
        raise BandMapError(f"{where}: the model needs band(s) {', '.join(missing)} but the STAC item has "
                           f"{', '.join(s.name for s in meta.sources)}; map them by name with `bands` "
                           f"(e.g. {missing[0]}={meta.sources[0].name})")
    return BandMap(indexes)


def read_window(meta: SceneMeta, window: PixelWindow, indexes: Sequence[int],
                mask: BoundMask | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``indexes`` over ``window``: float32 pixels ``(bands, rows, cols)`` and a ``(rows, cols)`` bool
    mask of valid pixels.

    With a quality ``mask`` (:mod:`pipeline.inference.masks`), its bands are read too (not returned) and the
    pixels they mark unusable are invalid.

    Validity is GDAL's dataset mask (an internal mask or alpha band if the file has one; otherwise a pixel
    is nodata when every band holds the nodata value, so a black collar is nodata but a dark pixel with one
    zero band is not), and NaN or infinite values in the bands read are invalid too.

    Invalid pixels are set to 0 in the returned data so that models see a defined value.

    A STAC item's bands (``meta.sources``) are read from their assets onto the scene's grid, each with its
    resampling, then scaled (:func:`pipeline.inference.stac.read_source`); a pixel is valid where every band
    read is (inside its asset, not its nodata).
    """
    if meta.sources:
        pixels, usable = _read_item(meta, window, indexes)
        if mask is not None:
            usable &= ~_unusable(None, meta, window, mask)
        pixels[:, ~usable] = 0.0
        return pixels, usable
    rio_window = Window(window.col_off, window.row_off, window.width, window.height)
    try:
        with _gdal_env(meta.gdal_env):
            src = _open_for_reading(meta.path, meta.driver)
            data = src.read(list(indexes), window=rio_window, out_dtype="float32")
            valid = _valid_from_bands(src, indexes, data)
            if valid is None:
                with warnings.catch_warnings():
                    # A 4-band file whose last band GDAL takes for alpha, and which also has a nodata value:
                    # nodata wins, which is what we want; the warning would repeat for every tile.
                    warnings.simplefilter("ignore", NodataShadowWarning)
                    valid = src.dataset_mask(window=rio_window) > 0
    except ScenewatchError:
        raise  # already says what is wrong (e.g. the file was replaced by a FIFO since it was opened)
    except (RasterioIOError, OSError) as err:
        raise SceneReadError(
            f"scene {meta.name}: pixels at rows {window.row_off}-{window.row_end}, columns "
            f"{window.col_off}-{window.col_end} cannot be read; the file looks truncated or corrupt"
        ) from err
    if any(src.dtypes[band - 1] in _FLOAT_DTYPES for band in indexes):
        valid &= np.all(np.isfinite(data), axis=0)
    if mask is not None:
        valid &= ~_unusable(src, meta, window, mask)
    if not valid.all():
        data[:, ~valid] = 0.0
    return data, valid


def _unusable(src: rasterio.DatasetReader | None, meta: SceneMeta, window: PixelWindow,
              mask: BoundMask) -> np.ndarray:
    """The pixels of ``window`` that ``mask``'s bands mark unusable, dilated: the bands are read over the
    window grown by the dilation (within the scene), so every tile dilates a patch the same way."""
    grow = mask.dilate
    row0, col0 = max(0, window.row_off - grow), max(0, window.col_off - grow)
    row1, col1 = min(meta.height, window.row_end + grow), min(meta.width, window.col_end + grow)
    if src is None:  # a STAC item: its mask assets, onto the grid (nearest for classes and bit flags)
        grown = PixelWindow(row0, col0, row1 - row0, col1 - col0)
        bands = np.rint(_read_item(meta, grown, mask.indexes)[0]).astype(np.int64)
    else:
        bands = src.read(list(mask.indexes), window=Window(col0, row0, col1 - col0, row1 - row0))
    unusable = dilate(unusable_pixels(mask.mask, bands), grow)
    return unusable[window.row_off - row0 : window.row_end - row0, window.col_off - col0 : window.col_end - col0]


# An item's assets are read at full resolution whatever the grid: GDAL would otherwise serve a coarser grid
# from the file's overviews, made with whatever resampling the publisher chose (the COG driver's default is
# cubic), not the band's own (a 2 x 2 average differed by up to 40 DN on the Rondonia item).
_ITEM_OPEN_OPTIONS = (("OVERVIEW_LEVEL", "NONE"),)


def read_item_on_grid(meta: SceneMeta, grid: ItemGrid, window: PixelWindow,
                      indexes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A STAC item's bands (default: all) over ``window`` of another ``grid`` (a change's common grid, a
    quicklook's preview): float32, scaled, and where every band is valid; each band resampled as its kind
    and the two grids' resolutions ask (:func:`pipeline.inference.stac.default_resampling`)."""
    res = float(np.hypot(grid.transform.a, grid.transform.d))
    sources = tuple(replace(s, resampling=default_resampling(s.mask_like, s.resolution, res)) for s in meta.sources)
    bands = list(indexes) if indexes is not None else list(range(1, meta.count + 1))
    return _read_item(replace(meta, sources=sources), window, bands, grid)


def _gdal_env(settings: tuple[tuple[str, str], ...]) -> contextlib.AbstractContextManager[Any]:
    """``rasterio.Env`` with ``settings`` (a remote scene's), or nothing to enter for a local one."""
    return rasterio.Env(**dict(settings)) if settings else contextlib.nullcontext()


def _read_item(meta: SceneMeta, window: PixelWindow, indexes: Sequence[int],
               grid: ItemGrid | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A STAC item's bands ``indexes`` over ``window`` (of its grid, or of ``grid``), each from its asset,
    under the item's GDAL settings; an asset that cannot be read is one line naming the item, the asset
    and its href."""
    grid = grid or ItemGrid(meta.crs, meta.transform, meta.height, meta.width)
    data = np.empty((len(indexes), window.height, window.width), dtype=np.float32)
    valid = np.ones((window.height, window.width), dtype=bool)
    keep = max(_OPEN_PER_THREAD, len({s.href for s in meta.sources}))
    with _gdal_env(meta.gdal_env):
        for i, band in enumerate(indexes):
            source = meta.sources[band - 1]
            where = f"scene {meta.name}: asset {source.key} ({source.href}) cannot be read"
            try:
                src = _open_for_reading(source.href, "GTiff", keep=keep, open_options=_ITEM_OPEN_OPTIONS)
            except ScenewatchError as err:  # missing, forbidden, not a GeoTIFF: what open_raster found
                raise SceneReadError(f"{where}: {str(err).split(': ', 1)[-1]}") from err
            try:
                data[i], ok = read_source(src, source, grid, window)
            except (RasterioIOError, OSError) as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise SceneReadError(f"{where} at rows {window.row_off}-{window.row_end}, columns "
                                     f"{window.col_off}-{window.col_end} ({reason})") from err
            valid &= ok
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


def _open_for_reading(path: str, driver: str, keep: int = _OPEN_PER_THREAD, what: str | None = None,
                      open_options: tuple[tuple[str, str], ...] = ()) -> rasterio.DatasetReader:
    if _is_remote(path):
        key: tuple[Any, ...] = (path, driver, open_options)
    else:
        st = os.stat(path)
        _check_regular(st.st_mode, _scene_error_prefix(path), path)  # swapped for a FIFO since it was opened
        # a file rewritten in place is reopened
        key = (path, driver, open_options, st.st_mtime_ns, st.st_size, st.st_ino)
    handles: OrderedDict[tuple[Any, ...], rasterio.DatasetReader] = _local.__dict__.setdefault(
        "handles", OrderedDict())
    src = handles.get(key)
    if src is None or src.closed:
        src = handles[key] = open_raster(path, what or "scene", driver=driver, open_options=dict(open_options))
        while len(handles) > keep:
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
