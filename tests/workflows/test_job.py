"""Job files: validation errors that name the key and the line, discovery, filters, and safe ids."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pystac
import pytest

from pipeline.errors import ConfigError
from tests.conftest import REPO, SAMPLE_DIR
from tests.workflows.helpers import SHAPE, write_job
from workflows.job import date_from_name, discover_scenes, load_job

JOBS = sorted((REPO / "workflows" / "jobs").glob("*.yaml"))

GOOD = """\
version: 1
inputs:
  folder: data
model:
  name: vegetation
bands: naip
tiling:
  tile_size: 256
outputs:
  folder: out
"""


def _load_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    load_job(path)


def test_example_jobs_validate() -> None:
    assert {p.name for p in JOBS} >= {"naip_vegetation.yaml", "naip_vegetation_change.yaml",
                                      "pucallpa_deforestation.yaml", "flood_water_change.yaml",
                                      "burn_scars_dnbr.yaml"}
    for path in JOBS:
        job = load_job(path)
        assert job.out_dir.is_absolute()


def test_naip_example_finds_the_bundled_pair_with_their_dates() -> None:
    job = load_job(REPO / "workflows" / "jobs" / "naip_vegetation.yaml")
    scenes = discover_scenes(job)
    assert [Path(s.path).resolve() for s in scenes] == sorted(p.resolve() for p in SAMPLE_DIR.glob("m_*.tif"))
    assert [s.when.start.date() for s in scenes if s.when] == [dt.date(2009, 8, 18), dt.date(2020, 8, 31)]
    assert job.out_dir == (REPO / "out" / "naip_vegetation").resolve()


@pytest.mark.parametrize(("text", "line", "key", "words"), [
    (GOOD.replace("  tile_size: 256", "  tile_sise: 256"), 8, "tiling.tile_sise", "unknown key"),
    (GOOD.replace("  tile_size: 256", "  tile_size: big"), 8, "tiling.tile_size", "integer"),
    (GOOD.replace("  tile_size: 256", "  tile_size: -5"), 8, "tiling.tile_size", "greater than 0"),
    (GOOD.replace("  name: vegetation", "  name: vegetation\n  factory: a.b:c"), 4, "model", "exactly one"),
    (GOOD.replace("outputs:\n  folder: out\n", "outputs:\n  naming: '../{scene_id}'\n  folder: out\n"), 10,
     "outputs.naming", "no '..'"),
    (GOOD.replace("outputs:\n  folder: out\n", ""), 1, "outputs", "required key is missing"),
    (GOOD.replace("  folder: data", "  folder: data\n  start: 2020-13-01"), 4, "inputs.start", "date"),
    (GOOD.replace("tiling:\n", "tiling:\n  bands: naip\n"), 7, "tiling", "top level"),
])
def test_validation_error_names_key_and_line(tmp_path: Path, text: str, line: int, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load_text(tmp_path, text)
    message = str(info.value)
    assert message.startswith(f"job job.yaml: line {line}: {key}: "), message
    assert words in message
    assert "\n" not in message


def _with_products(products: str) -> str:
    """GOOD with a ``products:`` section (its first line is line 9) before ``outputs:``."""
    return GOOD.replace("outputs:\n", f"products:\n{products}outputs:\n")


@pytest.mark.parametrize(("products", "line", "key", "words"), [
    ("  vectors:\n    options:\n      min_aera: 0.5ha\n", 12, "products.vectors.options.min_aera", "unknown key"),
    ("  vectors:\n    options:\n      sieve: 4\n      simplfy: 2\n", 13, "products.vectors.options.simplfy",
     "unknown key"),
    ("  change:\n    options:\n      quiklook: false\n", 12, "products.change.options.quiklook", "unknown key"),
    ("  timeline:\n    options:\n      confrim: 3\n", 12, "products.timeline.options.confrim", "unknown key"),
    ("  vectors:\n    options:\n      min_area: lots\n", 12, "products.vectors.options.min_area", "area 'lots'"),
])
def test_product_options_are_checked_when_the_job_is_loaded(tmp_path: Path, products: str, line: int, key: str,
                                                             words: str) -> None:
    """A misspelt product option is refused by load_job, naming the key and its line, not after the first scene."""
    with pytest.raises(ConfigError) as info:
        _load_text(tmp_path, _with_products(products))
    message = str(info.value)
    assert message.startswith(f"job job.yaml: line {line}: {key}: "), message
    assert words in message
    assert "\n" not in message


def test_product_options_load_as_typed_values(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(_with_products("  vectors:\n    formats: gpkg,parquet\n    options: {min_area: 0.5ha, classes: "
                                   "vegetation}\n  change:\n    options: {quicklook: false, min_area: 5000m2}\n"
                                   "  timeline:\n    options: {watch: 'vegetation->other', confirm: 3}\n"))
    products = load_job(path).spec.products
    assert products.vectors.formats == ("gpkg", "parquet")
    assert products.vectors.options.min_area == 5000.0 and products.vectors.options.classes == ("vegetation",)
    assert products.change.options.min_area == 5000.0 and products.change.options.quicklook is False
    assert products.timeline.options.watch == ("vegetation->other",) and products.timeline.options.confirm == 3


def test_yaml_syntax_error_and_duplicate_key_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^job job.yaml line 9: not valid YAML .*flow sequence from line 8"):
        _load_text(tmp_path, GOOD.replace("tiling:\n  tile_size: 256", "tiling:\n  tile_size: [256"))
    with pytest.raises(ConfigError, match=r"^job job.yaml line 7: bands: key given twice"):
        _load_text(tmp_path, GOOD.replace("bands: naip", "bands: naip\nbands: rgbn"))
    with pytest.raises(ConfigError, match="mapping"):
        _load_text(tmp_path, "- just\n- a list\n")


def test_date_from_name() -> None:
    assert date_from_name("m_4709963_se_14_1_20200831.tif").start == dt.datetime(2020, 8, 31, tzinfo=dt.timezone.utc)
    assert date_from_name("S2_2021-09-22_T20LLQ.tif").start.date() == dt.date(2021, 9, 22)
    year = date_from_name("1985.tif")
    assert year is not None and (year.start.date(), year.end.date()) == (dt.date(1985, 1, 1), dt.date(1985, 12, 31))
    assert date_from_name("scene_00.tif") is None
    assert date_from_name("x_20201399.tif") is None  # not a day, and not a lone year either


def test_folder_inputs_with_same_names_get_distinct_safe_ids(tmp_path: Path, make_geotiff) -> None:
    for sub in ("north", "south", "south/deeper"):
        (tmp_path / "arc" / sub).mkdir(parents=True, exist_ok=True)
        make_geotiff(f"arc/{sub}/x.tif", shape=SHAPE)
    make_geotiff("arc/north/X.tif", shape=SHAPE)  # differs only by case
    make_geotiff("arc/north/odd name (1).tif", shape=SHAPE)
    job = load_job(write_job(tmp_path, {"folder": "arc", "pattern": "**/*.tif"}, tmp_path / "out"))
    ids = [s.scene_id for s in discover_scenes(job)]
    assert len(ids) == 5
    assert len({i.lower() for i in ids}) == 5
    for i in ids:
        assert "/" not in i and not i.startswith(".") and i.replace("-", "").replace("_", "").replace(".", "").isalnum()
    # stable from run to run
    assert ids == [s.scene_id for s in discover_scenes(job)]


def _stac_collection(tmp_path: Path, make_geotiff, ids_dates: list[tuple[str, str]]) -> Path:
    image = make_geotiff("stac_image.tif", shape=SHAPE)
    items = []
    for i, (item_id, day) in enumerate(ids_dates):
        west = -10.0 + i
        item = pystac.Item(item_id, {"type": "Point", "coordinates": [west, 0.5]}, [west, 0.0, west + 0.5, 1.0],
                           dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc), {})
        item.add_asset("image", pystac.Asset(image.name, media_type=pystac.MediaType.COG))
        items.append(item)
    path = tmp_path / "items.json"
    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    return path


def test_stac_inputs_filtered_by_dates_and_bbox_with_unsafe_ids(tmp_path: Path, make_geotiff) -> None:
    unsafe = [("../x", "2021-01-05"), ("/etc/passwd", "2021-02-01"), ("a b:c?*", "2021-03-01"),
              ("../X", "2021-04-01"), ("..", "2021-05-01"), ("old", "2019-06-01")]
    collection = _stac_collection(tmp_path, make_geotiff, unsafe)
    job = load_job(write_job(tmp_path, {"stac": collection.name, "asset": "image", "start": "2021-01-01"},
                             tmp_path / "out"))
    scenes = discover_scenes(job)
    assert [s.source_id for s in scenes] == ["../x", "/etc/passwd", "a b:c?*", "../X", ".."]  # date order
    ids = [s.scene_id for s in scenes]
    assert len({i.lower() for i in ids}) == len(ids)
    for i in ids:
        assert "/" not in i and ".." not in i and not Path(i).is_absolute()
        assert (tmp_path / "out" / f"{i}.classes.tif").resolve().parent == (tmp_path / "out").resolve()
    assert all(Path(s.path) == tmp_path / "stac_image.tif" for s in scenes)
    # bbox: only the items whose boxes intersect [-8.7, 0, -7.2, 1] (items 1 and 2 by west edge -9, -8)
    job = load_job(write_job(tmp_path, {"stac": collection.name, "bbox": [-8.7, 0.0, -7.7, 1.0]}, tmp_path / "out"))
    assert [s.source_id for s in discover_scenes(job)] == ["/etc/passwd", "a b:c?*"]


def test_missing_inputs_are_a_job_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    job = load_job(write_job(tmp_path, {"folder": "empty"}, tmp_path / "out"))
    with pytest.raises(ConfigError, match="match no files"):
        discover_scenes(job)


def test_stac_catalog_on_disk_with_nested_items(tmp_path: Path, make_geotiff) -> None:
    image = make_geotiff("image.tif", shape=SHAPE)
    catalog = pystac.Catalog("archive", "an archive")
    for year in (2019, 2021):
        item = pystac.Item(f"scene-{year}", None, [0.0, 0.0, 1.0, 1.0],
                           dt.datetime(year, 6, 1, tzinfo=dt.timezone.utc), {})
        item.add_asset("visual", pystac.Asset(str(image), media_type=pystac.MediaType.COG))
        catalog.add_item(item)
    catalog.normalize_hrefs(str(tmp_path / "stac"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    job = load_job(write_job(tmp_path, {"stac": "stac/catalog.json", "end": "2020-12-31"}, tmp_path / "out"))
    scenes = discover_scenes(job)
    assert [(s.scene_id, Path(s.path).resolve()) for s in scenes] == [("scene-2019", image.resolve())]
    job = load_job(write_job(tmp_path, {"stac": "stac/catalog.json", "asset": "thumbnail"}, tmp_path / "out"))
    with pytest.raises(ConfigError, match="has no asset 'thumbnail' .*set inputs.asset"):
        discover_scenes(job)


def test_a_misspelt_model_option_is_refused_at_load_with_its_line(tmp_path: Path) -> None:
    job = tmp_path / "typo.yaml"
    job.write_text("version: 1\ninputs: {folder: .}\nmodel:\n  name: vegetation\n  options:\n    threshhold: 0.3\n"
                   "outputs: {folder: out}\n")
    with pytest.raises(ConfigError, match=r"typo.yaml line 5: model.options: model vegetation: unknown option\(s\) "
                                          r"threshhold; it accepts threshold"):
        load_job(job)
