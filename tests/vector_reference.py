"""The independent reference for polygon layers: GDAL's polygonizer run once on the whole raster."""

from __future__ import annotations

from collections import Counter

import numpy as np
import rasterio.features
import shapely
from affine import Affine


def whole_raster_polygons(classes: np.ndarray, valid: np.ndarray, transform: Affine = Affine.identity()
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Polygons and their class values from one ``rasterio.features.shapes`` call on the whole raster."""
    work = classes if classes.dtype.name in ("uint8", "uint16", "int16", "int32") else classes.astype(np.int32)
    pairs = list(rasterio.features.shapes(work, mask=valid, connectivity=4, transform=transform))
    geoms = np.array([shapely.geometry.shape(g) for g, _ in pairs], dtype=object)
    return geoms, np.array([int(v) for _, v in pairs], dtype=np.int64)


def assert_same_polygons(ours: np.ndarray, our_cls: np.ndarray, ref: np.ndarray, ref_cls: np.ndarray) -> None:
    """Per class: the same number of polygons, and each of ours equals one reference polygon exactly
    (symmetric-difference area 0), so together they also cover exactly the same ground."""
    assert Counter(our_cls.tolist()) == Counter(ref_cls.tolist())
    for value in np.unique(ref_cls):
        mine, theirs = ours[our_cls == value], ref[ref_cls == value]
        tree = shapely.STRtree(theirs)
        # match each of ours with the reference polygon containing its interior point
        hit_ours, hit_ref = tree.query(shapely.point_on_surface(mine), predicate="within")
        assert len(hit_ours) == len(mine) and len(np.unique(hit_ref)) == len(theirs), f"class {value}: unmatched"
        order = np.argsort(hit_ours)
        diff = shapely.area(shapely.symmetric_difference(mine[hit_ours[order]], theirs[hit_ref[order]]))
        assert float(diff.max(initial=0.0)) == 0.0, f"class {value}: symmetric difference {diff.max()}"
        assert shapely.is_valid(mine).all()
