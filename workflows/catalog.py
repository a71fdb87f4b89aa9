"""Publishing a run's products as a static STAC catalog, so catalog and GIS tools can find them.

``<out>/catalog.json`` links one item per scene, ``<out>/stac/<scene_id>.json``, whose assets are the
products (classes and probability COGs, vectors) by relative href, so the folder can be moved or synced to
object storage as it is. Geometry and bbox are in EPSG:4326; the datetime is the scene's (from its STAC
item, or a date in its file name; a year-only name gives a ``start_datetime``/``end_datetime`` span, an
undated scene the widest span STAC allows). Every file is written atomically, items in id order, with no
timestamps, so an unchanged archive republishes byte-identical JSON.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
import pystac.stac_io
import pystac.utils

from pipeline.atomic import atomic_path
from pipeline.names import safe_name

__all__ = ["CatalogAsset", "CatalogEntry", "publish_catalog", "CATALOG_NAME"]

CATALOG_NAME = "catalog.json"
_ITEMS_DIR = "stac"
_UNDATED = (dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc))


@dataclass(frozen=True, slots=True)
class CatalogAsset:
    key: str
    path: Path  # absolute path of the product file
    media_type: str
    roles: tuple[str, ...]
    title: str


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    item_id: str
    bbox: tuple[float, float, float, float]  # EPSG:4326 west, south, east, north
    start: dt.datetime | None
    end: dt.datetime | None
    assets: tuple[CatalogAsset, ...]
    properties: dict[str, Any] = field(default_factory=dict)


def publish_catalog(out_dir: Path, catalog_id: str, title: str, entries: Sequence[CatalogEntry]) -> Path:
    """Write ``<out_dir>/catalog.json`` and one item per entry; remove items of scenes no longer listed."""
    catalog = pystac.Catalog(id=safe_name(catalog_id), description=f"scenewatch products of job {title}",
                             title=title)
    items_dir = out_dir / _ITEMS_DIR
    for entry in sorted(entries, key=lambda e: e.item_id):
        item = _item(entry)
        catalog.add_item(item)
        item.set_self_href(str(items_dir / f"{entry.item_id}.json"))
        for asset in item.assets.values():
            asset.href = str(Path(asset.href).resolve())
    catalog.set_self_href(str(out_dir / CATALOG_NAME))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED, stac_io=_AtomicStacIO())
    keep = {f"{e.item_id}.json" for e in entries}
    if items_dir.is_dir():
        for stale in items_dir.glob("*.json"):
            if stale.name not in keep:
                stale.unlink()
    return out_dir / CATALOG_NAME


def _item(entry: CatalogEntry) -> Any:
    w, s, e, n = entry.bbox
    geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    properties = dict(entry.properties)
    start, end = entry.start, entry.end
    when = None
    if start is not None and end is not None and start == end:
        when = start
    else:
        start, end = (start, end) if start is not None and end is not None else _UNDATED
        properties["start_datetime"] = pystac.utils.datetime_to_str(start)
        properties["end_datetime"] = pystac.utils.datetime_to_str(end)
    item = pystac.Item(id=entry.item_id, geometry=geometry, bbox=[w, s, e, n], datetime=when,
                       properties=properties)
    for asset in entry.assets:
        item.add_asset(asset.key, pystac.Asset(href=str(asset.path), media_type=asset.media_type,
                                               roles=list(asset.roles), title=asset.title))
    return item


class _AtomicStacIO(pystac.stac_io.DefaultStacIO):
    """pystac's writer, with every JSON file written beside its target and renamed into place."""

    def write_text_to_href(self, href: str | os.PathLike[str], txt: str) -> None:
        with atomic_path(Path(href)) as tmp:
            tmp.write_text(txt, encoding="utf-8")
