"""STAC items as scenes: one Cloud-Optimized GeoTIFF per band, read window by window onto one grid.

A Sentinel-2 L2A or Landsat Collection 2 item publishes each band as its own asset, at its own resolution
(Sentinel-2: 10 m blue/green/red/NIR, 20 m SWIR and SCL), with the scale and offset that turn its integers
into reflectance in ``raster:bands`` (Sentinel-2 baseline 04.00: ``DN x 0.0001 - 0.1``; Landsat C2 L2:
``DN x 0.0000275 - 0.2``). This module turns such an item into what the reader needs, and reads it:

* :func:`item_sources` - the item's band assets as :class:`BandSource` values (href, band, grid of the asset,
  scale, offset, nodata, resampling), parsed with pystac; names are the ``eo:bands``/``bands`` common names
  (``red``, ``nir``, ``swir16``), else the asset key (``scl``). The conventions are odc-stac's and
  stackstac's: ``proj:shape``/``proj:transform``/``proj:epsg`` (or ``proj:code``) of the asset or the item
  give an asset's grid without opening it; ``raster:bands`` gives scale, offset and nodata.
* :func:`item_grid` - the grid the scene is read on: the finest asset's, or ``resolution`` metres over its
  extent.
* :func:`read_source` - one band over one window of that grid: only the asset's matching window is read
  (``read(window=..., out_shape=..., resampling=...)``; a ``WarpedVRT`` when the asset's CRS differs), then
  scale and offset applied. Unlike odc-stac and stackstac, nothing becomes a Dask array of the whole scene:
  each tile reads its own window plus halo from each asset, so memory stays bounded by tiles.
* :func:`cloud_settings` - the GDAL settings every reader of remote hrefs runs under (planner and workers):
  no directory listing on open, retries with backoff on 429/5xx and dropped connections, timeouts, a bounded
  number of connections, a per-process cache of fetched bytes; ``requester_pays`` and an S3-compatible
  endpoint as options.
  Credentials are GDAL's own: the standard AWS environment variables or profile, never a job file.

Resampling per band (:func:`default_resampling`): ``nearest`` for masks and classes (an asset with
``classification:classes``/``bitfields``, a role such as ``data-mask`` or ``cloud``, or a name such as
``scl``/``qa_pixel``), ``bilinear`` for reflectance read onto a finer grid, ``average`` onto a coarser one,
none where the asset is on the grid already (exact). ``resampling`` options override it per band.

Pure of the rest of the reader (:mod:`pipeline.inference.read` opens the files, with its checks, and calls
here), so that it imports nothing back.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pipeline.errors import InvalidSceneError, SceneOpenError
from tiles.grid import PixelWindow

__all__ = [
    "BandSource",
    "ItemGrid",
    "SourceOptions",
    "BAND_RESAMPLING",
    "MAX_ITEM_BYTES",
    "is_stac_item",
    "split_fragment",
    "load_item",
    "image_hrefs",
    "item_sources",
    "item_grid",
    "default_resampling",
    "read_source",
    "cloud_settings",
    "parse_resampling",
]

BAND_RESAMPLING: tuple[str, ...] = ("nearest", "bilinear", "cubic", "average", "mode")
"""Resampling methods a band of an item may be read with (``--resampling band=method``)."""

MAX_ITEM_BYTES = 16 * 2**20
"""Largest STAC item JSON read (a Sentinel-2 item is about 30 KB)."""

_MASK_ROLES = frozenset({"data-mask", "cloud", "cloud-shadow", "snow-ice", "water-mask", "land-water", "saturation"})
_MASK_NAMES = frozenset({"scl", "qa_pixel", "qa", "qa_radsat", "qa_aerosol", "fmask", "clm", "cloud_mask", "mask",
                         "cloud", "snow", "aot_qa"})
_SKIP_ROLES = frozenset({"thumbnail", "overview", "visual", "metadata"})
_IMAGE_EXT = (".tif", ".tiff")


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """How an item is read: the grid's ``resolution`` in CRS units (None: the finest asset's), per-band
    ``resampling`` overrides (band name -> method), and the remote options ``requester_pays`` and
    ``s3_endpoint`` (an S3-compatible store's URL, e.g. ``http://127.0.0.1:9000``)."""

    resolution: float | None = None
    resampling: tuple[tuple[str, str], ...] = ()
    requester_pays: bool = False
    s3_endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class BandSource:
    """One band of an item: ``band`` of the asset ``key`` at ``href`` (absolute: a path or URL every worker
    can read), the asset's own grid, and how its values become what the model sees:
    ``value = DN x scale + offset``, ``nodata`` (None: the file's), ``resampling`` onto the scene's grid."""

    name: str
    aliases: tuple[str, ...]
    key: str
    href: str
    band: int
    crs: CRS
    transform: Affine
    height: int
    width: int
    dtype: str
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    resampling: str = "nearest"
    mask_like: bool = False

    @property
    def resolution(self) -> float:
        return math.hypot(self.transform.a, self.transform.d)


@dataclass(frozen=True, slots=True)
class ItemGrid:
    """The grid a scene made of an item is read on."""

    crs: CRS
    transform: Affine
    height: int
    width: int


_API_ITEM = re.compile(r"/collections/[^/]+/items/[^/]+/?$")


def is_stac_item(path: str) -> bool:
    """Whether a scene path names a STAC item rather than a raster: a ``.json`` file or URL (``x.json#id``:
    the item ``id`` of an item collection file), or a STAC API item URL (``.../collections/C/items/ID``)."""
    if "://" in path:
        url_path = urlparse(path).path
        return url_path.lower().endswith(".json") or _API_ITEM.search(url_path) is not None
    return split_fragment(path)[0].lower().endswith(".json")


def split_fragment(path: str) -> tuple[str, str | None]:
    """``collection.json#item-id`` -> (``collection.json``, ``item-id``); a path without ``#`` is itself."""
    head, sep, fragment = path.rpartition("#")
    if sep and head.lower().endswith(".json") and fragment and "/" not in fragment:
        return head, fragment
    return path, None


def load_item(href: str, where: str, item_id: str | None = None,
              options: SourceOptions | None = None) -> dict[str, Any]:
    """The item JSON at ``href``: a local file (already checked by the caller), an ``http(s)://`` URL, or an
    ``s3://`` URL (read with boto3: credentials from the standard AWS variables or profile, the endpoint
    and requester-pays from ``options`` or those variables); with ``item_id``, that item of the item
    collection (FeatureCollection) at ``href``."""
    scheme = urlparse(href).scheme.lower() if "://" in href else ""
    try:
        if scheme in ("http", "https"):
            with urllib.request.urlopen(href, timeout=30) as response:  # the URL the user gave
                raw = response.read(MAX_ITEM_BYTES + 1)
        elif scheme == "s3":
            raw = _read_s3(href, options or SourceOptions())
        elif scheme:
            raise SceneOpenError(f"{where}: {scheme}:// items are not read; give a path, an http(s):// or s3:// URL")
        else:
            with open(href, "rb") as handle:
                raw = handle.read(MAX_ITEM_BYTES + 1)
    except SceneOpenError:
        raise
    except Exception as err:  # urllib, boto3 and OS errors alike: one line naming the item
        raise SceneOpenError(f"{where}: the STAC item cannot be read ({_first_line(err)})") from err
    if len(raw) > MAX_ITEM_BYTES:
        raise SceneOpenError(f"{where}: over {MAX_ITEM_BYTES // 2**20} MiB, not a STAC item")
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise SceneOpenError(f"{where}: not JSON ({err})") from err
    if item_id is not None and isinstance(data, dict) and data.get("type") == "FeatureCollection":
        data = next((f for f in data.get("features") or [] if isinstance(f, dict) and f.get("id") == item_id), None)
        if data is None:
            raise SceneOpenError(f"{where}: the item collection has no item {item_id!r}")
    if not isinstance(data, dict) or data.get("type") != "Feature":
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise SceneOpenError(f"{where}: not a STAC item (type {kind!r}); a scene is one item, a catalog or "
                             f"search is a job's inputs.stac")
    return data


def _read_s3(href: str, options: SourceOptions) -> bytes:
    import boto3  # only for s3:// items; GDAL reads the assets

    parsed = urlparse(href)
    endpoint = options.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint is None and os.environ.get("AWS_S3_ENDPOINT"):
        https = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
        endpoint = f"{'https' if https else 'http'}://{os.environ['AWS_S3_ENDPOINT']}"
    elif endpoint is not None and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    payer = options.requester_pays or os.environ.get("AWS_REQUEST_PAYER") == "requester"
    extra = {"RequestPayer": "requester"} if payer else {}
    client = boto3.client("s3", endpoint_url=endpoint)
    body = client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), **extra)["Body"]
    return bytes(body.read(MAX_ITEM_BYTES + 1))


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _absolute(href: str, item_href: str) -> str:
    """An asset href made absolute against the item's own location (a path or URL)."""
    if "://" in href or Path(href).is_absolute():
        return href
    if "://" in item_href:
        scheme, rest = item_href.split("://", 1)
        if scheme.lower() in ("http", "https"):
            return urljoin(item_href, href)
        # s3:// and other object-store URLs: urljoin does not resolve relative references for them
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), href))}"
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(item_href)), href))


def image_hrefs(item: Mapping[str, Any], item_href: str) -> list[str]:
    """The absolute hrefs of the item's image assets (those :func:`item_sources` reads bands from), in
    asset order: what a rerun checks for a reprocessed asset."""
    assets = item.get("assets") or {}
    return [_absolute(str(asset["href"]), item_href) for key, asset in assets.items()
            if isinstance(asset, Mapping) and asset.get("href") and _is_image(key, asset)]


def _band_entries(asset: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per band of an asset: STAC 1.1 ``bands`` merged with 1.0's ``eo:bands`` and ``raster:bands``."""
    bands = asset.get("bands") or []
    eo = asset.get("eo:bands") or []
    raster = asset.get("raster:bands") or []
    n = max(len(bands), len(eo), len(raster), 1)
    out = []
    for i in range(n):
        entry: dict[str, Any] = {}
        for source in (raster, eo, bands):
            if i < len(source) and isinstance(source[i], Mapping):
                entry.update(source[i])
        out.append(entry)
    return out


def _crs(fields: Sequence[Mapping[str, Any]]) -> CRS | None:
    for f in fields:
        for key in ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson"):
            value = f.get(key)
            if value is None:
                continue
            try:
                if key == "proj:epsg":
                    return CRS.from_epsg(int(value))
                return CRS.from_user_input(value)
            except (CRSError, ValueError, TypeError):
                return None
    return None


def _is_image(key: str, asset: Mapping[str, Any]) -> bool:
    roles = set(asset.get("roles") or ())
    if roles & _SKIP_ROLES and not roles & ({"data"} | _MASK_ROLES):
        return False
    media = str(asset.get("type") or "").lower()
    if media:
        return "tiff" in media
    return urlparse(str(asset.get("href", ""))).path.lower().endswith(_IMAGE_EXT)


def _mask_like(key: str, asset: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    roles = set(asset.get("roles") or ())
    classified = any(k in f for f in (asset, entry) for k in ("classification:classes", "classification:bitfields"))
    return classified or bool(roles & _MASK_ROLES) or key.lower() in _MASK_NAMES


def default_resampling(mask_like: bool, source_res: float, grid_res: float) -> str:
    """``nearest`` for masks and classes and for a band already at the grid's resolution; ``bilinear``
    onto a finer grid; ``average`` onto a coarser one (each output pixel the mean of those it covers)."""
    if mask_like or math.isclose(source_res, grid_res, rel_tol=1e-9):
        return "nearest"
    return "bilinear" if source_res > grid_res else "average"


def item_sources(item: Mapping[str, Any], item_href: str, where: str,
                 open_header: Callable[[str, str], Mapping[str, Any]]) -> list[BandSource]:
    """The item's band assets, one :class:`BandSource` per band, in asset order (``resampling`` still
    ``nearest``: :func:`item_grid`'s caller sets it once the grid is known).

    An asset's grid, CRS and data type come from the item (``proj:*``, ``raster:bands``) when it says them
    all, else from its header: ``open_header(href, what)`` returns ``crs, transform, height, width, dtype,
    count, nodata`` (the reader's checked open). ``where`` names the item in errors."""
    import pystac

    try:
        parsed = pystac.Item.from_dict(dict(item), preserve_dict=True)
    except Exception as err:  # pystac raises several types for a malformed item
        raise SceneOpenError(f"{where}: not a valid STAC item ({_first_line(err)})") from err
    props = dict(item.get("properties") or {})
    sources: list[BandSource] = []
    seen: set[str] = set()
    for key, asset_obj in parsed.assets.items():
        asset = {**asset_obj.extra_fields, "href": asset_obj.href, "type": asset_obj.media_type,
                 "roles": asset_obj.roles or []}
        if not _is_image(key, asset):
            continue
        href = _absolute(asset_obj.href, item_href)
        entries = _band_entries(asset)
        crs = _crs((asset, props))
        shape = asset.get("proj:shape") or props.get("proj:shape")
        transform = asset.get("proj:transform") or props.get("proj:transform")
        dtype = entries[0].get("data_type")
        header: Mapping[str, Any] | None = None
        if crs is None or shape is None or transform is None or dtype is None:
            header = open_header(href, f"{where}: asset {key}")
            crs, dtype = header["crs"], header["dtype"]
            shape, transform = (header["height"], header["width"]), header["transform"]
            if header["count"] > len(entries):
                entries += [{} for _ in range(header["count"] - len(entries))]
        if not isinstance(transform, Affine):
            transform = Affine(*[float(v) for v in list(transform)[:6]])
        for i, entry in enumerate(entries, start=1):
            common = entry.get("common_name") or entry.get("eo:common_name")
            band_name = entry.get("name")
            single = len(entries) == 1
            name = str(common or (key if single else band_name or f"{key}_{i}")).lower()
            aliases = tuple(dict.fromkeys(a.lower() for a in (name, key if single else f"{key}_{i}", band_name)
                                          if a))
            if name in seen:
                name = f"{key}_{i}".lower() if not single else key.lower()
                if name in seen:
                    continue
            seen.add(name)
            nodata = entry.get("nodata")
            if nodata is None and header is not None:
                nodata = header.get("nodata")
            sources.append(BandSource(
                name=name, aliases=aliases, key=key, href=href, band=i, crs=crs, transform=transform,
                height=int(shape[0]), width=int(shape[1]), dtype=str(dtype),
                scale=float(entry.get("scale", 1.0) if entry.get("scale") is not None else 1.0),
                offset=float(entry.get("offset", 0.0) if entry.get("offset") is not None else 0.0),
                nodata=None if nodata is None or nodata == "nan" else float(nodata),
                mask_like=_mask_like(key, asset, entry),
            ))
    if not sources:
        raise InvalidSceneError(f"{where}: the item has no GeoTIFF band assets (assets: "
                                f"{', '.join(parsed.assets) or 'none'})")
    return sources


def item_grid(sources: Sequence[BandSource], resolution: float | None, where: str) -> ItemGrid:
    """The finest asset's grid (the first such asset, in asset order), or the same extent at
    ``resolution`` CRS units per pixel (north-up)."""
    finest = min(sources, key=lambda s: s.resolution)
    if resolution is None:
        return ItemGrid(finest.crs, finest.transform, finest.height, finest.width)
    if resolution <= 0:
        raise InvalidSceneError(f"{where}: `resolution` must be positive, got {resolution}")
    t = finest.transform
    if t.b != 0 or t.d != 0:
        raise InvalidSceneError(f"{where}: asset {finest.key} has a rotated grid; `resolution` needs a north-up one")
    width_m, height_m = abs(t.a) * finest.width, abs(t.e) * finest.height
    width = max(1, _cells(width_m, resolution))
    height = max(1, _cells(height_m, resolution))
    left = t.c if t.a > 0 else t.c + t.a * finest.width
    top = t.f if t.e < 0 else t.f + t.e * finest.height
    return ItemGrid(finest.crs, Affine(resolution, 0.0, left, 0.0, -resolution, top), height, width)


def _cells(length: float, size: float) -> int:
    n = length / size
    return round(n) if math.isclose(n, round(n), rel_tol=0, abs_tol=1e-6) else math.ceil(n)


def parse_resampling(value: str | Mapping[str, str] | Sequence[str] | None) -> tuple[tuple[str, str], ...]:
    """``"scl=nearest,swir16=average"`` (or a mapping, or a list of ``band=method``) as sorted pairs;
    raises ValueError naming what it cannot read."""
    if value is None or value == "":
        return ()
    if isinstance(value, Mapping):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        texts = value.split(",") if isinstance(value, str) else [p for v in value for p in str(v).split(",")]
        pairs = []
        for text in texts:
            match = re.fullmatch(r"\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*([A-Za-z0-9_]+)\s*", text)
            if match is None:
                raise ValueError(f"resampling {text.strip()!r}: write band=method, e.g. scl=nearest,swir16=average")
            pairs.append((match.group(1), match.group(2)))
    out: dict[str, str] = {}
    for band, method in pairs:
        if method.lower() not in BAND_RESAMPLING:
            raise ValueError(f"resampling {band}={method}: unknown method; choose from {', '.join(BAND_RESAMPLING)}")
        out[band.lower()] = method.lower()
    return tuple(sorted(out.items()))


def read_source(src: Any, source: BandSource, grid: ItemGrid, window: PixelWindow) -> tuple[np.ndarray, np.ndarray]:
    """``source``'s values over ``window`` of ``grid``, from the open asset ``src``: float32 ``(rows, cols)``
    with scale and offset applied, and the pixels that are valid (inside the asset, not its nodata).

    Same CRS and a north-up grid: the asset's matching window (fractional where the grids do not align) is
    read straight to the window's shape with the band's resampling, GDAL decoding only the blocks under it
    (plus the kernel's reach). Another CRS: the window of a ``WarpedVRT`` of the asset on ``grid``.
    """
    out = np.zeros((window.height, window.width), dtype=np.float32)
    valid = np.zeros((window.height, window.width), dtype=bool)
    method = Resampling[source.resampling]
    nodata = source.nodata if source.nodata is not None else src.nodatavals[source.band - 1]
    t, g = source.transform, grid.transform
    if source.crs != grid.crs or t.b != 0 or t.d != 0 or g.b != 0 or g.d != 0:
        with WarpedVRT(src, crs=grid.crs, transform=g, width=grid.width, height=grid.height, resampling=method,
                       src_nodata=nodata) as vrt:
            rio_window = Window(window.col_off, window.row_off, window.width, window.height)
            out[:] = vrt.read(source.band, window=rio_window, out_dtype="float32")
            valid[:] = vrt.read_masks(source.band, window=rio_window) > 0
        return _scaled(out, valid, source), valid
    # the window's edges in the asset's pixel coordinates
    x0, y0 = g * (window.col_off, window.row_off)
    x1, y1 = g * (window.col_end, window.row_end)
    inv = ~t
    c0, r0 = inv * (x0, y0)
    c1, r1 = inv * (x1, y1)
    # grid columns/rows of the window whose centres fall inside the asset
    sx, sy = (c1 - c0) / window.width, (r1 - r0) / window.height
    col_a = max(0, math.ceil((0 - c0) / sx - 0.5 - 1e-9)) if sx > 0 else 0
    col_b = min(window.width, math.floor((source.width - c0) / sx - 0.5 + 1e-9) + 1) if sx > 0 else window.width
    row_a = max(0, math.ceil((0 - r0) / sy - 0.5 - 1e-9)) if sy > 0 else 0
    row_b = min(window.height, math.floor((source.height - r0) / sy - 0.5 + 1e-9) + 1) if sy > 0 else window.height
    if col_b <= col_a or row_b <= row_a:
        return out, valid
    src_window = Window(c0 + col_a * sx, r0 + row_a * sy, (col_b - col_a) * sx, (row_b - row_a) * sy)
    exact = (math.isclose(sx, 1.0, abs_tol=1e-9) and math.isclose(sy, 1.0, abs_tol=1e-9)
             and _whole(src_window.col_off) and _whole(src_window.row_off))
    shape = (row_b - row_a, col_b - col_a)
    if exact:
        src_window = Window(round(src_window.col_off), round(src_window.row_off), shape[1], shape[0])
        part = src.read(source.band, window=src_window, out_dtype="float32")
        ok = (part != np.float32(nodata)) if nodata is not None and not math.isnan(nodata) else np.ones(shape, bool)
    else:
        # GDAL's resampled read honours the band's nodata: a kernel weighs only valid pixels, and an output
        # pixel is the nodata value only where none under it is valid (no mask read needed)
        part = src.read(source.band, window=src_window, out_shape=shape, resampling=method, out_dtype="float32")
        no_value = nodata is None or math.isnan(nodata)
        ok = np.ones(shape, dtype=bool) if no_value else part != np.float32(nodata)
    if nodata is not None and math.isnan(nodata):
        ok &= ~np.isnan(part)
    out[row_a:row_b, col_a:col_b] = part
    valid[row_a:row_b, col_a:col_b] = ok
    return _scaled(out, valid, source), valid


def _whole(x: float) -> bool:
    return math.isclose(x, round(x), abs_tol=1e-6)


def _scaled(data: np.ndarray, valid: np.ndarray, source: BandSource) -> np.ndarray:
    if source.scale != 1.0 or source.offset != 0.0:
        data *= np.float32(source.scale)
        data += np.float32(source.offset)
    data[~valid] = 0.0
    return data


# GDAL settings for remote reads (GDAL's "Configuration options" page; the values follow the advice of
# GDAL's and rasterio's cloud guides for COGs).
_CLOUD_SETTINGS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no LIST of the bucket/folder on every open
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF",  # no probing of sidecar files by URL
    "GDAL_HTTP_MAX_RETRY": "5",  # 429, 5xx and connection errors (GDAL >= 3.10 retries those too)
    "GDAL_HTTP_RETRY_DELAY": "0.5",  # seconds, doubled at each retry (exponential backoff)
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_CONNECTTIMEOUT": "15",
    "GDAL_HTTP_MULTIPLEX": "YES",  # HTTP/2 where the server offers it: one connection, many requests
    "GDAL_MAX_CONNECTIONS": "8",  # bounded connections per process (libcurl's pool)
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    # the one cache of fetched bytes: per process, shared by every handle and thread (GDAL's block cache,
    # GDAL_CACHEMAX, holds decoded blocks). No VSI_CACHE: GDAL wraps only local files in it, so its 32 MiB
    # per open file changed neither memory nor time of /vsis3/ reads (bench/vsi_cache.py, docs/benchmarks.md)
    "CPL_VSIL_CURL_CACHE_SIZE": str(64 * 2**20),
}


def cloud_settings(options: SourceOptions = SourceOptions()) -> tuple[tuple[str, str], ...]:
    """The GDAL configuration every reader of remote hrefs runs under (sorted pairs, picklable): the
    settings above, plus ``AWS_REQUEST_PAYER=requester`` for ``requester_pays`` and, for ``s3_endpoint``
    (an S3-compatible store: MinIO, Ceph, moto), ``AWS_S3_ENDPOINT`` with ``AWS_HTTPS`` from its scheme and
    path-style addressing (``AWS_VIRTUAL_HOSTING=FALSE``). Without them GDAL reads its own environment:
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN`` or ``AWS_PROFILE``, ``AWS_REGION``,
    ``AWS_S3_ENDPOINT``... Credentials are never part of a job or of these settings."""
    settings = dict(_CLOUD_SETTINGS)
    if options.requester_pays:
        settings["AWS_REQUEST_PAYER"] = "requester"
    if options.s3_endpoint:
        parsed = urlparse(options.s3_endpoint if "://" in options.s3_endpoint else f"https://{options.s3_endpoint}")
        settings["AWS_S3_ENDPOINT"] = parsed.netloc
        settings["AWS_HTTPS"] = "NO" if parsed.scheme == "http" else "YES"
        settings["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return tuple(sorted(settings.items()))
