"""workflows.packed: a task's function and fixed arguments as bytes, its inputs first."""

from __future__ import annotations

import pickle
import subprocess
import sys

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
