"""Areas and perimeters in metres, whatever the CRS.

Two bases, chosen once per raster by :func:`area_basis`:

- ``planar``: the CRS is projected and its areal scale factor stays within :data:`PLANAR_TOLERANCE` of 1
  over the whole raster (equal-area projections, UTM and other transverse Mercator zones). Areas are the
  polygon's planar area times the square of the linear unit in metres, so the areas of a layer sum to
  pixel count times pixel area exactly.
- ``geodesic``: a geographic CRS, or a projection that distorts areas by more than that (Web Mercator,
  most conformal world projections). Polygons are densified, taken to the CRS's own geographic CRS and
  measured on its ellipsoid with :meth:`pyproj.Geod.geometry_area_perimeter` (Karney's geodesic
  algorithms). Nothing is ever measured in degrees.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Geod, Transformer

__all__ = ["AreaBasis", "area_basis", "measure", "PLANAR_TOLERANCE", "pixel_size_m"]

PLANAR_TOLERANCE = 0.005  # areal scale factor within 0.5 % of 1: planar areas are trusted


@dataclass(frozen=True, slots=True)
class AreaBasis:
    """How one raster's polygons are measured; ``unit_m`` is the CRS's linear unit in metres (planar)."""

    kind: Literal["planar", "geodesic"]
    crs_wkt: str
    unit_m: float = 1.0


def area_basis(crs: CRS | str, transform: Affine, height: int, width: int) -> AreaBasis:
    """Planar when the projection keeps areas within :data:`PLANAR_TOLERANCE` over the raster, else geodesic."""
    crs = CRS.from_user_input(crs)
    wkt = crs.to_wkt()
    if not crs.is_projected:
        return AreaBasis("geodesic", wkt)
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    rows, cols = np.meshgrid(np.linspace(0, height, 5), np.linspace(0, width, 5), indexing="ij")
    xs, ys = _apply(transform, cols.ravel(), rows.ravel())
    try:
        lon, lat = _to_geographic(wkt).transform(xs, ys)
        from pyproj import Proj

        scale = np.asarray(Proj(crs).get_factors(lon, lat, errcheck=True).areal_scale)
    except Exception:  # noqa: BLE001 - whatever pyproj raises, geodesic areas (always right) are the fallback
        return AreaBasis("geodesic", wkt)
    if np.all(np.isfinite(scale)) and np.max(np.abs(scale - 1.0)) <= PLANAR_TOLERANCE:
        return AreaBasis("planar", wkt, float(unit))
    return AreaBasis("geodesic", wkt)


def pixel_size_m(basis: AreaBasis, transform: Affine, height: int, width: int) -> float:
    """The side of a pixel in metres at the raster's centre (mean of both axes)."""
    if basis.kind == "planar":
        return float(np.sqrt(abs(transform.determinant))) * basis.unit_m
    xs, ys = _apply(transform, np.array([width / 2, width / 2 + 1, width / 2]),
                    np.array([height / 2, height / 2, height / 2 + 1]))
    lon, lat = _to_geographic(basis.crs_wkt).transform(xs, ys)
    geod = _geod(basis.crs_wkt)
    _, _, dx = geod.inv(lon[0], lat[0], lon[1], lat[1])
    _, _, dy = geod.inv(lon[0], lat[0], lon[2], lat[2])
    return float(np.sqrt(dx * dy))


def measure(pixel_geoms: np.ndarray, transform: Affine, basis: AreaBasis) -> tuple[np.ndarray, np.ndarray]:
    """Area (m²) and perimeter (m) of polygons given in pixel coordinates of a raster with ``transform``."""
    if len(pixel_geoms) == 0:
        return np.empty(0), np.empty(0)
    if basis.kind == "planar":
        scale = abs(transform.determinant)  # map units² per pixel²
        # perimeter needs the map geometry when pixels are not square
        perimeter = shapely.length(to_map(pixel_geoms, transform)) * basis.unit_m
        return shapely.area(pixel_geoms) * scale * basis.unit_m**2, perimeter
    # Densify so that straight pixel-grid edges (parallels, meridians, projected lines) follow their true
    # path on the ellipsoid rather than the geodesic between far-apart vertices.
    dense = shapely.segmentize(pixel_geoms, 8.0)
    lonlat = shapely.transform(to_map(dense, transform), _lonlat_fn(basis.crs_wkt))
    lonlat = shapely.orient_polygons(lonlat, exterior_cw=False)
    geod = _geod(basis.crs_wkt)
    area = np.empty(len(lonlat))
    perimeter = np.empty(len(lonlat))
    for i, geom in enumerate(lonlat):
        a, p = geod.geometry_area_perimeter(geom)
        area[i], perimeter[i] = abs(a), p
    return area, perimeter


def _apply(transform: Affine, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (transform.a * cols + transform.b * rows + transform.c,
            transform.d * cols + transform.e * rows + transform.f)


def to_map(pixel_geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Geometries from pixel coordinates (x = column, y = row) to the raster's CRS."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    return shapely.transform(pixel_geoms, apply)


@functools.lru_cache(maxsize=16)
def _to_geographic(wkt: str) -> Transformer:
    crs = CRS.from_wkt(wkt)
    return Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)


def _lonlat_fn(wkt: str) -> Callable[[np.ndarray], np.ndarray]:
    transformer = _to_geographic(wkt)

    def apply(xy: np.ndarray) -> np.ndarray:
        lon, lat = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([lon, lat])

    return apply


@functools.lru_cache(maxsize=16)
def _geod(wkt: str) -> Geod:
    geod = CRS.from_wkt(wkt).get_geod()
    return geod if geod is not None else Geod(ellps="WGS84")
