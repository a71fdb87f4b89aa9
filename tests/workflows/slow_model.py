"""A real model for batch tests: the built-in NDVI model, plus a pause per batch of tiles.

The pause gives a test a window in which a scene is certainly being worked on (to kill the run or a worker
in the middle of it) without mocking anything; the probabilities are the built-in model's own. Workers
import it by name (``tests.workflows.slow_model:slow_vegetation``), as they would a user's model factory.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.models.contract import ModelInfo
from pipeline.models.spectral import vegetation_model


class SlowModel:
    def __init__(self, delay: float, **options: Any) -> None:
        self._inner = vegetation_model(**options)
        self.info: ModelInfo = self._inner.info
        self.delay = delay

    def predict(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return self._inner.predict(batch)


def slow_vegetation(delay: float = 0.5, **options: Any) -> SlowModel:
    return SlowModel(delay, **options)
