"""A model that kills its Dask worker for batch tests: the built-in NDVI model, except that a batch of tiles
holding the value 13 ends the worker process at once (SIGKILL, as the kernel's OOM killer or a crashing
native library would), so that one scene of an archive kills every worker its tiles reach. Outside a Dask
worker (a test's own process) it raises instead of killing."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np

from pipeline.models.contract import ModelInfo
from pipeline.models.spectral import vegetation_model


class KillerModel:
    def __init__(self, **options: Any) -> None:
        self._inner = vegetation_model(**options)
        self.info: ModelInfo = self._inner.info

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if np.any(batch == 13):
            from distributed import get_worker

            get_worker()  # ValueError outside a worker: never kill the test's own process
            os.kill(os.getpid(), signal.SIGKILL)
        return self._inner.predict(batch)


def killer_vegetation(**options: Any) -> KillerModel:
    return KillerModel(**options)
