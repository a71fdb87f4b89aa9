"""A Dask task whose function and fixed arguments travel as one pickle that only the worker running it opens.

Dask's scheduler unpickles every graph it is sent, and unpickling a task's function or argument imports the
module that defines it: a task of ``workflows.vectorize`` made a fresh scheduler import that module and all
it imports (rasterio, scipy, shapely, pyarrow, pydantic configs: about 0.6 s of CPU, before the first task
could start). Packed with :func:`packed`, a task's function and fixed arguments are bytes to the scheduler,
which then imports only this module; its inputs (futures of other tasks) stay arguments of their own, so
that Dask still sees them, runs the task where they are and hands it their results.

Example::

    future = client.submit(run_packed, packed(merge, spec, path), *input_futures, key=..., pure=False)
    # on a worker: merge(*inputs, spec, path)
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

__all__ = ["packed", "run_packed"]


def packed(func: Callable[..., Any], *args: Any) -> bytes:
    """``func`` and its fixed arguments ``args`` as one pickle, for :func:`run_packed`."""
    return pickle.dumps((func, args), protocol=pickle.HIGHEST_PROTOCOL)


def run_packed(payload: bytes, *inputs: Any) -> Any:
    """The task: ``func(*inputs, *args)`` from ``payload`` (:func:`packed`); ``inputs`` are the results of
    the task's input futures, resolved by Dask."""
    func, args = pickle.loads(payload)
    return func(*inputs, *args)
