"""Fixtures shared by the model tests (CPU precision and GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from tests.conftest import NAIP_2020


@pytest.fixture(scope="module")
def naip() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two 128 px crops of the real NAIP sample, and the scene's per-band mean and std."""
    with rasterio.open(NAIP_2020) as src:
        data = src.read(out_dtype="float32")
    mean, std = data.mean(axis=(1, 2)), data.std(axis=(1, 2))
    return np.stack([data[:, 100:228, 200:328], data[:, 400:528, 500:628]]), mean, std
