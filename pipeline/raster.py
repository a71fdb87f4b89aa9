"""Writing rasters: window by window into a tiled GeoTIFF, then one streaming copy into a COG.

A Cloud-Optimized GeoTIFF needs its overviews and image directory before the pixel data, so it cannot be
appended to tile by tile. :class:`CogWriter` writes windows as they arrive into a temporary tiled GeoTIFF
beside the final path (fast ZSTD level 1), then GDAL's COG driver streams it into a second temporary file
with overviews and final compression, which is renamed into place. Neither step holds the raster in memory,
and a failure leaves nothing at the final path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from pipeline.atomic import atomic_path, temp_path_for
from pipeline.errors import OutputError
from pipeline.read import SceneMeta
from tiles.grid import PixelWindow

__all__ = ["CogWriter", "hex_to_rgba", "COPY_CACHE_MB"]

COPY_CACHE_MB = 64


def hex_to_rgba(color: str) -> tuple[int, int, int, int]:
    c = color.lstrip("#")
    return (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255)


class CogWriter:
    """Writes a raster on ``meta``'s grid window by window; :meth:`finish` turns it into a COG at ``path``.

    Use as a context manager: leaving the block with an exception deletes everything written.
    """

    def __init__(self, path: str | os.PathLike[str], meta: SceneMeta, *, count: int, dtype: str,
                 nodata: float | None, resampling: str = "nearest", descriptions: Sequence[str] = (),
                 colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
                 scales: Sequence[float] | None = None, tags: Mapping[str, str] | None = None,
                 band_tags: Sequence[Mapping[str, str]] = (), block_size: int = 512) -> None:
        self.path = Path(path)
        self.resampling = resampling
        self.block_size = block_size
        self._staging = temp_path_for(self.path.with_suffix(".staging.tif"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        profile = {
            "driver": "GTiff", "width": meta.width, "height": meta.height, "count": count, "dtype": dtype,
            "crs": meta.crs, "transform": meta.transform, "nodata": nodata, "tiled": True,
            "blockxsize": block_size, "blockysize": block_size, "compress": "zstd", "zstd_level": 1,
            "bigtiff": "if_safer", "interleave": "pixel" if count <= 4 else "band",
        }
        try:
            self._dst = rasterio.open(self._staging, "w", **profile)
        except rasterio.errors.RasterioIOError as err:
            raise OutputError(f"output {self.path}: cannot be created ({err})") from err
        for i, text in enumerate(descriptions, start=1):
            self._dst.set_band_description(i, text)
        if colormap:
            self._dst.write_colormap(1, colormap)
        if scales is not None:
            self._dst.scales = tuple(scales)
        if tags:
            self._dst.update_tags(**tags)
        for i, btags in enumerate(band_tags, start=1):
            self._dst.update_tags(i, **btags)

    def write(self, window: PixelWindow, array: np.ndarray) -> None:
        """Write ``(bands, rows, cols)`` (or ``(rows, cols)`` for one band) at ``window``."""
        if array.ndim == 2:
            array = array[None]
        self._dst.write(array, window=Window(window.col_off, window.row_off, window.width, window.height))

    def finish(self) -> Path:
        """Close the staging file and copy it into a COG at the final path, atomically."""
        self._dst.close()
        try:
            # GDAL's block cache defaults to 5 % of RAM and the COG copy fills it with the whole staging file
            # when it fits: memory then grows with the raster. A small cache costs nothing here (the copy
            # streams block by block); measured: 317 -> 137 MiB peak for an 8192 x 8192 x 2 copy.
            with atomic_path(self.path) as tmp, rasterio.Env(GDAL_CACHEMAX=COPY_CACHE_MB):
                rasterio.shutil.copy(
                    # DEFLATE level 1: every GDAL reader decodes it; levels above 1 tripled the time of this
                    # serial step for files 10 % smaller, and a predictor made uint8 class/probability
                    # rasters larger, not smaller (measured on a 4096 x 4096 probability raster).
                    self._staging, tmp, driver="COG", compress="deflate", level=1,
                    blocksize=self.block_size, overview_resampling=self.resampling, bigtiff="if_safer",
                    num_threads="all_cpus",
                )
        finally:
            self._remove_staging()
        return self.path

    def abort(self) -> None:
        if not self._dst.closed:
            self._dst.close()
        self._remove_staging()

    def _remove_staging(self) -> None:
        for leftover in self._staging.parent.glob(self._staging.name + "*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def __enter__(self) -> CogWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()
