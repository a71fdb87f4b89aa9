"""workflows.packed: a task's function and fixed arguments as bytes, its inputs first."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from workflows.packed import packed, run_packed
from workflows.vectorize import vectorize_scene


def test_inputs_come_before_the_fixed_arguments() -> None:
    assert run_packed(packed(divmod, 3), 17) == (5, 2)
    assert run_packed(packed(divmod, 17, 3)) == (5, 2)


def test_unpickling_the_task_imports_none_of_the_function_modules() -> None:
    """What Dask's scheduler unpickles of a packed task imports workflows.packed only."""
    task = pickle.dumps((run_packed, packed(vectorize_scene, "classes.tif", "out")))
    check = "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); print(sorted(m for m in sys.modules " \
            "if m.startswith(('workflows', 'pipeline', 'rasterio', 'shapely'))))"
    out = subprocess.run([sys.executable, "-c", check], input=task, capture_output=True, check=True).stdout
    assert out.decode().strip() == "['workflows', 'workflows.packed']"


@pytest.mark.slow
def test_the_scheduler_of_a_predict_run_imports_none_of_the_task_modules(make_geotiff, tmp_path) -> None:
    """The COG stage's tasks and the backend's settle tasks go packed too: Dask's scheduler (a process of its
    own) unpickles a whole scene's graph without importing workflows.scene, rasterio, torch or pydantic."""
    from pipeline.config import PredictConfig
    from pipeline.models.contract import ModelRef
    from workflows.cluster import dask_client
    from workflows.scene import plan_scene, predict_scene

    ref = ModelRef.from_factory("tests.models:small_convnet", bands=("red", "nir"))  # settled in each worker
    plan = plan_scene(make_geotiff(shape=(4, 120, 150)), ref, PredictConfig(bands="naip", tile_size=48, halo=8))
    with dask_client(2) as client:
        result = predict_scene(plan, tmp_path / "out", client=client, progress=False)
        imported = client.run_on_scheduler(lambda: sorted(m for m in sys.modules if m.split(".")[0] in {
            "workflows", "pipeline", "tiles", "rasterio", "torch", "pydantic", "scipy", "shapely"}))
    assert result.classes_path.is_file() and result.proba_path.is_file()
    assert imported == ["workflows", "workflows.packed"]
