"""Realistic STAC items for tests, made from real data: one Cloud-Optimized GeoTIFF per band.

* :func:`rondonia_item` - the Sentinel-2 Rondonia scene of ``../shared/data`` (20 m, B02, B8A, B11) as an L2A
  item of processing baseline 04.00: B02 and B8A at 10 m (each 20 m pixel repeated 2 x 2, so no value is
  invented), B11 left at 20 m, a synthetic scene classification (SCL) at 20 m with a cloud and its shadow.
  Reflectance bands hold ``DN = reflectance x 10000 + 1000`` (uint16, nodata 0) with ``raster:bands``
  ``scale 0.0001, offset -0.1``, so reflectance is ``DN x 0.0001 - 0.1``: the original values x 1e-4.
  Asset keys are Planetary-Computer style (``B02``, ``B8A``, ``B11``, ``SCL``); common names (``blue``,
  ``nir08``, ``swir16``) come from ``eo:bands``. Its ``reference`` is the same scene as one stacked float32
  file at 10 m with scale and offset applied: B02/B8A exact, B11 warped to 10 m with bilinear resampling
  (``rasterio.warp.reproject``), SCL with nearest.
* :func:`naip_items` - the NAIP pair of examples/data (2009 and 2020, 5 m, red, green, blue, nir) as two
  items of four uint8 COGs each, asset keys = common names, no scale; ``reference`` is the original file.
* :func:`upload_item` - puts an item's assets in an S3 bucket (the ``s3`` fixture of tests/s3_server.py) and
  writes an item whose hrefs are ``s3://`` URLs, beside the local one and in the bucket.

Each builder returns :class:`BuiltItem`: the item JSON path, the reference file and its band names.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds

from tests.conftest import NAIP_2009, NAIP_2020, shared

__all__ = ["BuiltItem", "rondonia_item", "naip_items", "upload_item", "RONDONIA_DIR"]

RONDONIA_DIR = "labeled/deforestation_rondonia_s2_20LLQ"
_COG = "image/tiff; application=geotiff; profile=cloud-optimized"
_EXTENSIONS = ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
               "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
               "https://stac-extensions.github.io/projection/v1.1.0/schema.json"]


@dataclass(frozen=True)
class BuiltItem:
    """An item written by a builder: ``item`` (JSON, relative asset hrefs), ``assets`` (key -> COG path),
    ``reference`` (the same scene as one stacked file at the finest resolution, scale/offset applied) and
    its ``bands`` (common names, in the reference's band order), the item ``id`` and ``datetime``."""

    item: Path
    id: str
    datetime: dt.datetime
    assets: dict[str, Path]
    reference: Path
    bands: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)


def _write_cog(path: Path, data: np.ndarray, crs: CRS, transform: Affine, nodata: float | None,
               description: str, blocksize: int = 256) -> Path:
    """One single-band COG (DEFLATE, internal tiles, overviews as GDAL's COG driver makes them)."""
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata, compress="deflate",
                       blocksize=blocksize) as dst:
        dst.write(data, 1)
        dst.set_band_description(1, description)
    return path


def _asset(href: str, title: str, data: np.ndarray, transform: Affine, *, common_name: str | None, name: str,
           nodata: float | None, scale: float | None = None, offset: float | None = None,
           roles: tuple[str, ...] = ("data",), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    raster: dict[str, Any] = {"data_type": data.dtype.name, "spatial_resolution": abs(transform.a)}
    if nodata is not None:
        raster["nodata"] = nodata
    if scale is not None:
        raster["scale"] = scale
    if offset is not None:
        raster["offset"] = offset
    eo: dict[str, Any] = {"name": name}
    if common_name is not None:
        eo["common_name"] = common_name
    asset: dict[str, Any] = {"href": href, "type": _COG, "title": title, "roles": list(roles),
                             "gsd": abs(transform.a), "proj:shape": [data.shape[0], data.shape[1]],
                             "proj:transform": list(transform)[:6], "raster:bands": [raster]}
    if common_name is not None or roles == ("data",):
        asset["eo:bands"] = [eo]
    asset.update(extra or {})
    return asset


def _item(item_id: str, when: dt.datetime, crs: CRS, bounds: tuple[float, float, float, float],
          assets: dict[str, dict[str, Any]], properties: dict[str, Any]) -> dict[str, Any]:
    west, south, east, north = transform_bounds(crs, "EPSG:4326", *bounds)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": _EXTENSIONS, "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": [west, south, east, north],
        "properties": {"datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "proj:epsg": crs.to_epsg(), **properties},
        "links": [], "assets": assets,
    }


def _dump(path: Path, item: dict[str, Any]) -> Path:
    path.write_text(json.dumps(item, indent=1), encoding="utf-8")
    return path


def _scl(nir: np.ndarray, swir: np.ndarray) -> np.ndarray:
    """A plausible SCL for the scene: 4 vegetation where NDMI is high, 5 bare soil elsewhere, a cloud (9 in
    its core, 8 around it) and its shadow (3) to the south-east, 0 nowhere (no fill in this scene)."""
    ndmi = (nir - swir) / np.maximum(nir + swir, 1)
    scl = np.where(ndmi > 0.15, 4, 5).astype(np.uint8)
    rows, cols = np.mgrid[0 : scl.shape[0], 0 : scl.shape[1]]
    dist = np.hypot(rows - 120, cols - 360)
    scl[np.hypot(rows - 150, cols - 395) < 30] = 3
    scl[dist < 40] = 8
    scl[dist < 25] = 9
    return scl


def rondonia_item(folder: Path, *, item_name: str = "S2B_20LLQ_20210922.json") -> BuiltItem:
    """The Rondonia Sentinel-2 scene as an L2A item with bands at 10 m and 20 m (module docstring)."""
    source = shared(RONDONIA_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    bands20: dict[str, np.ndarray] = {}
    for band in ("B02", "B8A", "B11"):
        with rasterio.open(source / f"SENTINEL-2_MSI_20LLQ_{band}_2021-09-22.tif") as src:
            bands20[band] = src.read(1)
            crs, t20, bounds = src.crs, src.transform, tuple(src.bounds)
    t10 = t20 * Affine.scale(0.5)
    dn = {b: np.where(a == -9999, 0, a.astype(np.int32) + 1000).astype(np.uint16) for b, a in bands20.items()}
    scl = _scl(bands20["B8A"].astype(np.float64), bands20["B11"].astype(np.float64))
    layout = {  # key: (common name, DN array, transform, title)
        "B02": ("blue", np.repeat(np.repeat(dn["B02"], 2, 0), 2, 1), t10, "Band 2 - Blue - 10m"),
        "B8A": ("nir08", np.repeat(np.repeat(dn["B8A"], 2, 0), 2, 1), t10, "Band 8A - Vegetation red edge 4 - 20m"),
        "B11": ("swir16", dn["B11"], t20, "Band 11 - SWIR (1.6) - 20m"),
    }
    assets: dict[str, Path] = {}
    entries: dict[str, dict[str, Any]] = {}
    for key, (common, data, transform, title) in layout.items():
        assets[key] = _write_cog(folder / f"{key}.tif", data, crs, transform, 0, key)
        entries[key] = _asset(f"./{key}.tif", title, data, transform, common_name=common, name=key, nodata=0,
                              scale=0.0001, offset=-0.1, extra={"eo:bands": [{"name": key, "common_name": common}]})
    assets["SCL"] = _write_cog(folder / "SCL.tif", scl, crs, t20, 0, "SCL")
    classes = [{"value": v, "name": n} for v, n in ((0, "no_data"), (3, "cloud_shadow"), (4, "vegetation"),
                                                    (5, "not_vegetated"), (8, "cloud_medium_probability"),
                                                    (9, "cloud_high_probability"))]
    entries["SCL"] = _asset("./SCL.tif", "Scene classification map (SCL)", scl, t20, common_name=None, name="SCL",
                            nodata=0, roles=("data-mask",), extra={"classification:classes": classes})
    when = dt.datetime(2021, 9, 22, 14, 7, 59, tzinfo=dt.timezone.utc)
    item_id = Path(item_name).stem
    item = _item(item_id, when, crs, bounds, entries,  # type: ignore[arg-type]
                 {"platform": "sentinel-2b", "constellation": "sentinel-2", "eo:cloud_cover": 3.2,
                  "s2:processing_baseline": "04.00", "s2:mgrs_tile": "20LLQ"})
    item_path = _dump(folder / item_name, item)
    reference = _rondonia_reference(folder / "reference_10m.tif", dn, scl, crs, t10, t20)
    return BuiltItem(item_path, item_id, when, assets, reference, ("blue", "nir08", "swir16", "scl"))


def _rondonia_reference(path: Path, dn: dict[str, np.ndarray], scl: np.ndarray, crs: CRS, t10: Affine,
                        t20: Affine) -> Path:
    """The scene stacked at 10 m with scale/offset applied, warped independently of the reader under test."""
    height, width = dn["B02"].shape[0] * 2, dn["B02"].shape[1] * 2
    out = np.zeros((4, height, width), dtype=np.float32)
    out[0] = np.repeat(np.repeat(dn["B02"], 2, 0), 2, 1)
    out[1] = np.repeat(np.repeat(dn["B8A"], 2, 0), 2, 1)
    reproject(dn["B11"].astype(np.float32), out[2], src_transform=t20, src_crs=crs, dst_transform=t10,
              dst_crs=crs, resampling=Resampling.bilinear)
    reproject(scl, out[3], src_transform=t20, src_crs=crs, dst_transform=t10, dst_crs=crs,
              resampling=Resampling.nearest)
    out[:3] = out[:3] * np.float32(0.0001) + np.float32(-0.1)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=4, dtype="float32", crs=crs,
                       transform=t10, tiled=True, blockxsize=256, blockysize=256, compress="deflate") as dst:
        dst.write(out)
        for i, name in enumerate(("blue", "nir08", "swir16", "scl"), start=1):
            dst.set_band_description(i, name)
    return path


def naip_items(folder: Path) -> list[BuiltItem]:
    """The NAIP pair as two items of one uint8 COG per band (red, green, blue, nir), 2009 first."""
    built = []
    for source, when in ((NAIP_2009, dt.datetime(2009, 8, 18, tzinfo=dt.timezone.utc)),
                         (NAIP_2020, dt.datetime(2020, 8, 31, tzinfo=dt.timezone.utc))):
        item_id = f"naip_{when:%Y%m%d}"
        sub = folder / item_id
        sub.mkdir(parents=True, exist_ok=True)
        with rasterio.open(source) as src:
            data, crs, transform, bounds, nodata = src.read(), src.crs, src.transform, tuple(src.bounds), src.nodata
        assets: dict[str, Path] = {}
        entries: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(("red", "green", "blue", "nir")):
            assets[name] = _write_cog(sub / f"{name}.tif", data[i], crs, transform, nodata, name)
            entries[name] = _asset(f"./{name}.tif", name, data[i], transform, common_name=name, name=name,
                                   nodata=nodata)
        item = _item(item_id, when, crs, bounds, entries, {"naip:state": "nd"})  # type: ignore[arg-type]
        built.append(BuiltItem(_dump(sub / f"{item_id}.json", item), item_id, when, assets, source,
                               ("red", "green", "blue", "nir")))
    return built


def upload_item(built: BuiltItem, s3: Any, prefix: str | None = None) -> tuple[str, Path]:
    """Upload ``built``'s assets to ``s3.bucket`` under ``prefix`` (default: the item id) and an item whose
    asset hrefs are absolute ``s3://`` URLs. Returns that item's URL and a local copy of it (its hrefs
    still point into the bucket)."""
    prefix = (prefix or built.id).strip("/")
    item = json.loads(built.item.read_text(encoding="utf-8"))
    for key, path in built.assets.items():
        object_key = f"{prefix}/{path.name}"
        s3.client.upload_file(str(path), s3.bucket, object_key)
        item["assets"][key]["href"] = s3.url(object_key)
    local = _dump(built.item.with_name(f"{built.id}.s3.json"), item)
    s3.client.upload_file(str(local), s3.bucket, f"{prefix}/{built.id}.json")
    return s3.url(f"{prefix}/{built.id}.json"), local
