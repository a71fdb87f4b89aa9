"""Batch runs in this process on the shared LocalCluster: resume rules, products, STAC, a killed worker."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pystac
import pytest
import rasterio
from rasterio.warp import transform_bounds

from pipeline.errors import ConfigError
from pipeline.inference.predict import predict_array
from pipeline.inference.read import open_scene, read_window
from pipeline.inference.stitch import classify
from pipeline.models.contract import ModelRef
from pipeline.models.loader import load_model
from tests.conftest import REPO
from tests.workflows.helpers import SHAPE, make_archive, manifest_rows, product_checksums, write_job
from workflows.batch import run_job
from workflows.manifest import open_manifest


def _reference_classes(scene: Path, threshold: float = 0.3) -> np.ndarray:
    """Independent of tiling, Dask and the writers: the model on the whole array at once."""
    meta = open_scene(scene)
    data, valid = read_window(meta, meta.bounds, (1, 4))
    model = load_model(ModelRef.of("vegetation", threshold=threshold))
    return classify(predict_array(model, data, valid), valid)


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _statuses(summary) -> dict[str, str]:
    return {o.item_id: o.status for o in summary.outcomes}


@pytest.mark.slow
def test_rerun_skips_what_is_done_and_redoes_what_changed(tmp_path: Path, make_geotiff, dask_client) -> None:
    archive = make_archive(tmp_path, make_geotiff, "archive", 3)
    out = tmp_path / "out"
    job = write_job(tmp_path, {"folder": str(archive)}, out,
                    model={"name": "vegetation", "options": {"threshold": 0.3}})
    first = run_job(job, client=dask_client)
    assert _statuses(first) == dict.fromkeys(["scene_00", "scene_01", "scene_02"], "done")
    assert first.exit_code == 0
    for i in range(3):
        np.testing.assert_array_equal(_classes(out / f"scene_{i:02d}.classes.tif"),
                                      _reference_classes(archive / f"scene_{i:02d}.tif"))
    products = product_checksums(out)

    # unchanged: nothing redone, nothing rewritten; a touched but identical input is not redone either
    os.utime(archive / "scene_01.tif", ns=(1, 1))
    again = run_job(job, client=dask_client)
    assert set(_statuses(again).values()) == {"skipped"}
    assert product_checksums(out) == products

    # one input rewritten with other pixels, one output damaged: exactly those two are redone
    make_geotiff("archive/scene_02.tif", shape=SHAPE, seed=42)
    with open(out / "scene_00.proba.tif", "ab") as f:
        f.write(b"\0")
    third = run_job(job, client=dask_client)
    assert _statuses(third) == {"scene_00": "done", "scene_01": "skipped", "scene_02": "done"}
    np.testing.assert_array_equal(_classes(out / "scene_02.classes.tif"), _reference_classes(archive / "scene_02.tif"))
    assert product_checksums(out)["scene_00.proba.tif"] == products["scene_00.proba.tif"]

    # a parameter that changes the products: everything is redone; --force redoes even unchanged work
    job = write_job(tmp_path, {"folder": str(archive)}, out,
                    model={"name": "vegetation", "options": {"threshold": 0.5}})
    assert set(_statuses(run_job(job, client=dask_client)).values()) == {"done"}
    np.testing.assert_array_equal(_classes(out / "scene_01.classes.tif"),
                                  _reference_classes(archive / "scene_01.tif", threshold=0.5))
    assert set(_statuses(run_job(job, client=dask_client, force=True)).values()) == {"done"}

    rows = manifest_rows(out)
    assert [r["item_id"] for r in rows] == ["scene_00", "scene_01", "scene_02"]  # one row per scene, ever
    assert [r["attempts"] for r in rows] == [4, 3, 4]
    with open_manifest(out / "scenewatch-manifest.sqlite") as manifest:
        runs = manifest.runs("test-job")
    assert len(runs) == 5 and [r.exit_code for r in runs] == [0] * 5
    provenance = json.loads(runs[-1].job_json)
    assert provenance["model"]["options"] == {"threshold": 0.5} and runs[-1].scenewatch_version
    assert json.loads(runs[-1].model_identity)["builtin"] == "vegetation"

    other = write_job(tmp_path, {"folder": str(archive)}, out, name="other-job")
    with pytest.raises(ConfigError, match="holds the products of job 'test-job'; give this job its own"):
        run_job(other, client=dask_client)


@pytest.mark.slow
def test_stac_catalog_and_unsafe_stac_ids(tmp_path: Path, make_geotiff, dask_client) -> None:
    image = make_geotiff("image.tif", shape=SHAPE, crs="EPSG:32633")
    items = []
    for item_id, day in [("../x", "2021-01-05T10:00:00"), ("/abs/x", "2021-02-01T10:00:00"), ("../X", "2021-03-01")]:
        item = pystac.Item(item_id, None, None, dt.datetime.fromisoformat(day), {})
        item.add_asset("image", pystac.Asset(image.name, media_type=pystac.MediaType.GEOTIFF))
        items.append(item)
    (tmp_path / "items.json").write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    out = tmp_path / "products"
    job = write_job(tmp_path, {"stac": "items.json"}, out)
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    summary = run_job(job, client=dask_client)
    assert summary.exit_code == 0 and summary.count("done") == 3
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert written and all(out in p.parents for p in written)  # nothing escaped the output folder

    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    got = sorted(catalog.get_items(recursive=True), key=lambda i: i.datetime)
    assert len(got) == 3 and len({i.id.lower() for i in got}) == 3
    with rasterio.open(image) as src:
        expected_bbox = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
    for item in got:
        np.testing.assert_allclose(item.bbox, expected_bbox, atol=1e-8)
        assert set(item.assets) == {"classes", "proba"}
        for asset in item.assets.values():
            assert not Path(asset.href).is_absolute()
            assert Path(asset.get_absolute_href()).resolve().parent == out.resolve()
            with rasterio.open(asset.get_absolute_href()) as src:
                assert src.crs == "EPSG:32633"
    assert [i.datetime.month for i in got] == [1, 2, 3]
    with rasterio.open(got[0].assets["classes"].get_absolute_href()) as src:
        assert src.tags()["SCENEWATCH_DATE"] == "2021-01-05"  # the date travels with the product
    for path in out.rglob("*.json"):
        text = path.read_text()
        assert str(tmp_path) not in text  # relative hrefs only: the folder can move
    # republishing an unchanged archive gives byte-identical JSON
    stac_files = {p: p.read_bytes() for p in out.rglob("*.json")}
    run_job(job, client=dask_client)
    assert {p: p.read_bytes() for p in out.rglob("*.json")} == stac_files


@pytest.mark.slow
def test_killed_worker_scene_is_retried_or_recorded_and_the_others_complete(tmp_path: Path, make_geotiff) -> None:
    """A Dask worker process killed (SIGKILL) while it runs a scene's task, one scene in flight (so the
    death is that scene's): Dask is told to give up at once (allowed-failures 0, so KilledWorker reaches
    the batch); with retries the batch runs that scene again on the restarted worker, without it records
    the scene failed; the other scenes end done, and every scene done equals the whole-array reference.
    One cluster serves both runs (its nanny restarts the killed worker). Several scenes in flight: see
    test_a_worker_death_among_scenes_in_flight_*."""
    from distributed import Client, LocalCluster

    archive = make_archive(tmp_path, make_geotiff, "archive", 3)
    model = {"factory": "tests.workflows.slow_model:slow_vegetation", "kwargs": {"delay": 0.6}}

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
         LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit=0) as cluster, Client(cluster) as client:
        for retries in (1, 0):
            out = tmp_path / f"out-{retries}"
            job = write_job(tmp_path, {"folder": str(archive)}, out, model=model, retries=retries,
                            name=f"retries-{retries}")
            killed: list[int] = []
            killer = threading.Thread(target=_kill_worker_running, args=(client, "scene_01", killed))
            killer.start()
            summary = run_job(job, client=client, allow_factory=True,  # the test trusts its own factory
                              scenes_in_flight=1)
            killer.join()
            assert killed, "the worker was never seen running scene_01"
            outcomes = {o.item_id: o for o in summary.outcomes}
            expected = "done" if retries else "failed"
            assert {i: o.status for i, o in outcomes.items()} == {"scene_00": "done", "scene_01": expected,
                                                                  "scene_02": "done"}
            assert outcomes["scene_01"].attempts == 1 + retries and outcomes["scene_00"].attempts == 1
            if not retries:
                assert outcomes["scene_01"].error_class == "KilledWorker"
                assert outcomes["scene_01"].stage == "predict"
                assert summary.exit_code == 3 and not (out / "scene_01.classes.tif").exists()
            for i in (0, 1, 2) if retries else (0, 2):
                np.testing.assert_array_equal(_classes(out / f"scene_{i:02d}.classes.tif"),
                                              _reference_classes(archive / f"scene_{i:02d}.tif"))
            assert [r["status"] for r in manifest_rows(out)] == ["done", expected, "done"]


@pytest.mark.slow
def test_a_worker_death_among_scenes_in_flight_fails_no_scene_beside_it(tmp_path: Path, make_geotiff) -> None:
    """A worker killed once (SIGKILL) while it runs scene_01's task, with the default scenes in flight (all
    three at once on 2 workers) and no retries: Dask gives up at once (allowed-failures 0) on every task
    that worker held, scene_01's and any other scene's waiting there; none of them was alone on the
    cluster, so each is run again alone without using its retries, and every scene ends done, equal to
    the whole-array reference."""
    from distributed import Client, LocalCluster

    from workflows.cluster import default_scenes_in_flight

    archive = make_archive(tmp_path, make_geotiff, "archive", 3)
    model = {"factory": "tests.workflows.slow_model:slow_vegetation", "kwargs": {"delay": 0.6}}
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
         LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit=0) as cluster, Client(cluster) as client:
        assert default_scenes_in_flight(client) >= 3  # the run's default: every scene at once
        out = tmp_path / "out"
        job = write_job(tmp_path, {"folder": str(archive)}, out, model=model, retries=0)
        killed: list[int] = []
        killer = threading.Thread(target=_kill_worker_running, args=(client, "scene_01", killed))
        killer.start()
        summary = run_job(job, client=client, allow_factory=True)
        killer.join()
    assert killed, "the worker was never seen running scene_01"
    outcomes = {o.item_id: o for o in summary.outcomes}
    assert summary.exit_code == 0, [o.message for o in summary.outcomes]
    assert outcomes["scene_01"].attempts == 2 and all(o.attempts in (1, 2) for o in outcomes.values())
    for i in range(3):
        np.testing.assert_array_equal(_classes(out / f"scene_{i:02d}.classes.tif"),
                                      _reference_classes(archive / f"scene_{i:02d}.tif"))


@pytest.mark.slow
def test_a_worker_death_among_scenes_in_flight_fails_only_the_scene_whose_model_kills(
        tmp_path: Path, make_geotiff) -> None:
    """scene_01's model kills every worker its tiles reach (tests/workflows/killer_model.py), with the
    default scenes in flight: the scenes beside it whose tasks died with those workers are run again alone
    and end done, equal to the whole-array reference; scene_01 alone fails, with one line that names it
    and says what to check. (allowed-failures 0 keeps the test short: Dask gives up at the first death.)"""
    from distributed import Client, LocalCluster

    archive = make_archive(tmp_path, make_geotiff, "archive", 4)
    make_geotiff("archive/scene_01.tif", data=np.full((4, 200, 300), 13), dtype="uint16")  # kills its worker
    out = tmp_path / "out"
    job = write_job(tmp_path, {"folder": str(archive)}, out, retries=0,
                    model={"factory": "tests.workflows.killer_model:killer_vegetation"})
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
         LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit=0) as cluster, Client(cluster) as client:
        summary = run_job(job, client=client, allow_factory=True)
    outcomes = {o.item_id: o for o in summary.outcomes}
    assert {i: o.status for i, o in outcomes.items()} == {"scene_00": "done", "scene_01": "failed",
                                                          "scene_02": "done", "scene_03": "done"}
    assert summary.exit_code == 3
    killer = outcomes["scene_01"]
    assert killer.error_class == "KilledWorker" and killer.stage == "predict" and not killer.unexpected
    assert killer.attempts == 2  # once beside the others, once alone (retries 0: no more)
    line = f"{killer.kind} {killer.item_id}: failed at {killer.stage}: {killer.message}"  # as `run` prints it
    assert "\n" not in line and line.count("scene_01") >= 2 and "no other scene on the cluster" in line, line
    assert not (out / "scene_01.classes.tif").exists()
    for i in (0, 2, 3):
        np.testing.assert_array_equal(_classes(out / f"scene_{i:02d}.classes.tif"),
                                      _reference_classes(archive / f"scene_{i:02d}.tif"))
    assert [r["status"] for r in manifest_rows(out)] == ["done", "failed", "done", "done"]


def _kill_worker_running(client, scene: str, killed: list[int]) -> None:
    """SIGKILL the worker process that runs (or holds) a task of ``scene``, once, within a minute."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for addr, keys in client.processing().items():
            if any(scene in str(k) for k in keys):
                pid = client.run(os.getpid, workers=[addr])[addr]
                time.sleep(0.2)  # inside the task's model call
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.02)


def test_lock_refuses_a_second_holder_and_dies_with_its_holder(tmp_path: Path) -> None:
    from workflows.lock import JobLockedError, is_locked, job_lock

    assert not is_locked(tmp_path)
    with job_lock(tmp_path, "a"):
        assert is_locked(tmp_path)
        with pytest.raises(JobLockedError, match=rf"job b: output folder .* is locked by a run still in progress "
                                                 rf"\(pid {os.getpid()}, started "), job_lock(tmp_path, "b"):
            pass
    assert not is_locked(tmp_path)
    with job_lock(tmp_path, "b"):  # free again once released
        pass


@pytest.mark.slow
def test_naip_example_job_runs_end_to_end_with_vectors(tmp_path: Path, dask_client) -> None:
    """The shipped example, as a user copies it (only the output folder moved), on the bundled NAIP pair."""
    pytest.importorskip("workflows.vectorize")
    import geopandas as gpd

    job = REPO / "workflows" / "jobs" / "naip_vegetation.yaml"
    out = tmp_path / "naip"
    summary = run_job(job, out=out, client=dask_client)
    assert summary.exit_code == 0 and summary.count("done") == 2
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    for item in catalog.get_items(recursive=True):
        assert set(item.assets) == {"classes", "proba", "vectors-gpkg"}
        gpkg = Path(item.assets["vectors-gpkg"].get_absolute_href())
        layer = gpd.read_file(gpkg, layer=gpkg.stem)  # the GeoPackage also holds its layer_styles table
        with rasterio.open(item.assets["classes"].get_absolute_href()) as src:
            assert layer.crs == src.crs
            classes = src.read(1)
            pixel_area = abs(src.transform.a * src.transform.e)
        # independent check: the polygons cover what the raster classifies, class by class
        for code, name in enumerate(("other", "vegetation")):
            rows = layer[layer["class_id"] == code]
            assert set(rows["class_name"]) == {name}
            assert rows.geometry.area.sum() == pytest.approx((classes == code).sum() * pixel_area, rel=1e-6)
        assert set(layer["acquired"].astype(str)) == {item.datetime.date().isoformat()}
    rows = {r["item_id"]: r for r in manifest_rows(out)}
    assert all(any(p.endswith(".gpkg") for p, _, _ in json.loads(r["outputs"])) for r in rows.values())


@pytest.mark.slow
def test_change_and_timeline_plug_in(tmp_path: Path, make_geotiff, dask_client) -> None:
    """Change pairs and a timeline through workflows.change, as a job's products."""
    pytest.importorskip("workflows.change")
    (tmp_path / "arc").mkdir()
    for i, day in enumerate(["20200101", "20210101", "20220101"]):
        make_geotiff(f"arc/site_{day}.tif", shape=SHAPE, seed=i)
    out = tmp_path / "out"
    job = write_job(tmp_path, {"folder": "arc"}, out, products={
        "segmentation": {"proba": True},
        "change": {"pairs": "consecutive", "options": {"quicklook": False, "polygons": False}},
        "timeline": {"options": {"plot": False, "polygons": False}}})
    first = run_job(job, client=dask_client)
    assert first.exit_code == 0, [o.message for o in first.outcomes if o.status == "failed"]
    kinds = sorted((o.kind, o.status) for o in first.outcomes)
    assert kinds == [("change", "done")] * 2 + [("scene", "done")] * 3 + [("timeline", "done")]
    rows = {r["item_id"]: r for r in manifest_rows(out)}
    assert all(json.loads(r["outputs"]) for r in rows.values())
    produced = [p for r in rows.values() for p, _, _ in json.loads(r["outputs"])]
    assert not [p for p in produced if p.endswith((".png", ".gpkg"))]  # the job's options reached them
    # one folder per kind, named by product: change/A__B.change.tif, timeline/timeline.areas.csv
    pair = "site_20200101__site_20210101"
    assert f"change/{pair}.change.tif" in [p for p, _, _ in json.loads(rows[f"change_{pair}"]["outputs"])]
    assert sorted(p for p, _, _ in json.loads(rows["timeline"]["outputs"])) == [
        "timeline/timeline.alerts.tif", "timeline/timeline.areas.csv", "timeline/timeline.areas.parquet",
        "timeline/timeline.events.tif"]
    assert not [p for p in (out / "change").iterdir() if p.is_dir()]
    # STAC items for the products, as for scenes: footprint and time range of their dates, typed assets
    items = {i.id: i for i in pystac.Catalog.from_file(str(out / "catalog.json")).get_items(recursive=True)}
    change_item, timeline_item = items[f"change_{pair}"], items["timeline"]
    assert items["site_20200101"].properties["scenewatch:threshold"] == "0.3 fixed"  # the threshold used
    assert change_item.assets["change"].roles == ["data"]
    assert change_item.assets["change"].media_type == pystac.MediaType.COG
    assert Path(change_item.assets["change"].get_absolute_href()) == out / "change" / f"{pair}.change.tif"
    assert change_item.properties["start_datetime"].startswith("2020-01-01")
    assert change_item.properties["end_datetime"].startswith("2021-01-01")
    assert change_item.bbox == items["site_20200101"].bbox
    assert timeline_item.assets["areas_csv"].roles == ["metadata"]
    assert timeline_item.properties["scenewatch:scenes"] == ["site_20200101", "site_20210101", "site_20220101"]
    again = run_job(job, client=dask_client)
    assert {o.status for o in again.outcomes} == {"skipped"}

    # a date that cannot be read: its pairs fail with the reason, the timeline goes on without it
    (tmp_path / "arc" / "site_20230101.tif").write_bytes(b"")
    third = {o.item_id: o for o in run_job(job, client=dask_client).outcomes}
    assert third["site_20230101"].status == "failed"
    assert third["change_site_20220101__site_20230101"].message.endswith(
        "input scene site_20230101 failed; see its own record")
    assert third["timeline"].status == "skipped"  # same three usable dates as before

    # an index-difference model for the change reads the scenes' bands, not the class maps
    (tmp_path / "arc" / "site_20230101.tif").unlink()
    dndvi = write_job(tmp_path, {"folder": "arc"}, tmp_path / "dndvi", name="dndvi", products={
        "segmentation": {"proba": False},
        "change": {"pairs": "first-last", "model": "dndvi", "options": {"quicklook": False}}})
    outcome = {o.item_id: o for o in run_job(dndvi, client=dask_client).outcomes}
    assert outcome["change_site_20200101__site_20220101"].status == "done"
    change_rows = [r for r in manifest_rows(tmp_path / "dndvi") if r["kind"] == "change"]
    assert [p for p, _, _ in json.loads(change_rows[0]["outputs"]) if p.endswith(".change.tif")]


@pytest.mark.slow
def test_bundle_identity_follows_its_files(tmp_path: Path) -> None:
    """A bundle is identified by its files: the recorded sha256 is its weights' (as the bundle states and
    every loading worker checks), and any changed file (weights, spec) changes the identity."""
    from pipeline.models.bundle import init_bundle, read_spec
    from pipeline.models.loader import describe_model
    from workflows.batch import file_sha256, model_identity

    bundle = init_bundle(tmp_path / "trees", "Unet", "mobilenet_v2", ["red", "nir"], ["bg", "tree"])
    ref = ModelRef.of(str(bundle))
    identity, sha = model_identity(ref, describe_model(ref))
    spec = read_spec(bundle)
    assert sha == spec.sha256 == file_sha256(bundle / spec.weights)
    assert model_identity(ref, describe_model(ref)) == (identity, sha)  # stable
    weights = bundle / spec.weights
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight: the bundle no longer loads, and its identity changes
    weights.write_bytes(bytes(data))
    assert model_identity(ref, describe_model(ref))[0] != identity


@pytest.mark.slow
def test_rerun_moves_products_of_the_old_layout(tmp_path: Path, make_geotiff, dask_client) -> None:
    """A manifest written with the older layout (change/change_A__B/A__B.change.tif,
    timeline/timeline/timeline.areas.csv) is redone in the new one on the next run: the products are
    recorded only under the new paths and the old files and folders are gone (nothing twice on disk)."""
    from workflows.manifest import OutputRecord, open_manifest

    (tmp_path / "arc").mkdir()
    for i, day in enumerate(["20200101", "20210101"]):
        make_geotiff(f"arc/site_{day}.tif", shape=SHAPE, seed=i)
    out = tmp_path / "out"
    job = write_job(tmp_path, {"folder": "arc"}, out, products={
        "change": {"pairs": "consecutive", "options": {"quicklook": False, "polygons": False}},
        "timeline": {"options": {"plot": False, "polygons": False}}})
    assert run_job(job, client=dask_client).exit_code == 0
    # rewrite the two product records as the older layout left them
    with open_manifest(out / "scenewatch-manifest.sqlite") as manifest:
        for record in manifest.items("test-job"):
            if record.kind not in ("change", "timeline"):
                continue
            old = out / record.kind / record.item_id
            old.mkdir()
            moved = []
            for output in record.outputs:
                target = old / Path(output.path).name
                (out / output.path).rename(target)
                moved.append(OutputRecord(str(target.relative_to(out)), output.size, output.sha256))
            manifest.succeed("test-job", record.item_id, moved, 1.0, dict(record.properties))
    rerun = {o.item_id: o.status for o in run_job(job, client=dask_client).outcomes}
    assert rerun["timeline"] == "done" and rerun["change_site_20200101__site_20210101"] == "done"
    rows = {r["item_id"]: r for r in manifest_rows(out)}
    recorded = sorted(p for r in rows.values() if r["kind"] != "scene" for p, _, _ in json.loads(r["outputs"]))
    assert recorded == ["change/site_20200101__site_20210101.change.tif", "timeline/timeline.alerts.tif",
                        "timeline/timeline.areas.csv", "timeline/timeline.areas.parquet",
                        "timeline/timeline.events.tif"]
    on_disk = sorted(str(p.relative_to(out)) for kind in ("change", "timeline") for p in (out / kind).rglob("*")
                     if p.suffix in (".tif", ".csv", ".parquet"))
    assert on_disk == recorded  # the old files are gone, and no old folder is left
    assert not [p for kind in ("change", "timeline") for p in (out / kind).iterdir() if p.is_dir()]
    assert {o.status for o in run_job(job, client=dask_client).outcomes} == {"skipped"}
