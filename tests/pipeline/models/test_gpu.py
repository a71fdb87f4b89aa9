"""The GPU path: ``auto`` is fp16 there and stays within 0.01 of fp32 on the CPU, int8 is refused with a
message, and a scene runs end to end on a LocalCluster of a few workers sharing the GPU (not one per core).

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``pytest tests/pipeline/models/test_gpu.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import rasterio

from pipeline.errors import ModelError
from pipeline.inference.stitch import decode_proba
from pipeline.models.contract import ModelRef
from pipeline.models.loader import runs_on_gpu
from pipeline.models.network import AUTO_DRIFT_LIMIT, TorchSegmentationModel, visible_gpus
from tests.conftest import NAIP_2020
from tests.pipeline.models.test_model_precision import INFO, _fit, _unet

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device here")


@pytest.fixture(scope="module")
def fitted(naip):
    data, mean, std = naip
    return _fit(_unet(), data, mean, std)


def test_auto_is_fp16_on_the_gpu_and_within_the_limit_of_cpu_fp32(naip, fitted):
    data, mean, std = naip
    cpu = TorchSegmentationModel(copy.deepcopy(fitted), INFO, mean=mean, std=std, precision="fp32", device="cpu")
    gpu = TorchSegmentationModel(copy.deepcopy(fitted), INFO, mean=mean, std=std, precision="auto")
    assert gpu.device.startswith("cuda") and gpu.precision == "fp16"
    out = gpu.predict(data)
    assert gpu.precision == "fp16" and gpu.auto_drift is not None and gpu.auto_drift <= AUTO_DRIFT_LIMIT
    assert np.abs(out - cpu.predict(data)).mean() <= 0.01
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-4)


def test_int8_is_refused_on_the_gpu():
    with pytest.raises(ModelError, match="int8 runs on the CPU only; use fp16"):
        TorchSegmentationModel(_unet(), INFO, precision="int8")


@pytest.mark.slow
def test_scene_on_a_gpu_worker_matches_the_cpu(tmp_path, naip, fitted):
    from pipeline.config import PredictConfig
    from pipeline.models.bundle import save_bundle
    from workflows.cluster import GPU_WORKERS, cpu_count, dask_client, worker_count
    from workflows.scene import plan_scene, predict_scene

    _, mean, std = naip
    bundle = save_bundle(tmp_path / "unet", fitted, arch="Unet", encoder="resnet18", bands=list(INFO.bands),
                         class_names=list(INFO.class_names), mean=mean.tolist(), std=std.tolist())

    def on_gpu() -> float:
        import torch

        return torch.cuda.max_memory_allocated()

    assert visible_gpus() >= 1 and runs_on_gpu(bundle)
    with dask_client(model=bundle) as client:
        assert worker_count(client) == min(cpu_count(), GPU_WORKERS)  # not one per core
        plan = plan_scene(NAIP_2020, bundle, PredictConfig(bands="naip", tile_size=256))
        gpu = predict_scene(plan, tmp_path / "gpu", client=client, progress=False)
        assert any(v > 0 for v in client.run(on_gpu).values())  # the workers' network lived on the GPU
    config = PredictConfig(bands="naip", tile_size=256, precision="fp32", workers=1)
    cpu = predict_scene(plan_scene(NAIP_2020, ModelRef.of(bundle, device="cpu"), config), tmp_path / "cpu",
                        progress=False)
    with rasterio.open(gpu.proba_path) as a, rasterio.open(cpu.proba_path) as b:
        pa, pb = decode_proba(a.read()), decode_proba(b.read())
        assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
    valid = np.isfinite(pa).all(0)
    assert valid.mean() > 0.9 and np.array_equal(valid, np.isfinite(pb).all(0))
    assert np.abs(pa - pb)[:, valid].mean() <= 0.01
    with rasterio.open(gpu.classes_path) as a, rasterio.open(cpu.classes_path) as b:
        assert (a.read(1) == b.read(1)).mean() >= 0.99
