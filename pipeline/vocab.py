"""Every vocabulary of scenewatch, defined once.

Each is a ``Literal``: the configs validate against it, the CLI offers :func:`choices` of it, and the docs
list the same values. The blend methods live in :mod:`tiles.blend` (``tiles`` imports nothing from
``pipeline``) and are re-exported here so that every vocabulary can be found in one place.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from tiles.blend import BlendMethod

__all__ = [
    "BlendMethod",
    "ChangePairs",
    "Precision",
    "ProbaDtype",
    "Resampling",
    "VECTOR_FORMAT_ALIASES",
    "VectorFormat",
    "choices",
]

Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
"""Inference precision of a network. ``auto``: fp16 on a GPU; on a CPU the fastest backend within the drift
limit, measured once per machine and cached (see :mod:`pipeline.models.backends`)."""

ProbaDtype = Literal["uint8", "float32"]
"""Storage of the probability raster: ``uint8`` is ``round(p x 254)`` with nodata 255, ``float32`` is ``p``."""

VectorFormat = Literal["gpkg", "parquet", "fgb", "geojson"]
"""Polygon layer formats; the value is also the file extension."""

VECTOR_FORMAT_ALIASES = {"geoparquet": "parquet", "flatgeobuf": "fgb", "json": "geojson"}
"""Other names users write for a :data:`VectorFormat`."""

ChangePairs = Literal["consecutive", "first-last", "all"]
"""Which dated scenes of a batch are compared two by two."""

Resampling = Literal["mode", "average", "nearest"]
"""How a raster's overview levels are computed: ``mode`` for classes, ``average`` for probabilities."""


def choices(vocabulary: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` vocabulary, in their declared order."""
    return tuple(get_args(vocabulary))
