"""Shared fixtures: factories for real GeoTIFFs in tmp_path, and read-only real scenes from shared/data."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from tests.s3_server import s3, s3_server  # noqa: F401  (fixtures: a moto S3 server on 127.0.0.1)
from tests.stac_api import stac_api  # noqa: F401  (fixture: a rustac STAC API server on 127.0.0.1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_DIR = REPO / "examples" / "data"
NAIP_2020 = SAMPLE_DIR / "m_4709963_se_14_1_20200831.tif"
NAIP_2009 = SAMPLE_DIR / "m_4709963_se_14_1_20090818.tif"

# Each test session keeps the backends precision auto measures (pipeline.models.backends) in a cache of its
# own, never the user's; set at import, so the worker processes of every LocalCluster inherit it.
_BACKEND_CACHE = tempfile.TemporaryDirectory(prefix="scenewatch-backends-")
os.environ.setdefault("SCENEWATCH_CACHE_DIR", _BACKEND_CACHE.name)


def shared(relative: str) -> Path:
    """A file under ../shared/data; the test is skipped when that folder is not beside the checkout."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{relative} not available (needs ../shared/data)")
    return path


def textured(shape: tuple[int, int], seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """Smooth random field in [0, 1]: sums of a few sinusoids, so objects cross tile borders."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    field = np.zeros(shape)
    for _ in range(6):
        fr, fc = rng.uniform(0.005, 0.05, size=2) / scale
        phase = rng.uniform(0, 2 * np.pi)
        field += np.sin(rows * fr * 2 * np.pi + cols * fc * 2 * np.pi + phase)
    field += rng.normal(0, 0.3, shape)
    return (field - field.min()) / (field.max() - field.min())


@pytest.fixture
def make_geotiff(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_geotiff(name, data=None, shape=(4, 300, 500), dtype="uint16", crs="EPSG:32633",
    nodata=None, res=10.0, blocksize=None, nodata_box=None)`` writes a real GeoTIFF and returns its path.

    Without ``data``, bands are a red/NIR-like pair over a textured field (bands: red, green, blue, nir),
    so NDVI has both classes. ``nodata_box=(r0, r1, c0, c1)`` sets that region to nodata in every band.
    """

    def make(name: str = "scene.tif", data: np.ndarray | None = None, shape: tuple[int, int, int] = (4, 300, 500),
             dtype: str = "uint16", crs: str | None = "EPSG:32633", nodata: float | None = None,
             res: float = 10.0, blocksize: int | None = None, nodata_box: tuple[int, int, int, int] | None = None,
             seed: int = 0, descriptions: tuple[str, ...] | None = None) -> Path:
        if data is None:
            count, height, width = shape
            veg = textured((height, width), seed)
            base = np.stack([textured((height, width), seed + 1 + i) for i in range(count)])
            data = 500 + 1500 * base
            red, nir = 0, min(3, count - 1)
            data[red] = 300 + 1200 * (1 - veg)
            data[nir] = 600 + 3000 * veg
        data = np.asarray(data)
        if np.dtype(dtype).kind in "iu":
            info = np.iinfo(dtype)
            data = np.clip(np.rint(data), info.min, info.max)
        data = data.astype(dtype)
        if nodata_box is not None:
            if nodata is None:
                raise ValueError("nodata_box needs a nodata value")
            r0, r1, c0, c1 = nodata_box
            data[:, r0:r1, c0:c1] = nodata
        path = tmp_path / name
        profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
                   "dtype": dtype, "transform": from_origin(500000.0, 4000000.0, res, res), "nodata": nodata,
                   "compress": "deflate"}
        if crs is not None:
            profile["crs"] = CRS.from_user_input(crs)
        if blocksize:
            profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            if descriptions:
                for i, d in enumerate(descriptions, start=1):
                    dst.set_band_description(i, d)
        return path

    return make


@pytest.fixture(scope="session")
def dask_client():
    """One real LocalCluster of two worker processes, shared by the tests that need Dask."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      memory_limit=0) as cluster, Client(cluster) as client:
        yield client
