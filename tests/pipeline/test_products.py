"""The output contract: every product's file name and class-name tag is written and read back by one module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pipeline.errors import ModelError
from pipeline.products import (
    PRODUCTS,
    Tag,
    asset_of,
    class_names_from_tags,
    class_tags,
    classes_path,
    is_classes_path,
    is_product_path,
    name_of,
    proba_beside,
    proba_path,
    product_path,
)

NAMES = ["m_4709963_se_14_1_20200831", "2020-08-31_naip", "a__b", "site.v2", "a.change", "x.classes", "S2 tile"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", list(PRODUCTS))
def test_name_of_reads_back_every_products_name(tmp_path: Path, name: str, kind: str) -> None:
    path = product_path(tmp_path, name, kind)
    assert path.parent == tmp_path and path.name == name + PRODUCTS[kind].suffix
    assert name_of(path) == name
    assert name_of(str(path)) == name
    assert is_product_path(path)
    assert is_classes_path(path) == (kind == "classes")
    assert asset_of(path)[0] == kind


@pytest.mark.parametrize("name", NAMES)
def test_classes_and_proba_paths_round_trip(tmp_path: Path, name: str) -> None:
    classes = classes_path(tmp_path, name)
    assert classes == product_path(tmp_path, name, "classes") and name_of(classes) == name
    assert proba_beside(classes) == proba_path(tmp_path, name) == product_path(tmp_path, name, "proba")
    assert name_of(proba_beside(classes)) == name


def test_suffixes_are_matched_whatever_their_case() -> None:
    assert name_of("out/Scene.CLASSES.TIF") == "Scene" and is_classes_path("Scene.Classes.Tif")
    assert proba_beside("out/Scene.CLASSES.TIF") == Path("out/Scene.proba.tif")


@pytest.mark.parametrize(("path", "name"), [("in/scene.tif", "scene"), ("in/scene.TIFF", "scene"),
                                            ("in/mosaic.vrt", "mosaic"), ("in/a.b.tif", "a.b")])
def test_name_of_a_raster_that_is_not_a_product_is_its_stem(path: str, name: str) -> None:
    assert name_of(path) == name and not is_product_path(path) and not is_classes_path(path)


@pytest.mark.parametrize("names", [("other", "vegetation"), ("forest", "cleared", "water"), ("a", "", "c"),
                                   ("forest->cleared", "no change"), ("only",)])
def test_class_names_round_trip_through_tags(names: tuple[str, ...]) -> None:
    tags = class_tags(names)
    assert set(tags) == {Tag.CLASSES}
    assert class_names_from_tags(tags) == names


def test_class_names_round_trip_through_a_geotiff(tmp_path: Path) -> None:
    """Through GDAL's metadata, as a product is written and read back."""
    names = ("water", "", "forest->cleared")
    path = classes_path(tmp_path, "scene")
    with rasterio.open(path, "w", driver="GTiff", width=4, height=3, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4000000, 10, 10), nodata=255) as dst:
        dst.write(np.zeros((1, 3, 4), np.uint8))
        dst.update_tags(**class_tags(names))
    with rasterio.open(path) as src:
        assert class_names_from_tags(src.tags()) == names


@pytest.mark.parametrize("tags", [{}, {Tag.CLASSES: ""}, {Tag.CLASSES: "  "}, {"OTHER": "a,b"}])
def test_no_class_names_without_the_tag(tags: dict[str, str]) -> None:
    assert class_names_from_tags(tags) == ()


def test_class_names_are_read_by_value_and_stripped() -> None:
    assert class_names_from_tags({Tag.CLASSES: " water , forest"}) == ("water", "forest")


def test_layers_are_assets_of_their_format() -> None:
    assert asset_of("out/scene.gpkg")[:3] == ("vectors-gpkg", "application/geopackage+sqlite3", ("data",))
    assert asset_of("out/scene.parquet")[0] == "vectors-parquet"


def test_a_class_name_with_a_comma_is_refused() -> None:
    with pytest.raises(ModelError, match="class name 'a,b': holds a comma"):
        class_tags(["a,b", "c"])
