"""Layer files: every format reopens with GDAL (pyogrio) or pyarrow with the right CRS, count and types."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import geopandas
import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from affine import Affine
from pyproj import CRS, Transformer

from pipeline.config import VectorizeConfig
from pipeline.errors import ConfigError
from pipeline.vectors.export import (
    FORMATS,
    OGR_CURRENT_DATE,
    LayerSpec,
    LayerStager,
    export_layer,
    feature_table,
    stage_part,
)
from pipeline.vectors.measure import area_basis
from tests.pipeline.vectors.test_vectorize import blobs, vectorize_tiled

TRANSFORM = Affine(20.0, 0.0, 340000.0, 0.0, -20.0, 8940240.0)
CRS_UTM20S = "EPSG:32720"
LAYER = "S2_20LLQ_2021-09-22"
EXPECTED_TYPES = {
    "id": "OFTInteger64", "class_id": "OFTInteger", "class_name": "OFTString", "area_m2": "OFTReal",
    "perimeter_m": "OFTReal", "pixels": "OFTInteger64", "proba_mean": "OFTReal", "proba_max": "OFTReal",
    "scene_id": "OFTString", "model": "OFTString", "model_version": "OFTString", "second_date": "OFTDate",
    "acquired": "OFTDate",
}


def make_layer(folder: Path, formats: tuple[str, ...] = tuple(FORMATS), *,
               in_parts: bool = False) -> tuple[dict[str, Path], object]:
    classes = blobs((120, 140), 3, seed=11)
    proba = np.random.default_rng(1).random(classes.shape)
    pieces, _ = vectorize_tiled(classes, np.ones(classes.shape, dtype=bool), 32, proba=proba)
    spec = LayerSpec(
        scene_id="S2_20LLQ_2021-09-22", crs_wkt=CRS.from_user_input(CRS_UTM20S).to_wkt(), transform=TRANSFORM,
        basis=area_basis(CRS_UTM20S, TRANSFORM, 120, 140), class_names={0: "water", 1: "cleared", 2: "forest"},
        model="vegetation", model_version="1.0", acquired=dt.date(2021, 9, 22),
        attributes={"second_date": dt.date(2022, 9, 1), "campaign": "test"},
    )
    table = feature_table(pieces, spec)
    paths = {}
    with LayerStager(folder, spec) as stager:
        if in_parts:  # as workers stage them: part files, batches interleaved, empty tables between
            first, second = stager.part_path(), stager.part_path()
            a = stage_part([table.slice(0, 25), table.slice(0, 0), table.slice(60)], first, spec)
            b = stage_part([table.slice(25, 15), table.slice(40, 20)], second, spec)
            assert a.counts == (25, 0, table.num_rows - 60) and b.counts == (15, 20)
            for path, index, part, at in [(first, 0, a, 0), (first, 0, a, 1), (second, 0, b, 0),
                                          (second, 1, b, 1), (first, 1, a, 2)]:
                stager.add_part(path, index, part.counts[at], part.bounds[at], part.classes[at])
        else:
            stager.add(table.slice(0, 25))  # staged in several batches, as the workflow does
            stager.add(table.slice(25, 15))
            stager.add(table.slice(40, 20))
            stager.add(table.slice(60))
        for fmt in formats:
            paths[fmt] = export_layer(stager, folder / f"layer.{fmt}", fmt)
    return paths, table


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], object]:
    return make_layer(tmp_path_factory.mktemp("layer"))


@pytest.mark.parametrize("fmt", ["gpkg", "fgb", "geojson"])
def test_ogr_formats_reopen_with_crs_count_and_types(layer, fmt: str) -> None:
    paths, table = layer
    layer_name = LAYER if fmt == "gpkg" else None  # a GeoPackage also holds its layer_styles table
    info = pyogrio.read_info(paths[fmt], layer=layer_name, force_feature_count=True, force_total_bounds=True)
    assert info["features"] == table.num_rows > 100
    assert info["geometry_type"] == "Polygon"
    want_crs = "EPSG:4326" if fmt == "geojson" else CRS_UTM20S
    assert CRS.from_user_input(info["crs"]) == CRS.from_user_input(want_crs)
    types = dict(zip(info["fields"], info["ogr_types"], strict=True))
    for name, ogr_type in EXPECTED_TYPES.items():
        if fmt == "fgb" and ogr_type == "OFTDate":
            ogr_type = "OFTDateTime"  # FlatGeobuf has no date-only type
        if fmt == "geojson" and name in ("pixels", "proba_mean", "proba_max", "acquired", "second_date"):
            continue  # GeoJSON carries no types; GDAL guesses them back from the values
        assert types[name] == ogr_type, name
    frame = pyogrio.read_dataframe(paths[fmt], layer=layer_name)
    ids = table.column("id").to_numpy()
    frame = frame.set_index("id").loc[ids]  # FlatGeobuf's index stores features in Hilbert order
    ours = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    theirs = np.asarray(frame.geometry.values, dtype=object)
    if fmt == "geojson":  # RFC 7946: longitude/latitude on WGS 84
        to_wgs84 = Transformer.from_crs(CRS_UTM20S, "EPSG:4326", always_xy=True)
        ours = shapely.transform(ours, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))
        assert shapely.equals_exact(ours, theirs, tolerance=1e-6).all()
    else:
        assert shapely.equals_exact(ours, theirs, tolerance=0).all()
    assert frame["class_name"].tolist() == table.column("class_name").to_pylist()
    np.testing.assert_allclose(frame["area_m2"], table.column("area_m2").to_numpy())


def test_spatial_indexes_are_there(layer) -> None:
    paths, _ = layer
    for fmt in ("gpkg", "fgb"):
        info = pyogrio.read_info(paths[fmt], layer=LAYER if fmt == "gpkg" else None)
        assert info["capabilities"]["fast_spatial_filter"], fmt
    with sqlite3.connect(paths["gpkg"]) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ext = db.execute("SELECT table_name, extension_name FROM gpkg_extensions").fetchall()
        assert ("S2_20LLQ_2021-09-22", "gpkg_rtree_index") in ext
        (stamp,) = db.execute("SELECT last_change FROM gpkg_contents").fetchone()
        assert stamp == OGR_CURRENT_DATE  # pinned: no write time inside the product


def test_geoparquet_metadata_matches_geopandas_own_writer(layer, tmp_path: Path) -> None:
    paths, table = layer
    ours = json.loads(pq.read_schema(paths["parquet"]).metadata[b"geo"])
    frame = geopandas.read_parquet(paths["parquet"])
    assert len(frame) == table.num_rows and frame.crs == CRS.from_user_input(CRS_UTM20S)
    # independent reference: the metadata geopandas writes for the same rows
    frame.drop(columns="bbox", errors="ignore").to_parquet(tmp_path / "ref.parquet", write_covering_bbox=True)
    ref = json.loads(pq.read_schema(tmp_path / "ref.parquet").metadata[b"geo"])
    assert ours["version"] == ref["version"] and ours["primary_column"] == ref["primary_column"]
    col, ref_col = ours["columns"]["geometry"], ref["columns"]["geometry"]
    for key in ("encoding", "geometry_types", "covering"):
        assert col[key] == ref_col[key], key
    assert CRS.from_json_dict(col["crs"]) == CRS.from_json_dict(ref_col["crs"])
    np.testing.assert_allclose(col["bbox"], ref_col["bbox"])
    # the covering column is usable: a bbox filter reads only what intersects
    xmin, ymin, xmax, ymax = col["bbox"]
    box = (xmin, ymin, (xmin + xmax) / 2, (ymin + ymax) / 2)
    part = geopandas.read_parquet(paths["parquet"], bbox=box)
    assert 0 < len(part) < len(frame)
    assert len(part) == int(frame.intersects(shapely.box(*box)).sum())


def test_same_layer_gives_same_bytes(tmp_path: Path) -> None:
    first, _ = make_layer(tmp_path / "a")
    second, _ = make_layer(tmp_path / "b")
    for fmt in FORMATS:
        assert first[fmt].read_bytes() == second[fmt].read_bytes(), fmt
    leftovers = [p.name for p in (tmp_path / "a").iterdir() if p.name not in {f"layer.{e}" for e in FORMATS}]
    assert leftovers == []  # no staging or temporary files left behind


def test_rows_staged_in_parts_give_the_same_bytes(tmp_path: Path) -> None:
    """Rows staged by workers in part files, in the order the stager was told, write the same files as the
    same rows staged by the stager itself; the part files go with the staging file."""
    here, _ = make_layer(tmp_path / "here")
    parts, _ = make_layer(tmp_path / "parts", in_parts=True)
    for fmt in FORMATS:
        assert here[fmt].read_bytes() == parts[fmt].read_bytes(), fmt
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == sorted(f"layer.{e}" for e in FORMATS)


def test_attribute_names_and_types_are_checked() -> None:
    basis = area_basis(CRS_UTM20S, TRANSFORM, 10, 10)
    with pytest.raises(ConfigError, match="area_m2"):
        LayerSpec("s", CRS.from_user_input(CRS_UTM20S).to_wkt(), TRANSFORM, basis, attributes={"area_m2": 1.0})
    with pytest.raises(ConfigError, match="tags"):
        LayerSpec("s", CRS.from_user_input(CRS_UTM20S).to_wkt(), TRANSFORM, basis, attributes={"tags": [1, 2]})


def test_formats_are_parsed_with_a_clear_error() -> None:
    assert VectorizeConfig.build(formats="gpkg, GeoParquet,fgb,gpkg").formats == ("gpkg", "parquet", "fgb")
    with pytest.raises(ConfigError, match="formats: format 'shp': unknown; choose from gpkg, parquet, fgb, geojson"):
        VectorizeConfig.build(formats="gpkg,shp")


def test_geopackage_carries_a_default_qgis_style_in_the_class_colours(layer) -> None:
    import xml.etree.ElementTree as ET

    from pipeline import colours

    paths, table = layer
    path = paths["gpkg"]
    assert pyogrio.read_dataframe(path, layer=LAYER).shape[0] == table.num_rows  # still a valid layer for GDAL
    assert "layer_styles" in pyogrio.list_layers(path)[:, 0]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        columns = [row[1] for row in db.execute("PRAGMA table_info(layer_styles)")]
        assert columns == ["id", "f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column",
                           "styleName", "styleQML", "styleSLD", "useAsDefault", "description", "owner", "ui",
                           "update_time"]
        (kind,) = db.execute("SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'").fetchone()
        assert kind == "attributes"
        rows = db.execute("SELECT f_table_name, f_geometry_column, useAsDefault, styleQML, styleSLD, update_time "
                          "FROM layer_styles").fetchall()
    assert len(rows) == 1
    name, geometry, default, qml, sld, stamp = rows[0]
    assert (name, geometry, default, stamp) == (LAYER, "geometry", 1, OGR_CURRENT_DATE)
    # the fallback class colours of water, cleared, forest (this spec gives none): named in both styles
    want = dict(zip(("water", "cleared", "forest"), colours.class_colours(("water", "cleared", "forest")),
                    strict=True))
    qroot = ET.fromstring(qml.split("\n", 1)[1])  # after the DOCTYPE line
    renderer = qroot.find("renderer-v2")
    assert renderer is not None and renderer.get("type") == "categorizedSymbol"
    assert renderer.get("attr") == "class_name"
    cats = {c.get("value"): (c.get("label"), c.get("symbol")) for c in renderer.iter("category")}
    assert set(cats) == set(want) and all(label == value for value, (label, _) in cats.items())
    fills = {s.get("name"): s.find("layer/Option/Option[@name='color']").get("value")
             for s in renderer.iter("symbol")}
    for value, (_, symbol) in cats.items():
        assert fills[symbol] == ",".join(map(str, colours.rgba(want[value])))
    ns = {"se": "http://www.opengis.net/se", "ogc": "http://www.opengis.net/ogc"}
    rules = ET.fromstring(sld.encode()).findall(".//se:Rule", ns)
    by_name = {r.find("ogc:Filter/ogc:PropertyIsEqualTo/ogc:Literal", ns).text:
               r.find("se:PolygonSymbolizer/se:Fill/se:SvgParameter[@name='fill']", ns).text for r in rules}
    assert by_name == want
    assert {r.find("se:Description/se:Title", ns).text for r in rules} == set(want)  # the legend labels


def test_layer_style_uses_the_given_class_colours_and_only_the_classes_present(tmp_path: Path) -> None:
    from pipeline.vectors.export import layer_categories

    spec = LayerSpec(scene_id="x", crs_wkt=CRS.from_user_input(CRS_UTM20S).to_wkt(), transform=TRANSFORM,
                     basis=area_basis(CRS_UTM20S, TRANSFORM, 10, 10), class_names={0: "other", 1: "vegetation"},
                     class_colors={1: "#123456"})
    assert [(c.value, c.colour) for c in layer_categories(spec, {1})] == [("vegetation", "#123456")]
    assert [c.value for c in layer_categories(spec)] == ["other", "vegetation"]
