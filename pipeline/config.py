"""Configuration: one validated, frozen object per run, built once at the boundary (CLI flags or job file).

Unknown keys and wrong types are refused with the key's name (pydantic v2, ``extra="forbid"``). Values
left as None take the model's own preference (tile size, halo) or a documented default.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from pipeline.errors import ConfigError
from pipeline.inference.masks import QualityMask, parse_quality_mask
from pipeline.inference.read import DEFAULT_MAX_BLOCK_BYTES, DEFAULT_MAX_COMPRESSION_RATIO
from pipeline.inference.stac import SourceOptions, parse_resampling
from pipeline.vocab import VECTOR_FORMAT_ALIASES, BlendMethod, Precision, ProbaDtype, VectorFormat, choices

__all__ = [
    "DEFAULT_CHANGE_SIEVE",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_POLYGONS",
    "Area",
    "ChangeConfig",
    "ChangeOptions",
    "EvaluateConfig",
    "FrozenConfig",
    "Mask",
    "PredictConfig",
    "TimelineConfig",
    "TimelineOptions",
    "VectorFormats",
    "VectorOptions",
    "VectorizeConfig",
    "load_config_error",
    "parse_area",
    "split_list",
]

DEFAULT_MAX_PIXELS = 50_000 * 50_000


class FrozenConfig(BaseModel):
    """Base of every config: frozen, unknown keys refused, and :meth:`build` for keyword options."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    where: ClassVar[str] = "options"  # how errors name the source of the values

    @classmethod
    def build(cls, **values: Any) -> Self:
        """Validate ``values`` (None means "not given"), turning pydantic's report into a ConfigError."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as err:
            raise load_config_error(err, cls.where) from err


def _quality_mask(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)):
        try:
            return parse_quality_mask(value)
        except ConfigError as err:
            raise ValueError(str(err).replace("`mask` ", "")) from None
    return value


Mask = Annotated[
    QualityMask | None, BeforeValidator(_quality_mask),
    PlainSerializer(lambda m: None if m is None else list(m.texts)),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]}),
]
"""A quality mask (:mod:`pipeline.inference.masks`): ``"scl"``, ``"clm=1,2"`` or a list of such rules, one per
band; written back as that list."""


def _band_resampling(value: Any) -> Any:
    if value is None or isinstance(value, (str, list, dict)) or (
            isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
        return parse_resampling(value)
    return value


BandResampling = Annotated[
    tuple[tuple[str, str], ...], BeforeValidator(_band_resampling),
    PlainSerializer(lambda pairs: [f"{b}={m}" for b, m in pairs]),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                              {"type": "object", "additionalProperties": {"type": "string"}}]}),
]
"""Per-band resampling of a STAC item's assets: ``"scl=nearest,swir16=average"``, a list of such pairs or a
mapping; written back as a list of ``band=method``."""


class PredictConfig(FrozenConfig):
    """Everything that shapes one segmentation run of one scene, apart from the scene and the model."""

    bands: str | None = Field(None, description="band map 'red=1,nir=4' or a preset (naip, sentinel2, ...)")
    tile_size: int | None = Field(None, gt=0, description="core tile size in px; default: the model's")
    halo: int | None = Field(None, ge=0, description="context read around each core, px; default: the model's")
    overlap: int | None = Field(None, ge=0, description="blend ramp half-width, px, at most the halo; default halo/2")
    blend: BlendMethod = "cosine"
    align_to_blocks: bool = True
    batch_size: int = Field(1, gt=0, description="tiles per model call; 1 was fastest on CPU and, with the default "
                                                 "workers, on a GPU")
    precision: Precision = "auto"
    proba_dtype: ProbaDtype = "uint8"
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    assume_crs: str | None = None
    workers: int | None = Field(None, gt=0, description="local worker processes; default: one per core")
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler")
    max_tiles_in_flight: int | None = Field(None, gt=0, description="default: two tasks per worker, each of "
                                            "4 tiles or batch_size if larger")
    allow_vrt: bool = Field(False, description="read a VRT scene (it can name other files and URLs: trust it)")
    max_ratio: float | None = Field(DEFAULT_MAX_COMPRESSION_RATIO, gt=0, description="refuse a scene whose "
                                    "declared bytes exceed its file's bytes this many times (None: no check)")
    max_block_bytes: int | None = Field(DEFAULT_MAX_BLOCK_BYTES, gt=0, description="refuse a scene whose one "
                                        "block declares more bytes than this (None: no check)")
    timeout: float | None = Field(None, gt=0, description="seconds one scene may take before it is stopped and "
                                  "reported failed (a batch goes on with the next); default: no limit")
    mask: Mask = Field(None, description="quality mask: pixels a band of the band map marks unusable are nodata, "
                       "e.g. 'scl', 'qa_pixel=cloud,shadow', 'clm=1' (see pipeline.inference.masks)")
    mask_dilate: int = Field(0, ge=0, description="grow the masked patches by this many pixels")
    resolution: float | None = Field(None, gt=0, description="STAC item scenes: read every band onto a grid of "
                                     "this many metres (CRS units) per pixel; default: the finest asset's")
    resampling: BandResampling = Field((), description="STAC item scenes: resampling per band, e.g. "
                                       "'swir16=average,scl=nearest'; default: nearest for masks and classes, "
                                       "bilinear onto a finer grid, average onto a coarser one")
    requester_pays: bool = Field(False, description="read s3:// inputs from requester-pays buckets (you pay)")
    s3_endpoint: str | None = Field(None, description="URL of an S3-compatible store to read s3:// inputs from, "
                                    "e.g. http://127.0.0.1:9000 (path-style); default: AWS, or AWS_S3_ENDPOINT")

    @property
    def source_options(self) -> SourceOptions:
        """How a STAC item scene is read (:mod:`pipeline.inference.stac`)."""
        return SourceOptions(self.resolution, self.resampling, self.requester_pays, self.s3_endpoint)

    @model_validator(mode="after")
    def _overlap_within_halo(self) -> PredictConfig:
        if self.overlap is not None and self.halo is not None and self.overlap > self.halo:
            raise ValueError(f"`overlap` ({self.overlap}) cannot be larger than `halo` ({self.halo})")
        return self


DEFAULT_MAX_POLYGONS = 2_000_000

_AREA = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(m2|m²|sqm|ha|km2|km²)?\s*$")
_AREA_UNITS = {None: 1.0, "m2": 1.0, "m²": 1.0, "sqm": 1.0, "ha": 1e4, "km2": 1e6, "km²": 1e6}


def parse_area(value: str | float | int) -> float:
    """An area in m² from ``5000``, ``"5000m2"``, ``"0.5ha"`` or ``"1km2"``."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"area {value}: must be zero or more")
        return float(value)
    match = _AREA.match(value.lower())
    if match is None:
        raise ConfigError(f"area {value!r}: write a number of m², or one with a unit such as 5000m2, 0.5ha, 1km2")
    return float(match.group(1)) * _AREA_UNITS[match.group(2)]


def _area(value: Any) -> Any:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            return parse_area(value)
        except ConfigError as err:
            raise ValueError(str(err)) from None
    return value


def split_list(value: Any) -> Any:
    """``"a,b"`` -> ``("a", "b")`` (blanks dropped); sequences and None pass through."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _formats(value: Any) -> Any:
    """``"gpkg, GeoParquet"`` -> ``("gpkg", "parquet")``: names or aliases, any case, a leading dot allowed."""
    value = split_list(value)
    if isinstance(value, (list, tuple)):
        names = [str(v).strip().lower().lstrip(".") for v in value]
        formats = tuple(VECTOR_FORMAT_ALIASES.get(n, n) for n in names if n)
        unknown = [f for f in formats if f not in choices(VectorFormat)]
        if unknown:
            raise ValueError(f"format {unknown[0]!r}: unknown; choose from {', '.join(choices(VectorFormat))}")
        return formats
    return value


VectorFormats = Annotated[tuple[VectorFormat, ...], BeforeValidator(_formats), Field(min_length=1)]
"""Polygon layer formats, distinct, in the order given; also ``"gpkg,parquet"``."""

Area = Annotated[float, BeforeValidator(_area), Field(ge=0)]
"""An area in m²; configs also take ``"0.5ha"``, ``"5000m2"``, ``"1km2"``."""


class VectorOptions(FrozenConfig):
    """What shapes a polygon layer's content: the part of :class:`VectorizeConfig` a batch job's
    ``products.vectors.options`` sets."""

    min_area: Area = Field(0.0, description="drop polygons smaller than this, m² (or '0.5ha')")
    sieve: int = Field(0, ge=0, description="merge pixel groups smaller than this many pixels into a neighbour")
    simplify: float = Field(0.0, ge=0, description="topology-preserving simplification tolerance, metres")
    classes: Annotated[tuple[str, ...] | None, BeforeValidator(split_list)] = Field(
        None, description="class names or values to keep; default all")
    # 2048 rather than 1024: the same features (ids, attributes, geometries), a quarter of the seams to merge
    # and of the tasks. The 8192² U-Net bench classes, `scenewatch vectorize`, alternated: 7.3-7.8 s and
    # 11.5-12.2 CPU-s against 8.4-8.8 s and 13.2-13.8 (4096 px tiles: 9.3 s, 14.9; 1536: 8.0, 12.6); NDVI
    # 4096²: 6.3-6.9 CPU-s against 6.7-7.2, wall within noise; a worker's peak 0.70 GiB against 0.61.
    tile_size: int = Field(2048, gt=0, description="core tile size in px")
    max_polygons: int = Field(DEFAULT_MAX_POLYGONS, gt=0, description="refuse layers with more polygons")

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_as_text(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(str(v) for v in value)
        return value


class VectorizeConfig(VectorOptions):
    """Everything that shapes turning one class raster into polygon layers."""

    formats: VectorFormats = ("gpkg",)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    assume_crs: str | None = Field(None, description="CRS for a raster that has none, e.g. EPSG:32618")
    workers: int | None = Field(None, gt=0)
    scheduler: str | None = None
    max_tiles_in_flight: int | None = Field(None, gt=0, description="default: 4 tiles per worker")

    @field_validator("formats")
    @classmethod
    def _distinct_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _watch(value: Any) -> Any:
    """``""``, ``"*"`` and ``()`` mean "any change of class", as None does."""
    value = split_list(value)
    if isinstance(value, (list, tuple)) and all(str(v).strip() in ("", "*") for v in value):
        return None
    return value


DEFAULT_CHANGE_SIEVE = 9
"""Smallest change patch, in pixels, that change and timeline polygons keep by default: a 3 x 3 block. In
pixels, so the same on every sensor: 0.09 ha at Sentinel-2's 10 m (one Landsat pixel, GLAD's unit), 0.81 ha
at Landsat's 30 m (above FAO's 0.5 ha forest minimum, below DETER's 3 ha and PRODES's 6.25 ha). It removed
every one-pixel polygon of the NAIP pair (10,168 polygons -> 1,352) and of the Pucallpa timeline events
(3,211 -> 240; 21 one-pixel polygons are left inside mosaics of patches of different dates, all under the
size, that GDAL's sieve does not resolve). docs/change.md says more."""


class _ChangeProducts(FrozenConfig):
    """Settings of a change product other than how each date is classified: shared by pairs and timelines."""

    grid: Annotated[str | None, BeforeValidator(_fspath)] = Field(
        None, description="grid the dates are compared on: 'first' (default) or a raster path")
    date_pattern: str | None = Field(None, description="regular expression with a named group year (month, day)")
    window_size: int = Field(1024, gt=0, description="window of the common grid processed at once, px")
    polygons: bool = Field(True, description="also write the change polygons")
    min_area: Area = Field(0.0, description="drop change polygons smaller than this, m² (or '0.5ha')")
    sieve: int = Field(DEFAULT_CHANGE_SIEVE, ge=0, description="merge change patches smaller than this many "
                       "pixels into a neighbour before polygonizing (0: keep every pixel)")
    max_offset: float | None = Field(None, ge=0, description="refuse dates whose pixels are more than this many "
                                     "pixels off the common grid (default: warn above 0.1 px)")


class ChangeOptions(_ChangeProducts):
    """What a batch job's ``products.change.options`` sets."""

    quicklook: bool = Field(True, description="also write a before / after / change PNG")


class ChangeConfig(ChangeOptions):
    """Everything that shapes comparing two dates, apart from the scenes and the model.

    ``predict`` is how each date is classified (band map, tiling, precision, the cluster)."""

    predict: PredictConfig = PredictConfig()
    name: str | None = Field(None, description="product name [default: <before>__<after>]")


class TimelineOptions(_ChangeProducts):
    """What a batch job's ``products.timeline.options`` sets."""

    watch: Annotated[tuple[str, ...] | None, BeforeValidator(_watch)] = Field(
        None, description="transitions that raise alerts, 'vegetation->other' [default: any change of class]")
    confirm: int = Field(2, ge=1, description="observations that confirm an alert")
    plot: bool = Field(True, description="also write the area-over-time plot")


class TimelineConfig(TimelineOptions):
    """Everything that shapes following a dated stack, apart from the scenes and the model."""

    predict: PredictConfig = PredictConfig()
    name: str = Field("timeline", min_length=1, description="product name")


class EvaluateConfig(FrozenConfig):
    """How a prediction is scored against labels, apart from the scene, the model and the labels."""

    predict: PredictConfig = PredictConfig()
    label_attribute: str | None = Field(None, description="attribute of vector labels holding the class")
    region: tuple[int, int, int, int] | None = Field(
        None, description="row_off, col_off, height, width of the window scored [default: the whole scene]")
    object_classes: Annotated[tuple[str, ...] | None, BeforeValidator(split_list)] = Field(
        None, description="classes scored as objects [default: every class but the first for vector labels]")
    iou_threshold: float = Field(0.5, gt=0, le=1, description="IoU at which a predicted object matches a label")
    min_object_pixels: int = Field(0, ge=0, description="ignore predicted objects smaller than this")


def load_config_error(err: ValidationError, where: str) -> ConfigError:
    """A one-line ConfigError naming each bad key."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        parts.append(f"{key}: {e['msg'].removeprefix('Value error, ')}")
    return ConfigError(f"{where}: " + "; ".join(parts))
