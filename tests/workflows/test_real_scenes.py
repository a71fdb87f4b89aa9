"""Real scenes from shared/data end to end, on a LocalCluster and on a separately started scheduler."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.config import PredictConfig
from pipeline.models.contract import ModelRef
from tests.conftest import NAIP_2020, REPO, shared
from tests.models import unet
from workflows.scene import plan_scene, predict_scene

pytestmark = pytest.mark.slow


def check_aligned(scene: Path, out: Path) -> np.ndarray:
    with rasterio.open(scene) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape
        return dst.read(1)


def test_naip_four_band(tmp_path, dask_client):
    plan = plan_scene(NAIP_2020, "vegetation", PredictConfig(bands="naip", tile_size=256))
    result = predict_scene(plan, tmp_path, client=dask_client, progress=False)
    classes = check_aligned(NAIP_2020, result.classes_path)
    share = (classes == 1).mean()
    assert 0.05 < share < 0.95  # farmland in August: both classes present


def test_landsat_collar_is_nodata(tmp_path, dask_client):
    scene = shared("scenes/landsat7_bahamas/RGB.byte.tif")
    ref = ModelRef.from_factory(unet, bands=("red", "green", "blue"))
    plan = plan_scene(scene, ref, PredictConfig(bands="rgb", tile_size=256, halo=32))
    result = predict_scene(plan, tmp_path, client=dask_client, progress=False)
    classes = check_aligned(scene, result.classes_path)
    with rasterio.open(scene) as src:
        collar = src.dataset_mask() == 0
    assert collar.any() and (classes[collar] == 255).all() and (classes[~collar] != 255).all()


def test_worldview_float64(tmp_path, dask_client):
    scene = shared("scenes/spacenet6_rotterdam/ms1.tif")
    plan = plan_scene(scene, "vegetation", PredictConfig(bands="bgrn", tile_size=128))
    result = predict_scene(plan, tmp_path, client=dask_client, progress=False)
    check_aligned(scene, result.classes_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_against_separate_scheduler_and_workers(tmp_path):
    """`dask scheduler` and two `dask worker` processes on loopback; the CLI runs unchanged via --scheduler."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    env = os.environ | {"PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([bindir / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(1.5)
        for _ in range(2):
            procs.append(subprocess.Popen([bindir / "dask", "worker", address, "--nthreads", "1", "--no-dashboard"],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        run = subprocess.run([bindir / "scenewatch", "predict", str(NAIP_2020), "--model", "vegetation",
                              "--bands", "naip", "--tile-size", "256", "--out", str(tmp_path), "--scheduler",
                              address, "--quiet"], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        check_aligned(NAIP_2020, tmp_path / "m_4709963_se_14_1_20200831.classes.tif")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
