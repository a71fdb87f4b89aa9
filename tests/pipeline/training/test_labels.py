"""Labels on the scene grid: vector labels in another CRS are reprojected, raster labels warped, classes mapped."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.features import rasterize
from rasterio.transform import from_origin
from shapely import box

from pipeline.errors import ConfigError
from pipeline.inference.read import open_scene
from pipeline.training.labels import IGNORE, open_labels, read_labels
from tiles.grid import PixelWindow

CLASSES = ("background", "building", "road")


@pytest.fixture
def scene(make_geotiff):
    # 120 x 160 px at 10 m, origin (500000, 4000000), EPSG:32633; a nodata box in the corner.
    return open_scene(make_geotiff("scene.tif", shape=(1, 120, 160), nodata=0, nodata_box=(0, 10, 0, 10)))


def _polygons_utm() -> list:
    # Rotated-ish shapes so reprojection matters at pixel level: a square, a triangle and a thin strip.
    return [box(500100, 3999200, 500400, 3999600),
            box(500700, 3999300, 500750, 3999900).union(box(500700, 3999850, 501300, 3999900)),
            box(501000, 3998900, 501500, 3999100)]


def test_vector_labels_in_another_crs_match_rasterizing_the_pre_reprojected_polygons(tmp_path, scene):
    utm = _polygons_utm()
    to_wgs84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform
    # Densify first so the reprojected polygons follow the same curved edges as the originals.
    wgs84 = [shapely.transform(p.segmentize(5.0), to_wgs84, interleaved=False) for p in utm]
    path = tmp_path / "labels.geojson"
    gpd.GeoDataFrame({"kind": ["building", "building", "road"]}, geometry=wgs84, crs="EPSG:4326").to_file(path)

    labels = open_labels(path, scene, CLASSES, "kind")
    window = PixelWindow(0, 0, scene.height, scene.width)
    got = read_labels(labels, window)

    # Independent reference: the polygons back in the scene CRS with pyproj directly, rasterized whole.
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True).transform
    back = [shapely.transform(p, to_utm, interleaved=False) for p in wgs84]
    expected = rasterize(list(zip(back, [1, 1, 2], strict=True)), out_shape=(scene.height, scene.width),
                         transform=scene.transform, fill=0, dtype="uint8")
    assert (expected == 1).sum() > 1000 and (expected == 2).sum() > 500
    np.testing.assert_array_equal(got, expected)
    # Window by window gives the same pixels as the whole scene at once.
    part = PixelWindow(30, 50, 40, 70)
    rs, cs = part.relative_to(window)
    np.testing.assert_array_equal(read_labels(labels, part), expected[rs, cs])


def test_scene_nodata_is_unknown_and_no_attribute_means_class_one(tmp_path, scene):
    path = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame(geometry=[box(500000, 3999800, 500300, 4000000)], crs="EPSG:32633").to_file(path)
    labels = open_labels(path, scene, ("background", "building"))
    from pipeline.inference.read import read_window

    _, valid = read_window(scene, scene.bounds, (1,))
    got = read_labels(labels, scene.bounds, valid)
    assert (got[:10, :10] == IGNORE).all()  # the scene's nodata box
    assert (got[10:20, 10:30] == 1).all() and (got[:20, 30:] == 0).all()


def test_unknown_class_value_and_missing_attribute_are_named(tmp_path, scene):
    path = tmp_path / "labels.geojson"
    gpd.GeoDataFrame({"kind": ["building", "shed"]}, geometry=_polygons_utm()[:2], crs="EPSG:32633").to_file(path)
    with pytest.raises(ConfigError, match="kind='shed'.*background"):
        open_labels(path, scene, CLASSES, "kind")
    with pytest.raises(ConfigError, match="no attribute 'class'.*kind"):
        open_labels(path, scene, CLASSES, "class")


def test_label_raster_on_another_grid_is_warped_with_nearest(tmp_path, scene):
    # Labels at 20 m over the same area: each label pixel covers 2 x 2 scene pixels.
    coarse = np.zeros((60, 80), dtype=np.uint8)
    coarse[10:20, 5:30] = 1
    coarse[40:50, 60:70] = 9  # the label raster's nodata
    path = tmp_path / "labels.tif"
    with rasterio.open(path, "w", driver="GTiff", width=80, height=60, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000.0, 4000000.0, 20.0, 20.0), nodata=9) as dst:
        dst.write(coarse, 1)
    got = read_labels(open_labels(path, scene, ("background", "building")), scene.bounds)
    expected = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)
    expected[expected == 9] = IGNORE
    np.testing.assert_array_equal(got, expected)


def test_label_raster_value_outside_the_classes_is_refused(tmp_path, scene, make_geotiff):
    data = np.zeros((1, scene.height, scene.width))
    data[0, 5, 5] = 3
    path = make_geotiff("labels.tif", data=data, dtype="uint8")
    with pytest.raises(ConfigError, match="value 3 is not a class number 0..1"):
        read_labels(open_labels(path, scene, ("background", "building")), scene.bounds)
