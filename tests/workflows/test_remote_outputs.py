"""Outputs in object storage (``--out s3://bucket/prefix``) through the CLI, against moto's S3 server on
127.0.0.1 (tests/s3_server.py): uploaded whole once built, recorded after the upload, skipped when there."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.workflows.helpers import SHAPE, make_archive, sha256, write_job
from workflows.cli import main

pytestmark = pytest.mark.slow


def _objects(s3, prefix: str) -> dict[str, dict]:
    listing = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):].lstrip("/"): o for o in listing}


def _body(s3, key: str) -> bytes:
    return s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()


def _invoke(*args: str | Path) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_predict_to_s3_equals_a_local_run(tmp_path: Path, make_geotiff, s3, dask_client) -> None:
    scene = make_geotiff("scene.tif", shape=SHAPE)
    common = ["predict", scene, "--bands", "naip", "--format", "gpkg", "--scheduler", dask_client.scheduler.address]
    _invoke(*common, "--out", tmp_path / "local")
    output = _invoke(*common, "--out", s3.url("pred"))
    assert f"uploaded to {s3.url('pred')}" in output
    objects = _objects(s3, "pred")
    local = {p.name: p for p in (tmp_path / "local").iterdir() if p.is_file()}
    assert set(objects) == set(local)  # every product, the quicklook and report.html
    for name in ("scene.classes.tif", "scene.proba.tif", "scene.gpkg"):
        assert _body(s3, f"pred/{name}") == local[name].read_bytes()  # byte-identical products
        head = s3.client.head_object(Bucket=s3.bucket, Key=f"pred/{name}")
        assert head["Metadata"]["sha256"] == sha256(local[name])
    # vectorize (as change and timeline: the same --out handling) from the local classes to the bucket
    _invoke("vectorize", local["scene.classes.tif"], "--format", "parquet", "--out", s3.url("vec"),
            "--scheduler", dask_client.scheduler.address)
    assert "scene.parquet" in _objects(s3, "vec")


def test_job_to_s3_uploads_records_and_skips(tmp_path: Path, make_geotiff, s3, dask_client) -> None:
    archive = make_archive(tmp_path, make_geotiff, "archive", 2)
    job = write_job(tmp_path, {"folder": str(archive)}, tmp_path / "unused",
                    dask={"scheduler": dask_client.scheduler.address})
    state = tmp_path / "state"
    url = s3.url("nightly")
    _invoke("run", job, "--out", url, "--state", state, "--quiet")
    objects = _objects(s3, "nightly")
    assert {"scene_00.classes.tif", "scene_00.proba.tif", "scene_01.classes.tif", "catalog.json",
            "stac/scene_00.json", "scenewatch-manifest.sqlite", "report.html"} <= set(objects)
    assert not any(".sw-tmp-" in k for k in objects)
    for key in ("scene_00.classes.tif", "catalog.json"):  # the staging copy and the object are the same bytes
        assert _body(s3, f"nightly/{key}") == (state / key).read_bytes()
    snapshot = tmp_path / "manifest.sqlite"
    snapshot.write_bytes(_body(s3, "nightly/scenewatch-manifest.sqlite"))
    with sqlite3.connect(snapshot) as db:
        rows = dict(db.execute("SELECT item_id, status FROM items").fetchall())
        folder = db.execute("SELECT job_json FROM runs").fetchone()[0]
    assert rows == {"scene_00": "done", "scene_01": "done"} and url in folder

    # a rerun: everything there and identical, nothing redone
    modified = {k: o["LastModified"] for k, o in objects.items() if k.endswith(".tif")}
    out = _invoke("run", job, "--out", url, "--state", state)
    assert "0 done, 2 up to date" in out
    assert {k: o["LastModified"] for k, o in _objects(s3, "nightly").items() if k.endswith(".tif")} == modified
    assert "2 done" in _invoke("status", job, "--out", url, "--state", state)

    # an object deleted from the bucket: that scene is redone and uploaded again, the other skipped
    s3.client.delete_object(Bucket=s3.bucket, Key="nightly/scene_01.proba.tif")
    out = _invoke("run", job, "--out", url, "--state", state)
    assert "1 done, 1 up to date" in out
    assert "scene_01.proba.tif" in _objects(s3, "nightly")


def test_unreachable_bucket_is_one_line(tmp_path: Path, make_geotiff, s3) -> None:
    scene = make_geotiff("scene.tif", shape=SHAPE)
    job = write_job(tmp_path, {"files": [str(scene)]}, tmp_path / "unused")
    result = CliRunner().invoke(main, ["run", str(job), "--out", "s3://no-such-bucket-e/x", "--state",
                                       str(tmp_path / "state")])
    assert result.exit_code == 1
    assert "scenewatch: error: output s3://no-such-bucket-e/x: no such bucket" in result.output


def test_state_folder_of_an_s3_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--state, else outputs.state (relative to the job file), else $XDG_STATE_HOME/scenewatch/s3/<bucket>/<prefix>."""
    from pipeline.errors import ConfigError
    from workflows.job import load_job

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    job = write_job(tmp_path, {"files": ["a.tif"]}, "s3://bucket/nightly/")
    loaded = load_job(job)
    assert loaded.remote == "s3://bucket/nightly"
    assert loaded.out_dir == tmp_path / "xdg" / "scenewatch" / "s3" / "bucket" / "nightly"
    assert load_job(job, state=tmp_path / "st").out_dir == tmp_path / "st"
    with_state = write_job(tmp_path, {"files": ["a.tif"]}, "s3://bucket/nightly", name="with-state",
                           outputs={"folder": "s3://bucket/nightly", "state": "state"})
    assert load_job(with_state).out_dir == tmp_path / "state"
    local = load_job(job, out=tmp_path / "plain")
    assert local.remote is None and local.out_dir == tmp_path / "plain"
    bad = write_job(tmp_path, {"files": ["a.tif"]}, "s3://", name="bad")
    with pytest.raises(ConfigError, match="outputs.folder: output s3://: give s3://bucket/prefix"):
        load_job(bad)


def test_change_and_timeline_of_a_job_go_to_s3(tmp_path: Path, make_geotiff, s3, dask_client) -> None:
    (tmp_path / "archive").mkdir()
    for i, day in enumerate(("20200601", "20210601", "20220601")):
        make_geotiff(f"archive/s_{day}.tif", shape=SHAPE, seed=i)
    job = write_job(tmp_path, {"folder": str(tmp_path / "archive")}, tmp_path / "unused",
                    dask={"scheduler": dask_client.scheduler.address},
                    products={"change": {"pairs": "consecutive"}, "timeline": {}})
    _invoke("run", job, "--out", s3.url("series"), "--state", tmp_path / "state", "--quiet")
    keys = set(_objects(s3, "series"))
    assert {"change/s_20200601__s_20210601.change.tif", "change/s_20210601__s_20220601.change.tif",
            "timeline/timeline.areas.csv", "stac/change_s_20200601__s_20210601.json", "stac/timeline.json"} <= keys
    assert "0 done, 6 up to date" in _invoke("run", job, "--out", s3.url("series"), "--state", tmp_path / "state")


def _catalog_ids(text: bytes | str) -> list[str]:
    import json

    return sorted(link["href"].removeprefix("./stac/").removesuffix(".json")
                  for link in json.loads(text)["links"] if link["rel"] == "item")


def test_the_catalog_lists_the_products_that_exist(tmp_path: Path, make_geotiff, s3, dask_client) -> None:
    """A scene that leaves the inputs keeps its products and its item; once a product of it is deleted (by
    the user), its item leaves catalog.json and stac/ in the bucket and the state folder alike, and no other
    file of it is deleted."""
    make_archive(tmp_path, make_geotiff, "archive", 2)
    files = {"files": ["archive/scene_00.tif", "archive/scene_01.tif"]}
    job = write_job(tmp_path, files, tmp_path / "unused", dask={"scheduler": dask_client.scheduler.address},
                    products={"segmentation": {"proba": True}})
    state, url = tmp_path / "state", s3.url("daily")
    _invoke("run", job, "--out", url, "--state", state, "--quiet")
    assert _catalog_ids(_body(s3, "daily/catalog.json")) == ["scene_00", "scene_01"]
    # scene_01 leaves the inputs (a search window moved on): its products and item stay
    write_job(tmp_path, {"files": ["archive/scene_00.tif"]}, tmp_path / "unused",
              dask={"scheduler": dask_client.scheduler.address}, products={"segmentation": {"proba": True}})
    _invoke("run", job, "--out", url, "--state", state, "--quiet")
    assert _catalog_ids(_body(s3, "daily/catalog.json")) == ["scene_00", "scene_01"]
    assert "stac/scene_01.json" in _objects(s3, "daily")
    # the user deletes its classes COG from the bucket: the item goes, the rest of its products stay
    s3.client.delete_object(Bucket=s3.bucket, Key="daily/scene_01.classes.tif")
    _invoke("run", job, "--out", url, "--state", state, "--quiet")
    objects = _objects(s3, "daily")
    assert _catalog_ids(_body(s3, "daily/catalog.json")) == _catalog_ids((state / "catalog.json").read_text()) == [
        "scene_00"]
    assert "stac/scene_01.json" not in objects and not (state / "stac" / "scene_01.json").exists()
    assert "scene_01.proba.tif" in objects and (state / "scene_01.classes.tif").is_file()
    # a local output: the same rule on the folder
    local = tmp_path / "local"
    _invoke("run", job, "--out", local, "--quiet")
    (local / "scene_00.classes.tif").unlink()
    write_job(tmp_path, {"files": ["archive/scene_01.tif"]}, tmp_path / "unused",
              dask={"scheduler": dask_client.scheduler.address}, products={"segmentation": {"proba": True}})
    _invoke("run", job, "--out", local, "--quiet")
    assert _catalog_ids((local / "catalog.json").read_text()) == ["scene_01"]
    assert (local / "scene_00.proba.tif").is_file()
