"""A job whose inputs are a STAC API search, against a real STAC API on 127.0.0.1 (`rustac serve`)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pystac
import pytest

from pipeline.errors import ConfigError
from tests.workflows.helpers import SHAPE, manifest_rows, write_job
from workflows.batch import run_job
from workflows.job import discover_scenes, load_job

pytestmark = pytest.mark.slow

_BBOX = [-63.0, -10.0, -62.9, -9.9]


def _item(item_id: str, day: str, cloud: float, image: str, collection: str = "s2-test") -> pystac.Item:
    w, s, e, n = _BBOX
    geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    item = pystac.Item(item_id, geometry, _BBOX, dt.datetime.fromisoformat(f"{day}T14:00:00+00:00"),
                       {"eo:cloud_cover": cloud}, collection=collection)
    item.add_asset("image", pystac.Asset(image, media_type=pystac.MediaType.GEOTIFF))
    return item


def _uploaded(s3, make_geotiff, count: int) -> list[str]:
    """Scenes as an archive publishes them: objects in (loopback) S3, named by URL in the items."""
    urls = []
    for i in range(count):
        s3.client.upload_file(str(make_geotiff(f"s{i}.tif", shape=SHAPE, seed=i)), s3.bucket, f"scenes/s{i}.tif")
        urls.append(s3.url(f"scenes/s{i}.tif"))
    return urls


def test_search_job_runs_the_new_items_of_each_day(tmp_path: Path, make_geotiff, stac_api, s3) -> None:
    """The run starts its own cluster: its workers get the S3 endpoint and credentials of this test's
    environment, as a real cluster's workers get theirs."""
    images = _uploaded(s3, make_geotiff, 4)
    day1 = [_item("S2_20240601", "2024-06-01", 5, images[0]), _item("S2_20240611", "2024-06-11", 80, images[1]),
            _item("S2_20240621", "2024-06-21", 12, images[2]),
            _item("L8_20240605", "2024-06-05", 1, images[3], collection="other")]
    url = stac_api.serve(day1)
    search = {"url": url, "collections": ["s2-test"], "bbox": [-63.5, -10.5, -62.5, -9.5],
              "datetime": "2024-06-01/2024-12-31", "query": ["eo:cloud_cover<20"]}
    out = tmp_path / "out"
    job = write_job(tmp_path, {"stac_search": search}, out)
    scenes = discover_scenes(load_job(job))
    assert [s.source_id for s in scenes] == ["S2_20240601", "S2_20240621"]  # other collection, cloudy: left out
    first = run_job(job)
    assert first.exit_code == 0 and first.count("done") == 2
    done_at = {r["item_id"]: r["finished_at"] for r in manifest_rows(out)}

    # the next day the archive has a new clear item (and a cloudy one): the rerun does only the new one
    day2 = [*day1, _item("S2_20240701", "2024-07-01", 3, images[3]), _item("S2_20240711", "2024-07-11", 90, images[1])]
    stac_api.serve(day2)
    second = run_job(job)
    assert {o.item_id: o.status for o in second.outcomes} == {
        "S2_20240601": "skipped", "S2_20240621": "skipped", "S2_20240701": "done"}
    rows = {r["item_id"]: r for r in manifest_rows(out)}
    assert all(rows[i]["finished_at"] == done_at[i] for i in done_at)  # not redone
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    assert sorted(i.id for i in catalog.get_items(recursive=True)) == sorted(rows)


def test_search_limit_aoi_and_errors(tmp_path: Path, make_geotiff, stac_api, s3) -> None:
    image = _uploaded(s3, make_geotiff, 1)[0]
    url = stac_api.serve([_item(f"S2_202406{d:02d}", f"2024-06-{d:02d}", 1, image) for d in (1, 2, 3)])
    w, s, e, n = _BBOX
    aoi = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[w, s], [w + 0.01, s], [w + 0.01, s + 0.01], [w, s + 0.01], [w, s]]]}}]}
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    job = write_job(tmp_path, {"stac_search": {"url": url, "aoi": "aoi.geojson", "limit": 2}}, tmp_path / "out")
    assert len(discover_scenes(load_job(job))) == 2
    from pipeline.storage import remote_reachable  # what a batch asks before running a failed remote scene again

    assert remote_reachable(f"{url}/collections/s2-test/items/S2_20240601") and remote_reachable(image)
    assert not remote_reachable(f"{url}/collections/s2-test/items/none") and not remote_reachable(image + ".x")
    far = write_job(tmp_path, {"stac_search": {"url": url, "bbox": [10, 10, 11, 11]}}, tmp_path / "out", name="far")
    with pytest.raises(ConfigError, match="the search found no items"):
        discover_scenes(load_job(far))
    bad = write_job(tmp_path, {"stac_search": {"url": url, "query": ["cloud cover < 20"]}}, tmp_path / "o", name="b")
    with pytest.raises(ConfigError, match=r"line \d+: inputs.stac_search.query.*eo:cloud_cover<20"):
        load_job(bad)
    both = write_job(tmp_path, {"stac_search": {"url": url}, "folder": "."}, tmp_path / "o", name="both")
    with pytest.raises(ConfigError, match="exactly one of folder, glob, files, stac, stac_search"):
        load_job(both)
    stac_api.stop()
    with pytest.raises(ConfigError, match="search failed"):
        discover_scenes(load_job(job))


def test_static_catalog_by_url(tmp_path: Path, make_geotiff, s3) -> None:
    """A static catalog published in a bucket (relative links, as `catalog.save` writes them) is read by its
    s3:// URL, and its items' assets resolve to URLs that workers can read too."""
    images = _uploaded(s3, make_geotiff, 2)
    catalog = pystac.Catalog("archive", "published scenes")
    for i, image in enumerate(images):
        catalog.add_item(_item(f"S2_2024060{i + 1}", f"2024-06-0{i + 1}", 1, image))
    catalog.normalize_hrefs(str(tmp_path / "published"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    for path in (tmp_path / "published").rglob("*.json"):
        s3.client.upload_file(str(path), s3.bucket, f"stac/{path.relative_to(tmp_path / 'published')}")
    job = write_job(tmp_path, {"stac": s3.url("stac/catalog.json"), "asset": "image"}, tmp_path / "out")
    scenes = discover_scenes(load_job(job))
    assert [(s.source_id, s.path) for s in scenes] == [("S2_20240601", images[0]), ("S2_20240602", images[1])]
    missing = write_job(tmp_path, {"stac": s3.url("stac/none.json")}, tmp_path / "out", name="missing")
    with pytest.raises(ConfigError, match=r"inputs.stac s3://.*/stac/none.json: cannot be read"):
        discover_scenes(load_job(missing))
