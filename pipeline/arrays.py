"""Rasters as labelled arrays for notebooks: :class:`xarray.DataArray` with coordinates, CRS and class names.

Reads go through rasterio (decimated with ``max_size`` so that a notebook cell never loads more than a
picture's worth of a large raster); no rioxarray needed for what a notebook shows and sums.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling

if TYPE_CHECKING:  # imported lazily where used: notebooks need it, pipelines do not
    import xarray as xr

__all__ = ["read_dataarray", "coords_for"]


def coords_for(transform: Affine, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre ``y`` and ``x`` coordinates of a north-up grid."""
    x = transform.c + transform.a * (np.arange(width) + 0.5)
    y = transform.f + transform.e * (np.arange(height) + 0.5)
    return y, x


def read_dataarray(path: str | os.PathLike[str], bands: Sequence[int] | None = None, *,
                   max_size: int | None = None, masked: bool = True) -> xr.DataArray:
    """A raster as a ``(band, y, x)`` DataArray (decimated to at most ``max_size`` px on a side).

    ``attrs`` carry ``crs`` (WKT), ``transform``, ``nodata``, the raster's tags (class names in
    ``SCENEWATCH_CLASSES``) and band descriptions as the ``band`` coordinate's ``description``. With
    ``masked``, nodata pixels become NaN (the array is float32 then).
    """
    import xarray as xr

    with rasterio.open(path) as src:
        indexes = list(bands) if bands is not None else list(range(1, src.count + 1))
        height, width, transform = src.height, src.width, src.transform
        if max_size and max(height, width) > max_size:
            scale = max(height, width) / max_size
            height, width = max(1, round(src.height / scale)), max(1, round(src.width / scale))
            transform = src.transform @ Affine.scale(src.width / width, src.height / height)
        data = src.read(indexes, out_shape=(len(indexes), height, width), resampling=Resampling.nearest)
        if masked:
            valid = src.read_masks(indexes, out_shape=(len(indexes), height, width)) > 0
            data = np.where(valid, data.astype(np.float32), np.float32(np.nan))
        y, x = coords_for(transform, height, width)
        attrs = {"crs": src.crs.to_wkt() if src.crs else "", "transform": tuple(transform)[:6],
                 "nodata": src.nodata, **src.tags()}
        descriptions = [src.descriptions[i - 1] or f"band {i}" for i in indexes]
    return xr.DataArray(data, dims=("band", "y", "x"),
                        coords={"band": indexes, "y": y, "x": x, "description": ("band", descriptions)},
                        attrs=attrs, name=os.path.basename(path))
