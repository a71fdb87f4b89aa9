"""Bringing rasters onto one grid: the first step of every comparison between dates.

A :class:`GridSpec` is a CRS, an affine transform and a size. :func:`read_aligned` reads one window of any
raster as it would look on that grid: GDAL's warper (through :class:`rasterio.vrt.WarpedVRT`) reprojects
and resamples only the source pixels that window needs, so no process ever holds a whole scene, whatever
its CRS, extent, resolution or offset. Pixels the source does not cover, or covers with nodata, come back
invalid, so that only the area valid on both dates is compared.

Class rasters are aligned with nearest-neighbour resampling (a class is never averaged); band values with
nearest as well by default, so that an exact shift of a scene reproduces its pixels unchanged.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NodataShadowWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pipeline.errors import InvalidSceneError, SceneReadError
from pipeline.inference.read import SceneMeta, check_georeferenced, open_raster, open_scene, read_item_on_grid
from pipeline.inference.stac import ItemGrid, is_stac_item
from tiles.grid import PixelWindow

__all__ = ["GridSpec", "GridOffset", "grid_of", "grid_meta", "grid_offset", "read_aligned", "pixel_area_rows",
           "same_grid", "covers"]


@dataclass(frozen=True, slots=True)
class GridSpec:
    """A raster grid: ``crs``, ``transform`` (of the top-left corner) and ``height`` x ``width`` pixels."""

    crs: CRS
    transform: Affine
    height: int
    width: int

    @property
    def bounds(self) -> PixelWindow:
        return PixelWindow(0, 0, self.height, self.width)

    @property
    def geo_bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS (north-up grids)."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))


def grid_of(path: str | os.PathLike[str] | SceneMeta, what: str = "raster") -> GridSpec:
    """The grid of a raster file (or of a scene already opened with :func:`pipeline.inference.read.open_scene`);
    ``what`` names the file in errors (``scene``, ``grid``)."""
    if isinstance(path, SceneMeta):
        return GridSpec(path.crs, path.transform, path.height, path.width)
    if is_stac_item(os.fspath(path)):  # a STAC item: the grid its bands are read onto (the finest band's)
        return grid_of(open_scene(os.fspath(path)))
    where = f"{what} {os.path.basename(path)}"
    with open_raster(path, what) as src:  # refuses what a scene may not be (VRT, FIFO, /vsi...), one line
        if src.crs is None:
            raise InvalidSceneError(f"{where}: the raster has no CRS; give it one (e.g. gdal_edit.py -a_srs) "
                                    "to compare it with other dates")
        check_georeferenced(src, where)
        return GridSpec(src.crs, src.transform, src.height, src.width)


def grid_meta(grid: GridSpec, *, path: str = "", count: int = 1, dtype: str = "uint8",
              nodata: float | None = None) -> SceneMeta:
    """A :class:`SceneMeta` describing ``grid`` (for writers that take a scene's metadata)."""
    return SceneMeta(path=path, crs=grid.crs, transform=grid.transform, height=grid.height, width=grid.width,
                     count=count, dtype=dtype, nodata=nodata, block_height=512, block_width=512)


def same_grid(a: GridSpec, b: GridSpec, tolerance: float = 1e-9) -> bool:
    """True when both grids have the same CRS, size and transform (within ``tolerance`` of a pixel)."""
    if (a.height, a.width) != (b.height, b.width) or a.crs != b.crs:
        return False
    px = max(abs(a.transform.a), abs(a.transform.e))
    return a.transform.almost_equals(b.transform, precision=tolerance * px)


@dataclass(frozen=True, slots=True)
class GridOffset:
    """How far another raster's pixels sit from a grid's, in the grid's pixels: ``rows`` and ``cols``, the
    offset of its pixel corners from the nearest corners of the grid (in [-0.5, 0.5]), and ``x_scale`` and
    ``y_scale``, its pixel size over the grid's (1 when the resolutions match)."""

    rows: float
    cols: float
    x_scale: float
    y_scale: float

    @property
    def pixels(self) -> float:
        """The larger of the two offsets, in pixels (0 on the same grid, 0.5 at worst)."""
        return max(abs(self.rows), abs(self.cols))

    @property
    def same_resolution(self) -> bool:
        return abs(self.x_scale - 1.0) < 1e-6 and abs(self.y_scale - 1.0) < 1e-6

    def misaligned(self, tolerance: float = 0.1) -> bool:
        """True when its pixels are more than ``tolerance`` of a pixel off, or of another size."""
        return self.pixels > tolerance or not self.same_resolution


def grid_offset(grid: GridSpec, other: GridSpec) -> GridOffset | None:
    """The sub-pixel offset and resolution ratio of ``other`` against ``grid`` (both in one CRS, neither
    rotated); None where that is not defined (another CRS: the raster is reprojected, and resampled
    wherever it lands).

    A whole number of pixels is no offset: windows just start elsewhere. A fraction is: every pixel then
    straddles two of the grid's and nearest-neighbour resampling shifts each edge, which two dates read as
    change (half a pixel gave 6 % "change" between two copies of one scene).
    """
    if grid.crs != other.crs:
        return None
    g, o = grid.transform, other.transform
    if g.b or g.d or o.b or o.d or not g.a or not g.e:
        return None
    col, row = ~g @ (o.c, o.f)
    return GridOffset(rows=float(row - np.round(row)), cols=float(col - np.round(col)),
                      x_scale=float(o.a / g.a), y_scale=float(o.e / g.e))


def covers(grid: GridSpec, other: GridSpec) -> bool:
    """True when the two grids' footprints overlap at all (compared in ``grid``'s CRS)."""
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(other.crs, grid.crs, *other.geo_bounds, densify_pts=21)
    g_left, g_bottom, g_right, g_top = grid.geo_bounds
    return left < g_right and right > g_left and bottom < g_top and top > g_bottom


def read_aligned(path: str | os.PathLike[str], grid: GridSpec, window: PixelWindow,
                 indexes: Sequence[int] | None = None, *, resampling: str = "nearest",
                 dtype: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` of ``grid`` from the raster at ``path``, reprojected as needed.

    Returns ``(bands, rows, cols)`` data (the file's type, or ``dtype``) and a ``(rows, cols)`` bool mask from
    GDAL's dataset mask (as :func:`pipeline.inference.read.read_window`): False outside the raster's footprint and
    wherever its nodata, internal mask or alpha says so. Only the source pixels under the window are read.
    """
    if is_stac_item(os.fspath(path)):  # a STAC item: its assets read straight onto the grid
        item, valid = read_item_on_grid(open_scene(os.fspath(path)), ItemGrid(grid.crs, grid.transform, grid.height,
                                                                             grid.width), window, indexes)
        return (item if dtype is None else item.astype(dtype)), valid
    rio_window = Window(window.col_off, window.row_off, window.width, window.height)
    name = os.path.basename(path)
    try:
        with open_raster(path, "raster") as src:
            bands = list(indexes) if indexes is not None else list(range(1, src.count + 1))
            out_dtype = dtype or src.dtypes[0]
            if same_grid(grid_of_dataset(src), grid):
                data = src.read(bands, window=rio_window, out_dtype=out_dtype)
                mask = _dataset_mask(src, rio_window)
            else:
                # without a nodata value, an alpha band is the only way the warper can say "not covered"
                no_mask = src.nodata is None and all(
                    flags == [rasterio.enums.MaskFlags.all_valid] for flags in src.mask_flag_enums)
                with WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                               height=grid.height, resampling=Resampling[resampling], add_alpha=no_mask) as vrt:
                    data = vrt.read(bands, window=rio_window, out_dtype=out_dtype)
                    mask = _dataset_mask(vrt, rio_window)
    except RasterioIOError as err:
        raise SceneReadError(f"raster {name}: rows {window.row_off}-{window.row_end}, columns "
                             f"{window.col_off}-{window.col_end} of the common grid cannot be read ({err})") from err
    valid = mask > 0
    if data.dtype.kind == "f":
        valid &= np.all(np.isfinite(data), axis=0)
    return data, valid


def _dataset_mask(src: Any, window: Window) -> np.ndarray:
    """GDAL's dataset mask, as :func:`pipeline.inference.read.read_window` uses it: an internal mask or alpha band, else
    nodata where every band holds the nodata value (a dark pixel with one zero band stays valid)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NodataShadowWarning)
        return src.dataset_mask(window=window)


def grid_of_dataset(src: rasterio.io.DatasetReader) -> GridSpec:
    return GridSpec(src.crs, src.transform, src.height, src.width)


def pixel_area_rows(grid: GridSpec, window: PixelWindow) -> np.ndarray:
    """Area in m² of one pixel on each row of ``window`` (float64, ``(rows,)``), whatever the CRS.

    Projected CRS: the pixel's planar area times the square of the linear unit's metres. Geographic CRS:
    the geodesic area of the pixel on the CRS's ellipsoid (varies with latitude, constant along a row of a
    north-up grid). The areas are map areas in the CRS's own projection, as GIS software reports them.
    """
    t = grid.transform
    if grid.crs.is_geographic:
        import pyproj  # pyproj.CRS, not rasterio's CRS

        geod = pyproj.Geod(ellps="WGS84")
        try:
            ellipsoid = pyproj.CRS.from_user_input(grid.crs.to_wkt()).ellipsoid
            if ellipsoid is not None:
                geod = pyproj.Geod(a=ellipsoid.semi_major_metre, b=ellipsoid.semi_minor_metre)
        except Exception:  # noqa: BLE001 - fall back to WGS84 for CRSs pyproj cannot read
            pass
        rows = np.arange(window.row_off, window.row_end, dtype=np.float64)
        x0, x1 = t.c, t.c + t.a
        out = np.empty(len(rows))
        for i, r in enumerate(rows):
            y0, y1 = t.f + t.e * r, t.f + t.e * (r + 1)
            area, _ = geod.polygon_area_perimeter([x0, x1, x1, x0], [y0, y0, y1, y1])
            out[i] = abs(area)
        return out
    factor = grid.crs.linear_units_factor[1] if grid.crs.linear_units_factor else 1.0
    return np.full(window.height, abs(t.a * t.e - t.b * t.d) * factor * factor)
