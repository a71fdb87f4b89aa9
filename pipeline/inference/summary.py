"""What a finished class raster holds, for people: the area of each class and a quicklook picture.

The area is exact: every pixel is counted, window by window (one row of the COG's blocks at a time, so memory
follows the width, not the scene), each weighted by its area on the ground from
:func:`pipeline.change.align.pixel_area_rows` (planar in a projected CRS, geodesic per row in a geographic
one), the same basis as the change and timeline area tables. The quicklook is read decimated (from the COG's
overviews), coloured with the model's class colours, nodata transparent.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from pipeline.change.align import GridSpec, pixel_area_rows
from pipeline.change.compare import class_areas
from pipeline.colours import colour_table
from pipeline.inference.raster import small_block_cache
from pipeline.products import CLASS_NODATA, class_names_from_tags
from tiles.grid import PixelWindow

__all__ = ["ClassAreas", "count_class_areas", "read_class_areas", "colorize_classes",
           "encode_classes_png", "read_classes_preview"]

_ROWS_PER_READ = 512


@dataclass(frozen=True, slots=True)
class ClassAreas:
    """Pixels and m² of each class value (index = class value), and of nodata, over a whole class raster."""

    class_names: tuple[str, ...]
    pixels: tuple[int, ...]
    area_m2: tuple[float, ...]
    nodata_pixels: int
    nodata_m2: float

    @property
    def total_pixels(self) -> int:
        return sum(self.pixels) + self.nodata_pixels

    @property
    def valid_m2(self) -> float:
        return float(sum(self.area_m2))

    @property
    def nodata_share(self) -> float:
        total = self.total_pixels
        return self.nodata_pixels / total if total else 0.0


def count_class_areas(classes: np.ndarray, row_areas: np.ndarray, n_classes: int,
                      nodata: int = CLASS_NODATA) -> tuple[np.ndarray, np.ndarray]:
    """Per class value ``0..n_classes-1`` then nodata (last entry): pixel counts (int64) and area (float64,
    the sum of ``row_areas[r]`` over the pixels of each row ``r``). Values outside the classes count as
    nodata. The window's counting is :func:`pipeline.change.compare.class_areas`, as for timelines."""
    classes = np.asarray(classes)
    row_areas = np.asarray(row_areas, dtype=np.float64)
    if classes.dtype == np.uint8 and classes.ndim == 2 and classes.size and n_classes <= 256:
        area, pixels = _count_uint8_rows(classes, row_areas, n_classes, nodata)
    else:
        area, pixels, _ = class_areas(classes, row_areas, n_classes, nodata)
    total = float(row_areas.sum()) * (classes.shape[1] if classes.ndim == 2 else 0)
    return (np.append(pixels, classes.size - pixels.sum()).astype(np.int64),
            np.append(area, total - area.sum()).astype(np.float64))


def _count_uint8_rows(classes: np.ndarray, row_areas: np.ndarray, n_classes: int,
                      nodata: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`count_class_areas` of a uint8 raster: each row's pixels per value (a bincount of one row stays
    in the cache), then each class's area as its pixels in each row times that row's pixel area. The same
    pixel counts as :func:`pipeline.change.compare.class_areas`, whose per-pixel weights, gathered over the
    whole window, took 7x longer (0.27 against 0.04 s for a 4096² scene); the areas agree to float rounding
    (a product of integer counts, rather than a sum of millions of equal weights)."""
    per_row = np.empty((classes.shape[0], 256), dtype=np.int64)
    for r in range(classes.shape[0]):
        per_row[r] = np.bincount(classes[r], minlength=256)
    if 0 <= nodata < 256:
        per_row[:, nodata] = 0  # never a class, even where it is below n_classes
    counts = per_row[:, :n_classes]
    return row_areas @ counts, counts.sum(axis=0)


def read_class_areas(path: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> ClassAreas:
    """Exact pixels and area of every class of a ``*.classes.tif``, read a strip of rows at a time (each block
    once: GDAL's block cache is kept small meanwhile, so memory does not grow with the raster)."""
    with small_block_cache(), rasterio.open(path) as src:
        names = tuple(class_names) if class_names else class_names_from_tags(src.tags())
        n = len(names) or CLASS_NODATA  # unnamed: every value but nodata is a class
        nodata = int(src.nodata) if src.nodata is not None else CLASS_NODATA
        grid = GridSpec(src.crs, src.transform, src.height, src.width)
        pixels = np.zeros(n + 1, dtype=np.int64)
        area = np.zeros(n + 1, dtype=np.float64)
        step = max(_ROWS_PER_READ, src.block_shapes[0][0])
        for row in range(0, src.height, step):
            height = min(step, src.height - row)
            data = src.read(1, window=Window(0, row, src.width, height))
            rows = pixel_area_rows(grid, PixelWindow(row, 0, height, src.width))
            p, a = count_class_areas(data, rows, n, nodata)
            pixels += p
            area += a
    if not names:
        n = int(np.flatnonzero(pixels[:n]).max(initial=-1)) + 1
        names = tuple(str(i) for i in range(n))
    return ClassAreas(names, tuple(int(v) for v in pixels[:n]), tuple(float(v) for v in area[:n]),
                      int(pixels[-1]), float(area[-1]))


def colorize_classes(classes: np.ndarray, colors: Sequence[str], nodata: int = CLASS_NODATA) -> np.ndarray:
    """``(H, W)`` class values to ``(H, W, 4)`` uint8 RGBA: each class its colour, nodata (and any value
    without a colour) transparent."""
    return _class_lut(colors, nodata)[np.asarray(classes, dtype=np.uint8)]


def _class_lut(colors: Sequence[str], nodata: int) -> np.ndarray:
    """``(256, 4)`` uint8 RGBA of every class value: its colour, nodata (and values without one) transparent."""
    lut = np.zeros((256, 4), dtype=np.uint8)
    for value, rgba in colour_table(colors[:255], nodata).items():
        lut[value] = rgba
    return lut


def encode_classes_png(classes: np.ndarray, colors: Sequence[str], nodata: int = CLASS_NODATA) -> bytes:
    """``(H, W)`` class values as a palette PNG that decodes to :func:`colorize_classes`'s RGBA pixels (a
    palette of the class colours, nodata transparent), for pictures inlined in a report: an 800 px scene in
    0.02 s of CPU and 58 kB, against 0.21 s and 73 kB for an RGBA PNG at zlib level 9 with every filter tried;
    the 1024 px quicklook of an 8192² scene 0.06 s against 0.64 s."""
    from PIL import Image

    lut = _class_lut(colors, nodata)
    image = Image.fromarray(np.ascontiguousarray(classes, dtype=np.uint8))
    image.putpalette(lut[:, :3].tobytes())  # an "L" image given a palette becomes "P"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=lut[:, 3].tobytes())
    return buffer.getvalue()


def read_classes_preview(path: str | os.PathLike[str], max_size: int = 1024) -> np.ndarray:
    """The class raster decimated (nearest, from overviews) to at most ``max_size`` px on its long side."""
    with small_block_cache(), rasterio.open(path) as src:
        scale = max(src.height, src.width) / max_size
        shape = (src.height, src.width) if scale <= 1 else (max(1, round(src.height / scale)),
                                                            max(1, round(src.width / scale)))
        return src.read(1, out_shape=shape, resampling=Resampling.nearest)
