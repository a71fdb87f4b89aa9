"""Configuration: one validated, frozen object per run, built once at the boundary (CLI flags or job file).

Unknown keys and wrong types are refused with the key's name (pydantic v2, ``extra="forbid"``). Values
left as None take the model's own preference (tile size, halo) or a documented default.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from typing_extensions import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError

__all__ = ["FrozenConfig", "PredictConfig", "DEFAULT_MAX_PIXELS", "load_config_error", "VectorizeConfig", "DEFAULT_MAX_POLYGONS",
           "parse_area"]

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


class PredictConfig(FrozenConfig):
    """Everything that shapes one segmentation run of one scene, apart from the scene and the model."""

    bands: str | None = Field(None, description="band map 'red=1,nir=4' or a preset (naip, sentinel2, ...)")
    tile_size: int | None = Field(None, gt=0, description="core tile size in px; default: the model's")
    halo: int | None = Field(None, ge=0, description="context read around each core, px; default: the model's")
    overlap: int | None = Field(None, ge=0, description="blend ramp half-width, px, at most the halo; default halo/2")
    blend: Literal["cosine", "linear", "none"] = "cosine"
    align_to_blocks: bool = True
    batch_size: int = Field(1, gt=0, description="tiles per model call; 1 was fastest on CPU and, with the default workers, on a GPU")
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    proba_dtype: Literal["uint8", "float32"] = "uint8"
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    assume_crs: str | None = None
    workers: int | None = Field(None, gt=0, description="local worker processes; default: one per core")
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler")
    max_tiles_in_flight: int | None = Field(None, gt=0, description="default: two tasks per worker, each of "
                                            "4 tiles or batch_size if larger")

    @model_validator(mode="after")
    def _overlap_within_halo(self) -> PredictConfig:
        if self.overlap is not None and self.halo is not None and self.overlap > self.halo:
            raise ValueError(f"overlap ({self.overlap}) cannot be larger than halo ({self.halo})")
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


class VectorizeConfig(FrozenConfig):
    """Everything that shapes turning one class raster into polygon layers."""

    formats: tuple[Literal["gpkg", "parquet", "fgb", "geojson"], ...] = Field(("gpkg",), min_length=1)
    min_area: float = Field(0.0, ge=0, description="drop polygons smaller than this, m²")
    sieve: int = Field(0, ge=0, description="merge pixel groups smaller than this many pixels into a neighbour")
    simplify: float = Field(0.0, ge=0, description="topology-preserving simplification tolerance, metres")
    classes: tuple[str, ...] | None = Field(None, description="class names or values to keep; default all")
    tile_size: int = Field(1024, gt=0, description="core tile size in px")
    max_polygons: int = Field(DEFAULT_MAX_POLYGONS, gt=0, description="refuse layers with more polygons")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    workers: int | None = Field(None, gt=0)
    scheduler: str | None = None
    max_tiles_in_flight: int | None = Field(None, gt=0, description="default: 4 tiles per worker")


def load_config_error(err: ValidationError, where: str) -> ConfigError:
    """A one-line ConfigError naming each bad key."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        parts.append(f"{key}: {e['msg']}")
    return ConfigError(f"{where}: " + "; ".join(parts))
