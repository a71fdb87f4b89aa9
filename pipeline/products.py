"""The output contract: the file names, GeoTIFF tags and STAC asset roles of every product.

Every stage that writes a product names it here and every stage that reads one back (vectorize, change,
the batch catalog) parses it here, so a product's name or tag changes in one place.

Files, for a product named ``NAME`` (a scene id, a ``<before>__<after>`` pair or a timeline name):

==========================  =========================================================================
``NAME.classes.tif``        uint8 class index (nodata 255), colour table, class names in ``SCENEWATCH_CLASSES``
``NAME.proba.tif``          one band per class: uint8 ``round(p x 254)`` (nodata 255, scale 1/254) or float32
``NAME.quicklook.png``      the classes in the model's class colours, nodata transparent (``predict``)
``NAME.<format>``           polygon layer (gpkg, parquet, fgb, geojson)
``NAME.change.tif``         transition codes (band 1) and confidence (band 2) of a pair of dates
``NAME.change.<format>``    change polygons; ``NAME.change.png`` the quicklook
``NAME.alerts.tif``         a timeline's alert state; ``NAME.events.tif`` / ``.events.<format>`` its events
``NAME.areas.csv``          a timeline's area per class per date (also ``.parquet``, ``.png``)
==========================  =========================================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.errors import ModelError

__all__ = [
    "CLASS_NODATA",
    "IGNORE",
    "PROBA_UINT8_NODATA",
    "PROBA_UINT8_SCALE",
    "Tag",
    "ProductKind",
    "PRODUCTS",
    "product_path",
    "classes_path",
    "proba_path",
    "proba_beside",
    "is_classes_path",
    "is_product_path",
    "name_of",
    "class_names_from_tags",
    "class_tags",
    "model_tags",
    "asset_of",
]

CLASS_NODATA = 255
"""Class rasters' nodata: no valid input pixel, or outside the scene."""
IGNORE = 255
"""Label rasters' "unknown": pixels that are neither trained on nor scored."""
PROBA_UINT8_NODATA = 255
PROBA_UINT8_SCALE = 254
"""uint8 probabilities store ``round(p x 254)``; GDAL's band scale 1/254 gives readers 0..1 back."""


class Tag:
    """GeoTIFF metadata keys of scenewatch products (GDAL's default domain)."""

    CLASSES = "SCENEWATCH_CLASSES"  # class (or transition, or date) names, comma-separated, value = position
    MODEL = "SCENEWATCH_MODEL"
    MODEL_VERSION = "SCENEWATCH_MODEL_VERSION"
    SCENE = "SCENEWATCH_SCENE"
    DATE = "SCENEWATCH_DATE"  # acquisition day, YYYY-MM-DD
    ACQUIRED = "SCENEWATCH_ACQUIRED"
    PRODUCT = "SCENEWATCH_PRODUCT"  # change | alerts | events
    BEFORE = "SCENEWATCH_BEFORE"
    AFTER = "SCENEWATCH_AFTER"
    BEFORE_DATE = "SCENEWATCH_BEFORE_DATE"
    AFTER_DATE = "SCENEWATCH_AFTER_DATE"
    DATES = "SCENEWATCH_DATES"
    WATCH = "SCENEWATCH_WATCH"
    CONFIRM = "SCENEWATCH_CONFIRM"
    DESCRIPTION = "SCENEWATCH_DESCRIPTION"
    ENCODING = "SCENEWATCH_ENCODING"
    BACKEND = "SCENEWATCH_BACKEND"  # what ran the network: the backends the workers chose (auto), comma-separated
    MASK = "SCENEWATCH_MASK"  # the quality mask that made pixels nodata (--mask), e.g. "scl dilate=2"
    THRESHOLD = "SCENEWATCH_THRESHOLD"  # index threshold used and how: "0.113 auto (Otsu; ...)", "0 fallback (...)"


Kind = Literal["classes", "proba", "quicklook", "change", "change_quicklook", "alerts", "events", "areas_csv",
               "areas_parquet", "areas_plot"]


@dataclass(frozen=True, slots=True)
class ProductKind:
    """One kind of product file: its suffix after the product name, STAC media type, roles and title."""

    suffix: str
    media_type: str
    roles: tuple[str, ...]
    title: str


_COG = "image/tiff; application=geotiff; profile=cloud-optimized"

PRODUCTS: Mapping[Kind, ProductKind] = {
    "classes": ProductKind(".classes.tif", _COG, ("data",), "classes"),
    "proba": ProductKind(".proba.tif", _COG, ("data",), "class probabilities"),
    "quicklook": ProductKind(".quicklook.png", "image/png", ("overview",), "classes quicklook"),
    "change": ProductKind(".change.tif", _COG, ("data",), "change"),
    "change_quicklook": ProductKind(".change.png", "image/png", ("overview",), "change quicklook"),
    "alerts": ProductKind(".alerts.tif", _COG, ("data",), "alerts"),
    "events": ProductKind(".events.tif", _COG, ("data",), "change events"),
    "areas_csv": ProductKind(".areas.csv", "text/csv", ("metadata",), "area per class per date"),
    "areas_parquet": ProductKind(".areas.parquet", "application/vnd.apache.parquet", ("metadata",),
                                 "area per class per date"),
    "areas_plot": ProductKind(".areas.png", "image/png", ("overview",), "area over time"),
}

_LAYER_MEDIA = {"gpkg": "application/geopackage+sqlite3", "parquet": "application/vnd.apache.parquet",
                "fgb": "application/vnd.flatgeobuf", "geojson": "application/geo+json"}


def product_path(out_dir: str | Path, name: str, kind: Kind) -> Path:
    """``out_dir / (name + suffix)`` for a product kind."""
    return Path(out_dir) / f"{name}{PRODUCTS[kind].suffix}"


def classes_path(out_dir: str | Path, name: str) -> Path:
    return product_path(out_dir, name, "classes")


def proba_path(out_dir: str | Path, name: str) -> Path:
    return product_path(out_dir, name, "proba")


def is_classes_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).name.lower().endswith(PRODUCTS["classes"].suffix)


def is_product_path(path: str | Path) -> bool:
    """Whether a file name is one of scenewatch's raster products (``*.classes.tif``, ``*.change.tif``...)."""
    lower = Path(path).name.lower()
    return any(lower.endswith(kind.suffix) for kind in PRODUCTS.values())


def proba_beside(classes: str | Path) -> Path:
    """The probability raster that belongs to a ``NAME.classes.tif``."""
    path = Path(classes)
    return proba_path(path.parent, name_of(path))


def name_of(path: str | Path) -> str:
    """The product name of a product file (``out/a.classes.tif`` -> ``a``); a raster's stem otherwise."""
    name = Path(path).name
    lower = name.lower()
    for kind in PRODUCTS.values():
        if lower.endswith(kind.suffix):
            return name[: -len(kind.suffix)]
    for ext in (".tiff", ".tif", ".vrt"):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def class_names_from_tags(tags: Mapping[str, str]) -> tuple[str, ...]:
    """The class names a product's tags declare, by class value (empty when it has none; a value left
    unnamed, as in ``a,,c``, is an empty string)."""
    tag = tags.get(Tag.CLASSES, "")
    return tuple(name.strip() for name in tag.split(",")) if tag.strip() else ()


def class_tags(class_names: Sequence[str]) -> dict[str, str]:
    """The class-name tag; names are comma-separated there, so a name holding a comma is refused."""
    for name in class_names:
        if "," in name:
            raise ModelError(f"class name {name!r}: holds a comma, which separates the names in the "
                             f"{Tag.CLASSES} tag; rename the class")
    return {Tag.CLASSES: ",".join(class_names)}


def model_tags(name: str, version: str) -> dict[str, str]:
    return {Tag.MODEL: name, Tag.MODEL_VERSION: version}


def asset_of(path: str | Path) -> tuple[str, str, tuple[str, ...], str]:
    """``(key, media type, roles, title)`` of a product file for a STAC item."""
    path = Path(path)
    lower = path.name.lower()
    for key, kind in PRODUCTS.items():
        if lower.endswith(kind.suffix):
            return key, kind.media_type, kind.roles, kind.title
    fmt = path.suffix.lstrip(".").lower()
    return f"vectors-{fmt}", _LAYER_MEDIA.get(fmt, "application/octet-stream"), ("data",), "class polygons"
