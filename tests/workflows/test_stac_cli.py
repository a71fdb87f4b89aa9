"""A STAC source on the command line: ``--stac CATALOG`` and ``--stac-search URL`` with its search flags, on
``timeline`` (the items are the dates) and on ``run``/``status`` (instead of the job's inputs), against a real
STAC API on 127.0.0.1 (``rustac serve``, tests/stac_api.py) and static catalogs on disk.

The flags are built into the job schema's ``InputsSpec`` and read by the job loader's own discovery, so these
tests check the wiring and the errors; the search itself (paging, the query filter, aoi) is tested in
test_stac_search.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import pytest
import rasterio
from click.testing import CliRunner

from tests.stac_items import BuiltItem, naip_items
from tests.workflows.helpers import manifest_rows, write_job
from workflows.cli import main

pytestmark = pytest.mark.slow

_FAST = ["--tile-size", "512", "--halo", "16", "--quiet"]


def _served(items: list[BuiltItem], collection: str = "naip", **properties: float) -> list[dict]:
    """The items as an API serves them: asset hrefs absolute (the API's URL is not their folder), a collection."""
    features = []
    for built in items:
        feature = json.loads(built.item.read_text())
        feature["collection"] = collection
        feature["properties"].update(properties)
        for key, asset in feature["assets"].items():
            asset["href"] = str(built.assets[key])
        feature["links"] = []
        features.append(feature)
    return features


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def naip(tmp_path_factory: pytest.TempPathFactory) -> list[BuiltItem]:
    return naip_items(tmp_path_factory.mktemp("naip-items"))


def test_timeline_of_a_stac_search(naip: list[BuiltItem], stac_api, tmp_path: Path, dask_client) -> None:
    """Both dates found by a search with every flag; a third, cloudy one left out by --query; dated by the
    items' datetime (their band files' names carry no date)."""
    cloudy = [{**f, "id": "naip_20210901", "properties": {**f["properties"], "datetime": "2021-09-01T00:00:00Z",
                                                           "eo:cloud_cover": 80.0}}
              for f in _served(naip[1:], **{"eo:cloud_cover": 0.0})]
    other = [{**f, "id": "other_20150101"} for f in _served(naip[:1], collection="other", **{"eo:cloud_cover": 0.0})]
    url = stac_api.serve([*_served(naip, **{"eo:cloud_cover": 5.0}), *cloudy, *other])
    code, output = _invoke("timeline", "--stac-search", url, "--collections", "naip", "--bbox", "-99.3,46.9,-99.0,47.1",
                           "--datetime", "2000-01-01/..", "--query", "eo:cloud_cover<20", "--limit", "5",
                           "--model", "vegetation", "--out", str(tmp_path / "out"),
                           "--scheduler", dask_client.scheduler.address, *_FAST)
    assert code == 0, output
    assert "timeline: 2 dates 2009-08-18 .. 2020-08-31" in output
    with rasterio.open(tmp_path / "out" / "timeline.alerts.tif") as src:
        assert (src.width, src.height) == (934, 724)  # the first item's grid


def test_timeline_of_a_catalog_on_disk_and_the_bundled_items(naip: list[BuiltItem], tmp_path: Path,
                                                             dask_client) -> None:
    catalog = pystac.Catalog("naip", "the NAIP pair")
    for built in naip:
        item = pystac.Item.from_file(str(built.item))
        item.make_asset_hrefs_absolute()
        catalog.add_item(item)
    catalog.normalize_and_save(str(tmp_path / "catalog"), catalog_type=pystac.CatalogType.SELF_CONTAINED)
    address = ["--scheduler", dask_client.scheduler.address]
    code, output = _invoke("timeline", "--stac", str(tmp_path / "catalog" / "catalog.json"), "--out",
                           str(tmp_path / "out"), *address, *_FAST)
    assert code == 0, output
    assert "timeline: 2 dates 2009-08-18 .. 2020-08-31" in output
    # the help's example: an item collection of the bundled NAIP scenes (one 4-band asset each), relative path
    code, output = _invoke("timeline", "--stac", "examples/data/naip_items.json", "--bands", "naip", "--out",
                           str(tmp_path / "bundled"), *address, *_FAST)
    assert code == 0, output
    assert "2 dates 2009-08-18 .. 2020-08-31" in output


def test_run_and_status_with_a_search_instead_of_the_jobs_inputs(naip: list[BuiltItem], stac_api, tmp_path: Path,
                                                                  dask_client) -> None:
    """The job's folder of scenes is replaced by the search's items; status lists what that source finds."""
    url = stac_api.serve(_served(naip))
    (tmp_path / "empty").mkdir()
    job = write_job(tmp_path, {"folder": "empty"}, tmp_path / "out", tiling={"tile_size": 512, "halo": 16})
    source = ["--stac-search", url, "--collections", "naip", "--datetime", "2020-01-01/2020-12-31"]
    code, output = _invoke("status", str(job), *source)
    assert code == 0, output
    assert "naip_20200831" in output and "naip_20090818" not in output and "1 pending" in output
    code, output = _invoke("run", str(job), *source, "--quiet")
    assert code == 0, output
    rows = manifest_rows(tmp_path / "out")
    assert [(r["item_id"], r["status"], r["source"]) for r in rows] == [
        ("naip_20200831", "done", f"{url}/collections/naip/items/naip_20200831")]
    code, output = _invoke("status", str(job), *source)
    assert "1 done" in output
    code, output = _invoke("run", str(job), *source)  # the item from the API again: unchanged, skipped
    assert code == 0 and "0 done, 1 up to date" in output, output
    # the job's own inputs: an empty folder, as before
    code, output = _invoke("run", str(job), "--quiet")
    assert code == 2 and "inputs.folder: the inputs match no files" in output


def test_run_with_a_catalog_instead_of_the_jobs_inputs(naip: list[BuiltItem], tmp_path: Path, dask_client,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """--stac is relative to the working folder (not the job file's), and a static catalog's items run."""
    features = _served(naip)
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (tmp_path / "jobs").mkdir()
    job = write_job(tmp_path / "jobs", {"folder": "."}, tmp_path / "out", tiling={"tile_size": 512, "halo": 16})
    monkeypatch.chdir(tmp_path / "here")
    code, output = _invoke("run", str(job), "--stac", "items.json", "--quiet")
    assert code == 0, output
    assert [(r["item_id"], r["status"]) for r in manifest_rows(tmp_path / "out")] == [
        ("naip_20090818", "done"), ("naip_20200831", "done")]


@pytest.mark.parametrize(("args", "message"), [
    (["--bbox", "1,2,3,4"], "--bbox narrows a STAC API search; give --stac-search URL too"),
    (["--stac", "c.json", "--stac-search", "http://127.0.0.1:9"], "give --stac (a catalog) or --stac-search"),
    (["--stac", "c.json", "--limit", "3"], "--limit narrows a STAC API search (--stac-search), not a catalog"),
    (["--stac-search", "http://127.0.0.1:9", "--bbox", "1,2,3"], "--bbox '1,2,3': give west,south,east,north"),
    (["--stac-search", "http://127.0.0.1:9", "--query", "cloud cover < 20"], "--query: 'cloud cover < 20' must look"),
    (["--stac-search", "http://127.0.0.1:9", "--limit", "0"], "--limit: Input should be greater than 0"),
    (["--stac-search", "http://127.0.0.1:9", "--bbox", "1,2,3,4", "--aoi", "a.json"], "give --bbox or --aoi"),
    (["a.tif", "--stac", "c.json"], "give SCENES or a STAC source (--stac, --stac-search), not both"),
])
def test_stac_source_errors_are_one_line_naming_the_flag(args: list[str], message: str, tmp_path: Path) -> None:
    code, output = _invoke("timeline", *args, "--out", str(tmp_path / "out"))
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scenewatch: error: ") and message in lines[0], output
    code, output = _invoke("timeline", "--out", str(tmp_path / "out"))  # neither: click's usage error
    assert code == 2 and "Missing argument 'SCENES...': give SCENES, or a STAC source (--stac" in output


def test_a_search_that_fails_names_the_flag(tmp_path: Path, stac_api, naip: list[BuiltItem]) -> None:
    url = stac_api.serve(_served(naip))
    code, output = _invoke("timeline", "--stac-search", url, "--collections", "none", "--out", str(tmp_path / "o"))
    assert code == 2 and f"scenewatch: error: --stac-search {url}: the search found no items" in output, output
