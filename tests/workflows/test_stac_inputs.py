"""STAC items as scenes through the CLI and job files: bands from separate COGs at 10 m and 20 m, scale and
offset from the item, assets on disk or in moto's S3 server on 127.0.0.1 (tests/s3_server.py).

How "identical within the resampling's tolerance" is measured here: the Rondonia item (B11 at 20 m,
bilinear onto the 10 m grid) against the same scene stacked at 10 m by ``rasterio.warp.reproject``, with
the same model and tiling: the share of pixels whose class agrees (measured 0.99993: 67 of 1,000,000
pixels, all at the NDMI threshold) and the largest difference of the stored uint8 probability (measured
2/254), where the resampled band differs by at most half a DN. Items with no resampled band (NAIP) are
compared exactly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from click.testing import CliRunner

from pipeline.inference.read import open_scene
from tests.stac_items import BuiltItem, naip_items, rondonia_item, upload_item
from tests.workflows.helpers import manifest_rows, write_job
from workflows.cli import main
from workflows.job import discover_scenes, load_job

pytestmark = pytest.mark.slow

TILING = ["--tile-size", "256", "--halo", "16", "--workers", "2", "--format", "none", "--quiet"]


def _predict(scene: str | Path, out: Path, *args: str) -> None:
    result = CliRunner().invoke(main, ["predict", str(scene), "--out", str(out), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture(scope="module")
def rondonia(tmp_path_factory: pytest.TempPathFactory) -> BuiltItem:
    return rondonia_item(tmp_path_factory.mktemp("rondonia"))


def test_an_item_at_two_resolutions_predicts_as_the_stacked_file(rondonia: BuiltItem, tmp_path: Path) -> None:
    _predict(rondonia.item, tmp_path / "item", "--model", "bare", "--bands", "nir=nir08", *TILING)
    _predict(rondonia.reference, tmp_path / "file", "--model", "bare", "--bands", "nir=2,swir16=3", *TILING)
    item_id = rondonia.id  # the item's file name without .json
    classes = _read(tmp_path / "item" / f"{item_id}.classes.tif")[0]
    expected = _read(tmp_path / "file" / "reference_10m.classes.tif")[0]
    assert classes.shape == (1000, 1000) and set(np.unique(classes)) == {0, 1}
    assert (classes == expected).mean() >= 0.9999
    proba = _read(tmp_path / "item" / f"{item_id}.proba.tif").astype(int)
    assert np.abs(proba - _read(tmp_path / "file" / "reference_10m.proba.tif").astype(int)).max() <= 2


def test_an_item_in_s3_with_its_cloud_mask(rondonia: BuiltItem, s3, tmp_path: Path) -> None:
    """The same item read from the S3 server by the planner and by worker processes, with --mask scl: the
    cloud and its shadow in the 20 m SCL asset are nodata on the 10 m grid, the rest as read from disk."""
    url, _ = upload_item(rondonia, s3)
    _predict(url, tmp_path / "s3", "--model", "bare", "--bands", "nir=nir08", "--mask", "scl=cloud,shadow", *TILING)
    _predict(rondonia.item, tmp_path / "local", "--model", "bare", "--bands", "nir=nir08", *TILING)
    masked = _read(tmp_path / "s3" / f"{rondonia.id}.classes.tif")[0]
    local = _read(tmp_path / "local" / f"{rondonia.id}.classes.tif")[0]
    scl = _read(rondonia.reference)[3]
    cloudy = np.isin(scl, (3, 8, 9))
    assert cloudy.sum() > 5000
    assert (masked[cloudy] == 255).all()
    np.testing.assert_array_equal(masked[~cloudy], local[~cloudy])


def test_an_item_without_bands_when_the_model_names_its_common_names(s3, tmp_path: Path) -> None:
    """`scenewatch predict item.json --model vegetation --out out/` just works: the model's red and nir are
    the item's common names; from S3 the result is the original file's, exactly (no band is resampled)."""
    built = naip_items(tmp_path / "items")[1]
    url, _ = upload_item(built, s3)
    _predict(url, tmp_path / "item", "--model", "vegetation", "--workers", "1", "--format", "none", "--quiet")
    _predict(built.reference, tmp_path / "file", "--model", "vegetation", "--bands", "naip", "--workers", "1",
             "--format", "none", "--quiet")
    for kind in ("classes", "proba"):
        np.testing.assert_array_equal(_read(tmp_path / "item" / f"{built.id}.{kind}.tif"),
                                      _read(tmp_path / "file" / f"{built.reference.stem}.{kind}.tif"))
    with rasterio.open(tmp_path / "item" / f"{built.id}.classes.tif") as src:
        assert src.tags()["SCENEWATCH_DATE"] == "2020-08-31"  # the item's datetime, for later change runs


def test_a_missing_asset_fails_the_command_with_one_line(rondonia: BuiltItem, s3, tmp_path: Path) -> None:
    url, _ = upload_item(rondonia, s3, prefix="partial")
    s3.client.delete_object(Bucket=s3.bucket, Key="partial/B11.tif")
    result = CliRunner().invoke(main, ["predict", url, "--model", "bare", "--bands", "nir=nir08", "--out",
                                       str(tmp_path / "out"), *TILING])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.startswith("scenewatch: error:")]
    assert len(lines) == 1, result.output
    assert f"scene {rondonia.id}.json: asset B11 ({s3.url('partial/B11.tif')}) cannot be read" in lines[0]


def _catalog(items: list[BuiltItem], folder: Path) -> Path:
    catalog = pystac.Catalog("naip", "NAIP items, one COG per band")
    for built in items:
        item = pystac.Item.from_file(str(built.item))
        item.make_asset_hrefs_absolute()
        catalog.add_item(item)
    catalog.normalize_and_save(str(folder), catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog.json"


def test_a_job_over_a_catalog_of_band_per_asset_items(tmp_path: Path) -> None:
    items = naip_items(tmp_path / "items")
    catalog = _catalog(items, tmp_path / "catalog")
    job_path = write_job(tmp_path, {"stac": str(catalog)}, tmp_path / "out")
    scenes = discover_scenes(load_job(job_path))
    assert [(s.scene_id, Path(s.path).name) for s in scenes] == [(b.id, f"{b.id}.json") for b in items]
    result = CliRunner().invoke(main, ["run", str(job_path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in manifest_rows(tmp_path / "out")] == ["done", "done"]
    # an item collection file: each item is `items.json#<id>`, its relative hrefs from the file's folder
    collection = tmp_path / "items" / "items.json"
    features = [json.loads(b.item.read_text()) for b in items]
    for built, feature in zip(items, features, strict=True):
        for asset in feature["assets"].values():
            asset["href"] = f"{built.id}/{asset['href'].removeprefix('./')}"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    scenes = discover_scenes(load_job(write_job(tmp_path, {"stac": str(collection)}, tmp_path / "out2",
                                                name="collection")))
    assert [s.path for s in scenes] == [f"{collection}#{b.id}" for b in items]


def test_change_between_two_items_is_the_change_between_their_files(tmp_path: Path) -> None:
    """Dates from the items' datetime, the common grid from the first item, the quicklook from its bands."""
    before, after = naip_items(tmp_path / "items")
    common = ["--model", "vegetation", "--bands", "naip", "--workers", "1", "--quiet"]
    for scenes, out in (((before.item, after.item), "items"), ((before.reference, after.reference), "files")):
        result = CliRunner().invoke(main, ["change", *map(str, scenes), "--out", str(tmp_path / out),
                                           *common], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    items = _read(tmp_path / "items" / f"{before.id}__{after.id}.change.tif")
    files = _read(tmp_path / "files" / f"{before.reference.stem}__{after.reference.stem}.change.tif")
    np.testing.assert_array_equal(items, files)


def test_resolution_and_resampling_on_the_command_line(rondonia: BuiltItem, tmp_path: Path) -> None:
    _predict(rondonia.item, tmp_path / "out", "--model", "bare", "--bands", "nir=nir08", "--resolution", "20",
             "--resampling", "nir08=average", "--resampling", "scl=nearest", *TILING)
    with rasterio.open(tmp_path / "out" / f"{rondonia.id}.classes.tif") as src:
        assert (src.width, src.height, src.res) == (500, 500, (20.0, 20.0))
    result = CliRunner().invoke(main, ["predict", str(rondonia.item), "--out", str(tmp_path / "bad"),
                                       "--resampling", "swir16=lanczos3"])
    assert result.exit_code == 2
    assert result.output.strip() == ("scenewatch: error: --resampling swir16=lanczos3: unknown method; choose from "
                                     "nearest, bilinear, cubic, average, mode")


def test_a_job_sets_how_items_are_read_under_inputs(tmp_path: Path) -> None:
    inputs = {"stac": "catalog.json", "resolution": 20, "resampling": ["swir16=average"], "requester_pays": True,
              "s3_endpoint": "http://127.0.0.1:9000"}
    config = load_job(write_job(tmp_path, inputs, tmp_path / "out")).spec.predict_config()
    assert (config.resolution, config.resampling, config.requester_pays, config.s3_endpoint) == (
        20.0, (("swir16", "average"),), True, "http://127.0.0.1:9000")
    misplaced = write_job(tmp_path, {"stac": "catalog.json"}, tmp_path / "out", name="misplaced",
                          tiling={"resolution": 20})
    with pytest.raises(Exception, match="resolution belongs at the top level .* under inputs:"):
        load_job(misplaced)


def test_a_job_over_items_in_s3(s3, tmp_path: Path) -> None:
    """inputs.files of item URLs, and inputs.stac of an item collection URL: every scene is read by URL."""
    items = naip_items(tmp_path / "items")
    urls = [upload_item(b, s3)[0] for b in items]
    job_path = write_job(tmp_path, {"files": urls}, tmp_path / "out")
    assert [(s.scene_id, s.path) for s in discover_scenes(load_job(job_path))] == [
        (b.id, u) for b, u in zip(items, urls, strict=True)]
    result = CliRunner().invoke(main, ["run", str(job_path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in manifest_rows(tmp_path / "out")] == ["done", "done"]
    _predict(items[1].reference, tmp_path / "file", "--model", "vegetation", "--bands", "naip", "--workers", "1",
             "--format", "none", "--quiet")
    done = next((tmp_path / "out").rglob(f"{items[1].id}.classes.tif"))
    np.testing.assert_array_equal(_read(done), _read(tmp_path / "file" / f"{items[1].reference.stem}.classes.tif"))
    # the same items as one item collection file in the bucket
    features = [json.loads(local.read_text()) for local in (b.item.with_name(f"{b.id}.s3.json") for b in items)]
    s3.client.put_object(Bucket=s3.bucket, Key="items.json",
                         Body=json.dumps({"type": "FeatureCollection", "features": features}).encode())
    scenes = discover_scenes(load_job(write_job(tmp_path, {"stac": s3.url("items.json")}, tmp_path / "out2",
                                                name="collection")))
    assert [s.path for s in scenes] == [f"{s3.url('items.json')}#{b.id}" for b in items]
    assert open_scene(scenes[1].path).sources[0].href == s3.url(f"{items[1].id}/red.tif")


def test_a_job_goes_on_when_an_items_asset_is_missing(s3, tmp_path: Path) -> None:
    items = naip_items(tmp_path / "items")
    urls = [upload_item(b, s3)[0] for b in items]
    s3.client.delete_object(Bucket=s3.bucket, Key=f"{items[0].id}/nir.tif")  # not the grid's asset: read by tiles
    job_path = write_job(tmp_path, {"files": urls}, tmp_path / "out")
    result = CliRunner().invoke(main, ["run", str(job_path), "--quiet"], catch_exceptions=False)
    assert result.exit_code != 0
    rows = {r["item_id"]: r for r in manifest_rows(tmp_path / "out")}
    assert rows[items[1].id]["status"] == "done"
    failed = rows[items[0].id]
    assert failed["status"] == "failed"
    message = failed["error_message"]
    assert message.startswith(f"scene {items[0].id}.json: asset nir ({s3.url(f'{items[0].id}/nir.tif')}) cannot be "
                              "read: not a readable raster (")
    # GDAL's own words: from a HEAD "HTTP response code: 404", from a GET the store's "The specified key..."
    assert "404" in message or "does not exist" in message
    assert "\n" not in message


def test_evaluate_scores_an_item_as_its_file(tmp_path: Path) -> None:
    """evaluate takes an item as it takes a file: scored against the file's own prediction, every pixel agrees."""
    built = naip_items(tmp_path / "items")[1]
    _predict(built.reference, tmp_path / "file", "--model", "vegetation", "--bands", "naip", "--workers", "1",
             "--format", "none", "--quiet")
    labels = tmp_path / "file" / f"{built.reference.stem}.classes.tif"
    result = CliRunner().invoke(main, ["evaluate", str(built.item), "--model", "vegetation", "--labels", str(labels),
                                       "--workers", "1", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["pixels"]["accuracy"] == 1.0 and report["pixels"]["mean_iou"] == 1.0, report["pixels"]


def test_a_job_mixes_urls_and_local_files(s3, tmp_path: Path, make_geotiff) -> None:
    """inputs.files takes local paths and URLs side by side; two files of one name get distinct ids."""
    from tests.workflows.helpers import SHAPE

    for folder in ("local", "up"):
        (tmp_path / folder).mkdir()
    local = make_geotiff("local/scene_20240601.tif", shape=SHAPE, seed=1)
    s3.client.upload_file(str(make_geotiff("up/scene_20240601.tif", shape=SHAPE, seed=2)), s3.bucket,
                          "scenes/scene_20240601.tif")
    url = s3.url("scenes/scene_20240601.tif")
    job_path = write_job(tmp_path, {"files": ["local/scene_20240601.tif", url]}, tmp_path / "out")
    scenes = discover_scenes(load_job(job_path))
    assert sorted(s.path for s in scenes) == sorted([str(local), url])
    assert len({s.scene_id for s in scenes}) == 2 and all(s.when is not None for s in scenes)
    result = CliRunner().invoke(main, ["run", str(job_path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in manifest_rows(tmp_path / "out")] == ["done", "done"]


def test_a_rerun_redoes_the_remote_items_that_changed_and_only_those(s3, tmp_path: Path, make_geotiff,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Remote scenes are fingerprinted by content, not by href: an asset reprocessed under its old URL (new
    ETag and size), an item re-published with a new asset href, and a raster URL overwritten are redone;
    the unchanged ones are skipped."""
    from tests.workflows.helpers import SHAPE

    items = naip_items(tmp_path / "items")
    urls = [upload_item(b, s3)[0] for b in items]
    s3.client.upload_file(str(make_geotiff("plain_20240601.tif", shape=SHAPE, seed=1)), s3.bucket, "plain.tif")
    job_path = write_job(tmp_path, {"files": [*urls, s3.url("plain.tif")]}, tmp_path / "out",
                         tiling={"tile_size": 512, "halo": 16})  # its own cluster: workers with the S3 settings

    def run() -> dict[str, str]:
        result = CliRunner().invoke(main, ["run", str(job_path)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return {line.split()[2].rstrip(":"): line.split()[3] for line in result.output.splitlines()
                if line.startswith("[")}

    first, second = items[0].id, items[1].id
    assert run() == {first: "done", second: "done", "plain": "done"}
    assert run() == {first: "skipped", second: "skipped", "plain": "skipped"}
    # the second item's red band reprocessed in place: same URL, other bytes
    s3.client.upload_file(str(items[1].assets["nir"]), s3.bucket, f"{second}/red.tif")
    assert run() == {first: "skipped", second: "done", "plain": "skipped"}
    # the first item re-published with its red band at a new href
    s3.client.copy_object(Bucket=s3.bucket, Key=f"{first}/red_v2.tif",
                          CopySource={"Bucket": s3.bucket, "Key": f"{first}/red.tif"})
    item = json.loads(items[0].item.with_name(f"{first}.s3.json").read_text())
    item["assets"]["red"]["href"] = s3.url(f"{first}/red_v2.tif")
    s3.client.put_object(Bucket=s3.bucket, Key=f"{first}/{first}.json", Body=json.dumps(item).encode())
    # and the plain raster overwritten
    s3.client.upload_file(str(make_geotiff("plain2.tif", shape=SHAPE, seed=2)), s3.bucket, "plain.tif")
    assert run() == {first: "done", second: "skipped", "plain": "done"}
    assert run() == {first: "skipped", second: "skipped", "plain": "skipped"}
    # an asset gone upstream (or a store that does not answer today) does not undo a finished scene: it is
    # kept, with its products, in the manifest and the catalog, and said so in one line
    products = sorted(p.name for p in (tmp_path / "out").rglob(f"{second}.*.tif"))
    s3.client.delete_object(Bucket=s3.bucket, Key=f"{second}/nir.tif")
    ours = logging.getLogger("scenewatch")  # the CLI's own handler; it does not propagate to caplog's
    ours.addHandler(caplog.handler)
    try:
        assert run() == {first: "skipped", second: "skipped", "plain": "skipped"}
    finally:
        ours.removeHandler(caplog.handler)
    warned = [r.getMessage() for r in caplog.records if "cannot check whether the input changed" in r.getMessage()]
    assert len(warned) == 1 and f"{second}/nir.tif" in warned[0] and warned[0].startswith(f"scene {second}"), warned
    assert {r["item_id"]: r["status"] for r in manifest_rows(tmp_path / "out")}[second] == "done"
    assert sorted(p.name for p in (tmp_path / "out").rglob(f"{second}.*.tif")) == products and products
    catalog = pystac.Catalog.from_file(str(tmp_path / "out" / "catalog.json"))
    assert any(second in item.id for item in catalog.get_items(recursive=True))


def test_train_takes_an_item_as_it_takes_its_file(tmp_path: Path, make_geotiff) -> None:
    """train --scene ITEM.json: the same chips as from the item's file, so the same seeded weights."""
    import datetime as dt

    from rasterio.warp import transform_bounds

    from pipeline.models.bundle import read_spec
    from tests.conftest import textured

    rng = np.random.default_rng(3)
    labels = np.zeros((128, 128), dtype=np.uint8)
    for _ in range(12):
        r, c = (int(v) for v in rng.integers(8, 108, 2))
        labels[r:r + 16, c:c + 16] = 1
    image = 300 + 400 * textured((128, 128), seed=5) + 900.0 * labels + rng.normal(0, 40, (128, 128))
    scene = make_geotiff("pan.tif", data=image[None], nodata=0)
    label_path = make_geotiff("labels.tif", data=labels[None], dtype="uint8")
    with rasterio.open(scene) as src:
        bbox = list(transform_bounds(src.crs, "EPSG:4326", *src.bounds))
    item = pystac.Item("pan_20240601", None, bbox, dt.datetime(2024, 6, 1), {})
    item.add_asset("pan", pystac.Asset("./pan.tif", media_type=pystac.MediaType.GEOTIFF, roles=["data"],
                                       extra_fields={"eo:bands": [{"name": "pan"}]}))
    (tmp_path / "pan_item.json").write_text(json.dumps(item.to_dict(include_self_link=False)))
    common = ["--labels", str(label_path), "--classes", "background,square", "--epochs", "1", "--batch-size", "4",
              "--chip-size", "64", "--chips-per-epoch", "8", "--block-size", "64", "--seed", "1"]
    for scene_arg, bands, out in ((tmp_path / "pan_item.json", "pan", "from_item"), (scene, "pan=1", "from_file")):
        result = CliRunner().invoke(main, ["train", "--scene", str(scene_arg), "--bands", bands, *common,
                                           "--out", str(tmp_path / out)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    from_item, from_file = read_spec(tmp_path / "from_item"), read_spec(tmp_path / "from_file")
    assert from_item.sha256 == from_file.sha256
