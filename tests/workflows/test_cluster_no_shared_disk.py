"""A cluster that shares no disk with the machine that submits the job: `dask scheduler` and two
`dask worker` processes on 127.0.0.1, each started in a folder of its own and, where the OS lets us, in a
mount namespace of its own with a private /tmp (so the submitting test's tmp files, the job file and the
state folder do not exist for them). The job's inputs are only in the S3 server (items found through a
STAC API search, assets in the bucket); its outputs go to S3. The products must equal a local run's."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stac_items import naip_items, upload_item
from tests.workflows.helpers import write_job
from workflows.batch import run_job

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _isolation() -> list[str]:
    """`unshare` into a private mount namespace with a fresh tmpfs on /tmp, when this OS allows it (root or
    user namespaces); else nothing (the workers still run in folders of their own)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    probe = subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /tmp"],
                           capture_output=True)
    return [unshare, "-m", "--propagation", "private"] if probe.returncode == 0 else []


@pytest.fixture
def remote_cluster(tmp_path_factory: pytest.TempPathFactory, s3) -> Iterator[tuple[str, bool]]:
    """``(scheduler address, isolated)``: a scheduler and two single-threaded workers as separate processes."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    dask = str(bin_dir / "dask")
    env = {**os.environ, "PYTHONPATH": ""}  # the installed package, as on a worker machine; S3 env from `s3`
    wrap = _isolation()
    processes = []
    try:
        home = tmp_path_factory.mktemp("scheduler")
        processes.append(subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                           "--no-dashboard"], cwd=home, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for i in range(2):
            folder = tmp_path_factory.mktemp(f"worker{i}")
            # in its own namespace the worker's /tmp is empty: it works in /tmp/worker, its own
            command = (f"mount -t tmpfs none /tmp && mkdir /tmp/worker && cd /tmp/worker && exec {dask} worker "
                       f"{address} --nthreads 1 --no-dashboard --local-directory /tmp/worker" if wrap else
                       f"exec {dask} worker {address} --nthreads 1 --no-dashboard --local-directory {folder}")
            processes.append(subprocess.Popen([*wrap, "sh", "-c", command], cwd=folder, env=env,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            if wrap:  # the isolation holds: a worker does not see this test's files
                assert not client.run(os.path.exists, str(home)).get(next(iter(client.scheduler_info()["workers"])))
        yield address, bool(wrap)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def test_stac_s3_job_on_a_cluster_without_shared_disk(tmp_path: Path, s3, stac_api, remote_cluster) -> None:
    address, _ = remote_cluster
    items = []
    for built in naip_items(tmp_path / "items"):
        _, local = upload_item(built, s3)
        items.append(json.loads(local.read_text()))
    url = stac_api.serve(items)
    inputs = {"stac_search": {"url": url, "datetime": "2000-01-01/2030-12-31"}}
    # polygons and a change pair too: the workers read the classes COGs that only the run's state folder holds
    products = {"vectors": {"options": {"sieve": 4}},
                "change": {"pairs": "first-last", "options": {"quicklook": False}}}
    job = write_job(tmp_path, inputs, tmp_path / "unused", dask={"scheduler": address}, bands=None,
                    name="cluster", products=products)
    summary = run_job(job, out=s3.url("cluster"), state=tmp_path / "state")
    assert summary.exit_code == 0 and summary.count("done") == 3, summary.outcomes

    local_job = write_job(tmp_path, inputs, tmp_path / "local", dask={"workers": 1}, bands=None, name="local",
                          products=products)
    assert run_job(local_job).exit_code == 0
    pair = "change/naip_20090818__naip_20200831.change"
    for name in ("naip_20090818.classes.tif", "naip_20090818.proba.tif", "naip_20200831.classes.tif",
                 "naip_20200831.proba.tif", f"{pair}.tif"):
        body = s3.client.get_object(Bucket=s3.bucket, Key=f"cluster/{name}")["Body"].read()
        assert body == (tmp_path / "local" / name).read_bytes(), f"{name} differs from the local run"
    for name in ("naip_20090818.gpkg", "naip_20200831.gpkg", f"{pair}.gpkg"):
        copy = tmp_path / "downloaded" / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(s3.client.get_object(Bucket=s3.bucket, Key=f"cluster/{name}")["Body"].read())
        rows, shapes = _features(copy)
        assert rows, f"{name}: no polygons to compare"
        assert (rows, shapes) == _features(tmp_path / "local" / name), f"{name} differs from the local run"
    keys = {o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket, Prefix="cluster/")["Contents"]}
    assert {"cluster/catalog.json", "cluster/scenewatch-manifest.sqlite"} <= keys


def test_blocks_as_task_results_give_the_same_cogs(tmp_path: Path, make_geotiff, dask_client,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The no-shared-disk path (blocks returned by the tasks, COGs written by the client) on any machine,
    namespaces or not: byte for byte what workers writing part files beside the output give."""
    import workflows.scene as scene_module
    from pipeline.config import PredictConfig
    from pipeline.models.contract import ModelRef

    image = make_geotiff("scene.tif", shape=(4, 700, 900), blocksize=256)
    plan = scene_module.plan_scene(image, ModelRef.of("vegetation"), PredictConfig(bands="naip", tile_size=256))
    shared = scene_module.predict_scene(plan, tmp_path / "shared", client=dask_client, progress=False)
    assert scene_module.workers_share_disk(dask_client, tmp_path)
    monkeypatch.setattr(scene_module, "workers_share_disk", lambda dask, folder: False)
    inline = scene_module.predict_scene(plan, tmp_path / "inline", client=dask_client, progress=False)
    assert inline.tiles_skipped == shared.tiles_skipped
    for a, b in ((shared.classes_path, inline.classes_path), (shared.proba_path, inline.proba_path)):
        assert a.read_bytes() == b.read_bytes()
    assert not list((tmp_path / "inline").glob("*.part"))


def _features(path: Path) -> tuple[list[dict], list[bytes]]:
    """A polygon layer's rows (attributes, in layer order) and geometries (WKB)."""
    import geopandas as gpd

    frame = gpd.read_file(path, layer=path.stem)
    return frame.drop(columns="geometry").to_dict("records"), list(frame.geometry.to_wkb())


def test_polygons_change_and_timeline_with_windows_sent_by_the_client(
        tmp_path: Path, make_geotiff, dask_client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers that cannot see the classes COGs (forced on any machine): the client reads each tile's windows
    and sends them with the task. Polygons (seams across tiles, a sieve halo, probabilities), a change pair
    and a timeline come out as workers reading the COGs themselves make them."""
    import workflows.scene as scene_module
    import workflows.vectorize as vectorize_module
    from pipeline.config import ChangeConfig, PredictConfig, TimelineConfig, VectorizeConfig
    from workflows.change import detect_change, run_timeline

    scenes = [make_geotiff(f"site_2020010{i + 1}.tif", shape=(4, 300, 420), blocksize=256, seed=i) for i in range(3)]
    predict = PredictConfig(bands="naip", tile_size=256)
    vector = VectorizeConfig(tile_size=128, sieve=4, formats=("gpkg",))
    client_reads: list[int] = []
    read_windows = vectorize_module._read_windows

    def counted(job, tile):  # type: ignore[no-untyped-def]
        client_reads.append(1)
        return read_windows(job, tile)

    monkeypatch.setattr(vectorize_module, "_read_windows", counted)

    def run(out: Path) -> dict[str, Path]:
        pair = detect_change(scenes[0], scenes[1], "vegetation", out,
                             ChangeConfig(predict=predict, quicklook=False), client=dask_client, progress=False)
        line = run_timeline(scenes, "vegetation", out, TimelineConfig(predict=predict, plot=False, confirm=1),
                            client=dask_client, progress=False)
        first = pair.dates[0]
        layer = vectorize_module.vectorize_scene(first.classes_path, out / "vectors", vector,
                                                 proba_path=first.proba_path, client=dask_client, progress=False)
        assert pair.polygons_path is not None and line.events_polygons_path is not None
        return {"change.tif": pair.change_path, "change.gpkg": pair.polygons_path, "alerts.tif": line.alerts_path,
                "events.gpkg": line.events_polygons_path, "vectors.gpkg": layer.paths["gpkg"]}

    shared = run(tmp_path / "shared")
    assert not client_reads  # a LocalCluster sees the folder: the workers read their windows
    monkeypatch.setattr(scene_module, "workers_share_disk", lambda dask, folder: False)
    monkeypatch.setattr(vectorize_module, "workers_share_disk", lambda dask, folder: False)
    inline = run(tmp_path / "inline")
    assert client_reads
    for name, path in shared.items():
        if name.endswith(".tif"):
            assert path.read_bytes() == inline[name].read_bytes(), name
        else:
            rows, shapes = _features(path)
            assert rows, f"{name}: no polygons to compare"
            assert (rows, shapes) == _features(inline[name]), name
