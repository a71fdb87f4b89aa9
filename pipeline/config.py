"""Configuration: one validated, frozen object per run, built once at the boundary (CLI flags or job file).

Unknown keys and wrong types are refused with the key's name (pydantic v2, ``extra="forbid"``). Values
left as None take the model's own preference (tile size, halo) or a documented default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError

__all__ = ["PredictConfig", "DEFAULT_MAX_PIXELS", "load_config_error"]

DEFAULT_MAX_PIXELS = 50_000 * 50_000


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PredictConfig(_Frozen):
    """Everything that shapes one segmentation run of one scene, apart from the scene and the model."""

    bands: str | None = Field(None, description="band map 'red=1,nir=4' or a preset (naip, sentinel2, ...)")
    tile_size: int | None = Field(None, gt=0, description="core tile size in px; default: the model's")
    halo: int | None = Field(None, ge=0, description="context read around each core, px; default: the model's")
    overlap: int | None = Field(None, ge=0, description="blend ramp half-width, px, at most the halo; default halo/2")
    blend: Literal["cosine", "linear", "none"] = "cosine"
    align_to_blocks: bool = True
    batch_size: int = Field(2, gt=0, description="tiles per model call")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    proba_dtype: Literal["uint8", "float32"] = "uint8"
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    assume_crs: str | None = None
    workers: int | None = Field(None, gt=0, description="local worker processes; default: one per core")
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler")
    max_tiles_in_flight: int | None = Field(None, gt=0, description="default: 4 batches per worker")

    @model_validator(mode="after")
    def _overlap_within_halo(self) -> PredictConfig:
        if self.overlap is not None and self.halo is not None and self.overlap > self.halo:
            raise ValueError(f"overlap ({self.overlap}) cannot be larger than halo ({self.halo})")
        return self

    @classmethod
    def build(cls, **values: object) -> PredictConfig:
        """Validate ``values`` (None means "not given"), turning pydantic's report into a ConfigError."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as err:
            raise load_config_error(err, "options") from err


def load_config_error(err: ValidationError, where: str) -> ConfigError:
    """A one-line ConfigError naming each bad key."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        parts.append(f"{key}: {e['msg']}")
    return ConfigError(f"{where}: " + "; ".join(parts))
