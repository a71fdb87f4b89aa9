"""Writing rasters: window by window into a tiled GeoTIFF, then one streaming copy into a COG.

A Cloud-Optimized GeoTIFF needs its overviews and image directory before the pixel data, so it cannot be
appended to tile by tile. :class:`CogWriter` writes windows as they arrive into a temporary tiled GeoTIFF
beside the final path (uncompressed unless large), and halves each window into one staging file per
overview level while it is in memory (:mod:`pipeline.inference.overviews`). GDAL's COG driver then streams the raster
and its levels into a second temporary file with the final compression, which is renamed into place.
Neither step holds the raster in memory, and a failure leaves nothing at the final path.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.windows import Window

from pipeline.atomic import atomic_path, free_bytes, remove_with_sidecars, temp_path_for
from pipeline.errors import DiskFullError, OutputError
from pipeline.inference.overviews import RESAMPLINGS, overview_factors, reduce2
from pipeline.inference.read import SceneMeta
from tiles.grid import PixelWindow

__all__ = ["CogWriter", "verify_raster", "COPY_CACHE_MB", "small_block_cache"]

COPY_CACHE_MB = 16
# What GDAL raises when a write fails (a full disk, a vanished folder): rasterio's own errors, the bare CPL
# errors some drivers raise through rasterio.shutil (not RasterioError subclasses), and the OS's.
_WRITE_ERRORS = (rasterio.errors.RasterioError, CPLE_BaseError, OSError)
# Staging rasters up to this many bytes are written uncompressed: ZSTD level 1 cost the writing process
# three times the CPU of a plain write (0.45 vs 0.16 s for 128 MiB of probabilities) on the serial path,
# and the COG copy reads them faster. Larger ones are compressed so that the temporary disk space stays
# a fraction of the raster's size.
STAGING_RAW_LIMIT = 2 * 2**30


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
            "blockxsize": block_size, "blockysize": block_size,
            "bigtiff": "if_safer", "interleave": "pixel" if count <= 4 else "band",
        }
        if meta.width * meta.height * count * np.dtype(dtype).itemsize > STAGING_RAW_LIMIT:
            profile |= {"compress": "zstd", "zstd_level": 1}
        # GDAL's block cache stays small while this writer lives: partly written blocks of the staging and
        # level files would otherwise stay in it until the end (the level files' blocks fill over several
        # rows of tiles, so memory grew with the scene: +80 MiB at 16384 x 16384).
        self._cache = contextlib.ExitStack()
        self._dst: rasterio.io.DatasetWriter | None = None
        self._levels: list[tuple[int, Path, rasterio.io.DatasetWriter]] | None = None
        try:  # any error here, or SIGTERM's SystemExit, removes what was created so far
            self._cache.enter_context(small_block_cache())
            try:
                self._dst = rasterio.open(self._staging, "w", **profile)
            except rasterio.errors.RasterioIOError as err:
                raise OutputError(f"output {self.path}: cannot be created ({err})") from err
            self._describe(descriptions, colormap, scales, tags, band_tags)
            self._nodata = nodata
            factors = overview_factors(meta.height, meta.width, block_size)
            if factors and resampling in RESAMPLINGS:
                self._levels = []
                for factor in factors:
                    level_path = self._staging.with_name(f"{self._staging.stem}.ovr{factor}.tif")
                    level = {**profile, "width": math.ceil(meta.width / factor),
                             "height": math.ceil(meta.height / factor),
                             "transform": meta.transform * Affine.scale(factor)}
                    self._levels.append((factor, level_path, rasterio.open(level_path, "w", **level)))
        except BaseException:
            self.abort()
            raise

    @property
    def _out(self) -> rasterio.io.DatasetWriter:
        """The staging file, open from the end of ``__init__`` on (None only while that runs or fails)."""
        assert self._dst is not None, "CogWriter used before its staging file was opened"
        return self._dst

    def _describe(self, descriptions: Sequence[str], colormap: Mapping[int, tuple[int, int, int, int]] | None,
                  scales: Sequence[float] | None, tags: Mapping[str, str] | None,
                  band_tags: Sequence[Mapping[str, str]]) -> None:
        for i, text in enumerate(descriptions, start=1):
            self._out.set_band_description(i, text)
        if colormap:
            self._out.write_colormap(1, colormap)
        if scales is not None:
            self._out.scales = tuple(scales)
        if tags:
            self._out.update_tags(**tags)
        for i, btags in enumerate(band_tags, start=1):
            self._out.update_tags(i, **btags)

    def write(self, window: PixelWindow, array: np.ndarray) -> None:
        """Write ``(bands, rows, cols)`` (or ``(rows, cols)`` for one band) at ``window``."""
        if array.ndim == 2:
            array = array[None]
        try:
            self._out.write(array, window=Window(window.col_off, window.row_off, window.width, window.height))
            if self._levels is None:
                return
            if not self._aligned(window):
                self._drop_levels()  # GDAL computes the overviews at the end instead
                return
            level, offset, previous = array, (window.row_off, window.col_off), 1
            for factor, _, dst in self._levels:
                for _ in range(factor.bit_length() - previous.bit_length()):
                    level = reduce2(level, self.resampling, self._nodata)
                previous = factor
                row, col = offset[0] // factor, offset[1] // factor
                dst.write(level, window=Window(col, row, level.shape[2], level.shape[1]))
        except _WRITE_ERRORS as err:
            raise self._write_error("writing", err) from err

    def _write_error(self, doing: str, err: BaseException, tmp: Path | None = None) -> OutputError:
        """What a failed write means to the user: usually a full disk, said with the space it needs."""
        folder = self.path.parent
        free = free_bytes(folder)
        ours = [self._staging, self._staging.with_suffix(".vrt"), *(p for _, p, _ in self._levels or ()),
                *([tmp] if tmp is not None else [])]
        held = sum(p.stat().st_size for p in ours if p.exists())  # ours, removed as this error propagates
        d = self._dst
        need = d.width * d.height * d.count * np.dtype(d.dtypes[0]).itemsize * 2 if d is not None else 0
        if free is not None and free < 2**20 + need - held:
            return DiskFullError(f"output {self.path.name}: no space left in {folder} while {doing} "
                               f"({(free + held) / 2**20:.1f} MiB free without this raster's temporary files, "
                               f"about {need / 2**20:.1f} MiB needed); free some space and run again")
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        return OutputError(f"output {self.path.name}: cannot be written in {folder} while {doing} ({detail})")

    def _aligned(self, window: PixelWindow) -> bool:
        """Whether ``window`` halves into whole cells at every level (starts, and ends unless at the edge,
        on multiples of the coarsest factor)."""
        step = self._levels[-1][0] if self._levels else 1
        return (window.row_off % step == 0 and window.col_off % step == 0
                and (window.row_end % step == 0 or window.row_end == self._out.height)
                and (window.col_end % step == 0 or window.col_end == self._out.width))

    def _drop_levels(self) -> None:
        for _, path, dst in self._levels or ():
            if not dst.closed:
                dst.close()
            remove_with_sidecars(path)
        self._levels = None

    def finish(self) -> Path:
        """Close the staging file and copy it into a COG at the final path, atomically; the COG is reopened
        and checked before it is renamed into place."""
        try:
            try:
                self._out.close()
                for _, _, dst in self._levels or ():
                    dst.close()
                source, overviews = self._staging, {"overview_resampling": self.resampling}
                if self._levels:
                    source, overviews = self._with_levels(), {"overviews": "force_use_existing"}
            except _WRITE_ERRORS as err:
                raise self._write_error("writing", err) from err
            with atomic_path(self.path) as tmp:
                try:
                    rasterio.shutil.copy(
                        # DEFLATE level 1: every GDAL reader decodes it; levels above 1 tripled the time of
                        # this serial step for files 10 % smaller, and a predictor made uint8 class/probability
                        # rasters larger, not smaller (measured on a 4096 x 4096 probability raster).
                        source, tmp, driver="COG", compress="deflate", level=1, blocksize=self.block_size,
                        bigtiff="if_safer", num_threads="all_cpus", **overviews,
                    )
                    # On a full disk GDAL's copy can end without an error and leave a file it cannot read
                    # back: nothing is renamed into place before it has been reopened and checked.
                    problem = verify_raster(tmp, self._out.height, self._out.width, self._out.count)
                except _WRITE_ERRORS as err:
                    raise self._write_error("making the COG", err, tmp) from err
                if problem is not None:
                    raise self._write_error("making the COG", OSError(problem), tmp)
        finally:
            self._remove_staging()
            self._cache.close()
        return self.path

    def _with_levels(self) -> Path:
        """A VRT of the staging raster that lists the level files as its bands' overviews."""
        vrt = self._staging.with_suffix(".vrt")
        rasterio.shutil.copy(self._staging, vrt, driver="VRT")  # keeps tags, colours, scales, descriptions
        tree = ET.parse(vrt)
        for band in tree.getroot().iter("VRTRasterBand"):
            for _, path, _ in self._levels or ():
                overview = ET.SubElement(band, "Overview")
                ET.SubElement(overview, "SourceFilename", relativeToVRT="0").text = str(path.resolve())
                ET.SubElement(overview, "SourceBand").text = band.get("band")
        tree.write(vrt)
        return vrt

    def abort(self) -> None:
        """Close and delete everything this writer created; the final path is untouched."""
        if self._dst is not None and not self._dst.closed:
            self._dst.close()
        self._remove_staging()
        self._cache.close()

    def _remove_staging(self) -> None:
        self._drop_levels()
        remove_with_sidecars(self._staging.with_suffix(".vrt"))
        remove_with_sidecars(self._staging)

    def __enter__(self) -> CogWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()


def verify_raster(path: Path, height: int, width: int, count: int) -> str | None:
    """Why a raster just written cannot be published (None when it can): it must open with the expected
    size, and the last block of every band, at full resolution and at each overview level, must decode.
    Blocks are written in order, so a file cut short fails on its last block."""
    try:
        with rasterio.open(path) as src:
            if (src.height, src.width, src.count) != (height, width, count):
                return f"{src.height} x {src.width} x {src.count} instead of {height} x {width} x {count}"
            levels = len(src.overviews(1))
        for level in range(-1, levels):
            with rasterio.open(path, **({} if level < 0 else {"overview_level": level})) as src:
                block_h, block_w = src.block_shapes[0]
                row = (src.height - 1) // block_h * block_h
                col = (src.width - 1) // block_w * block_w
                src.read(window=Window(col, row, min(block_w, src.width - col), min(block_h, src.height - row)))
    except _WRITE_ERRORS as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


_cache_lock = threading.Lock()
_cache_users = 0
_cache_before: int | None = None


@contextlib.contextmanager
def small_block_cache() -> Iterator[None]:
    """GDAL's block cache capped at :data:`COPY_CACHE_MB` while any writer, or any reader that visits each
    block once, of this process is open.

    The cache defaults to 5 % of RAM and a COG copy fills it with the whole staging file when it fits, so
    memory grew with the raster (317 -> 137 MiB peak for an 8192 x 8192 x 2 copy once capped); the copy
    streams block by block and loses nothing. Reading a class raster in strips for its areas kept every
    decoded block the same way (the CLI's peak 392 MiB on a 16384² scene against 139 on 4096²). The cap is
    process-wide in GDAL, so users side by side (in threads too) share one setting, restored when the last of
    them ends (a ``rasterio.Env`` per thread restored the default under a copy still running, and memory
    grew again).
    """
    global _cache_users, _cache_before
    with _cache_lock:
        if _cache_users == 0:
            _cache_before = get_gdal_config("GDAL_CACHEMAX")
            # bytes: rasterio passes the value to GDALSetCacheMax64 as is, so a bare 64 was a 64-byte cache
            set_gdal_config("GDAL_CACHEMAX", COPY_CACHE_MB * 2**20)
        _cache_users += 1
    try:
        yield
    finally:
        with _cache_lock:
            _cache_users -= 1
            if _cache_users == 0 and _cache_before is not None:
                set_gdal_config("GDAL_CACHEMAX", _cache_before)
