"""A model with a bug for batch tests: the built-in NDVI model, except that it fails with a KeyError (not a
scenewatch error) on tiles holding the value 7, so that one scene of an archive can be made to hit it."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.models.contract import ModelInfo
from pipeline.models.spectral import vegetation_model


class BuggyModel:
    def __init__(self, **options: Any) -> None:
        self._inner = vegetation_model(**options)
        self.info: ModelInfo = self._inner.info
        self._gains: dict[int, float] = {}  # the bug: nothing ever fills it

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if np.any(batch == 7):
            return self._inner.predict(batch) * self._gains[7]
        return self._inner.predict(batch)


def buggy_vegetation(**options: Any) -> BuggyModel:
    return BuggyModel(**options)
