"""``auto`` settled in the workers of a real LocalCluster: each for its own CPU, recorded in the COGs."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rasterio

from pipeline.config import PredictConfig
from pipeline.models import backends
from pipeline.models.contract import ModelInfo, ModelRef
from pipeline.products import Tag
from workflows.cluster import threads_per_model
from workflows.scene import plan_scene, predict_scene

torch = pytest.importorskip("torch")

OTHER_CPU = "AMD EPYC 9R14 [avx2 avx512_bf16 avx512_vnni avx512f]"


def auto_convnet(seed: int = 0, precision: str = "auto", **_: Any) -> Any:
    """Two 3x3 convolutions at precision ``auto`` (seeded: every worker builds the same weights)."""
    from pipeline.models.network import TorchSegmentationModel

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1))
    info = ModelInfo("auto-convnet", "0", ("red", "nir"), ("a", "b"), tile_size=64, halo=8)
    return TorchSegmentationModel(net, info, mean=[1000.0, 1000.0], std=[500.0, 500.0], precision=precision,
                                  device="cpu", stride=1)


def _pretend_cpu(name: str) -> None:
    """In a worker: this process now reads its CPU as ``name`` (a machine of another kind joined)."""
    backends.cpu_identity = lambda: name


def _choices(ref: ModelRef) -> tuple[str, bool, str]:
    from pipeline.models.loader import load_model

    model: Any = load_model(ref)
    return model.backend, model.choice.cached, model.choice.key["cpu"]


@pytest.mark.slow
def test_unlike_workers_each_choose_for_their_cpu_and_the_cogs_record_it(make_geotiff, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "cache"))  # inherited by the workers started below
    scene = make_geotiff(shape=(4, 300, 500))
    ref = ModelRef.from_factory(auto_convnet)
    config = PredictConfig(bands="naip", tile_size=64, halo=8, proba_dtype="float32")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=0) as cluster, Client(cluster) as client:
        workers = sorted(client.scheduler_info()["workers"])
        client.run(_pretend_cpu, OTHER_CPU, workers=workers[:1])
        plan = plan_scene(scene, ref, config)
        result = predict_scene(plan, tmp_path / "out", client=client, progress=False)
        threads = plan.model.with_threads(threads_per_model(client))  # the ref predict_scene gave the workers
        seen = client.run(_choices, threads)
    with rasterio.open(result.classes_path) as classes:
        tagged = set(classes.tags()[Tag.BACKEND].split(","))
    cpus = {cpu for _, _, cpu in seen.values()}
    assert len(cpus) == 2 and OTHER_CPU in cpus  # each worker measured under its own CPU
    assert tagged == {backend for backend, _, _ in seen.values()}  # the COGs name every backend that ran
    entries = json.loads((tmp_path / "cache" / backends.CACHE_FILE).read_text())["entries"].values()
    assert {e["key"]["cpu"] for e in entries} == cpus and not any(cached for _, cached, _ in seen.values())

    # a later run on fresh worker processes of this machine measures nothing: both read the cache
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=0) as cluster, Client(cluster) as client:
        predict_scene(plan_scene(scene, ref, config), tmp_path / "again", client=client, progress=False)
        again = client.run(_choices, threads)
    assert all(cached for _, cached, _ in again.values())


def test_a_scene_smaller_than_a_tile_is_settled_on_it_and_tagged(make_geotiff, tmp_path, dask_client):
    scene = make_geotiff(shape=(4, 50, 70))
    config = PredictConfig(bands="naip", tile_size=64, halo=8)
    result = predict_scene(plan_scene(scene, ModelRef.from_factory(auto_convnet, seed=3), config), tmp_path / "out",
                           client=dask_client, progress=False)
    with rasterio.open(result.classes_path) as classes:
        assert classes.tags()[Tag.BACKEND].startswith(("torch-", "openvino-"))


def test_a_worker_gone_before_its_settle_task_is_left_out(dask_client):
    """A settle task pinned to a worker that left (killed, and back at another address) would wait forever;
    it is left out, and the workers there answer. The pinned address here is one no worker ever had."""
    import os

    from workflows.backends import _gather_settled

    live = sorted(dask_client.scheduler_info(n_workers=-1)["workers"])[0]
    gone = "tcp://127.0.0.1:9"
    futures = {w: dask_client.submit(lambda: ("torch-fp32", str(os.getpid())), workers=[w], allow_other_workers=False,
                                     pure=False) for w in (live, gone)}
    settled = _gather_settled(dask_client, futures)
    assert settled == [("torch-fp32", str(dask_client.run(os.getpid, workers=[live])[live]))]
    assert futures[gone].cancelled()
