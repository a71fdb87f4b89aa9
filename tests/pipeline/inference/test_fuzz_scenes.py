"""Property: whatever a GeoTIFF's header says, open_scene and read_window work or raise a ScenewatchError,
and a scene that opens is one the pipeline can use (a geotransform, a plausible size for its file).

Hypothesis writes GeoTIFFs through rasterio's MemoryFile (size, bands, data type, tiling, block size,
interleave, compression, nodata, CRS or none, geotransform or none, sparse files that declare more than they
hold) and then may cut the bytes short or overwrite some of them, in the header most often. Any other
exception, or a hang (the timeout), is a bug; each one found became a named test in
test_hostile_scenes.py or below.

CI runs a bounded number of cases; ``SCENEWATCH_FUZZ_EXAMPLES=5000`` runs more on demand.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from rasterio.io import MemoryFile
from rasterio.transform import Affine, from_origin

from pipeline.errors import ScenewatchError
from pipeline.inference.read import (
    DEFAULT_MAX_BLOCK_BYTES,
    DEFAULT_MAX_COMPRESSION_RATIO,
    REMOTE_SCHEMES,
    open_scene,
    read_window,
)
from tiles.grid import PixelWindow

EXAMPLES = int(os.environ.get("SCENEWATCH_FUZZ_EXAMPLES", "40"))
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64", "complex64")
COMPRESS = (None, "deflate", "lzw", "zstd", "packbits")


@dataclass(frozen=True)
class Header:
    """What one generated GeoTIFF declares."""

    width: int
    height: int
    count: int
    dtype: str
    tiled: bool
    block: int
    interleave: str
    compress: str | None
    nodata: float | None
    crs: str | None
    transform: Affine | None
    sparse: bool


@st.composite
def headers(draw: st.DrawFn) -> Header:
    sparse = draw(st.booleans())
    # sparse files write no block, so they may declare far more than they hold; others stay small
    side = st.integers(1, 40_000) if sparse else st.integers(1, 160)
    dtype = draw(st.sampled_from(DTYPES))
    nodata = draw(st.one_of(st.none(), st.sampled_from([0.0, 1.0, 255.0, -9999.0]),
                            st.just(float("nan")) if dtype.startswith("float") else st.none()))
    if nodata is not None and not np.isnan(nodata) and dtype != "complex64":
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
        nodata = nodata if info.min <= nodata <= info.max else None
    north_up = st.builds(from_origin, st.floats(-1e6, 1e6), st.floats(-1e6, 1e7), st.sampled_from([0.5, 10.0, 30.0]),
                         st.sampled_from([0.5, 10.0, 30.0]))
    rotated = st.just(Affine(10.0, 2.0, 500000.0, 1.0, -10.0, 4000000.0))
    transform = draw(st.one_of(st.none(), north_up, north_up, north_up, rotated))  # one_of picks a branch evenly
    return Header(width=draw(side), height=draw(side), count=draw(st.integers(1, 5)), dtype=dtype,
                  tiled=draw(st.booleans()), block=draw(st.sampled_from([16, 32, 64, 256, 512])),
                  interleave=draw(st.sampled_from(["pixel", "band"])), compress=draw(st.sampled_from(COMPRESS)),
                  nodata=nodata, crs=draw(st.sampled_from([None, "EPSG:32618", "EPSG:32618", "EPSG:4326"])),
                  transform=transform, sparse=sparse)


@st.composite
def damage(draw: st.DrawFn) -> tuple[float | None, tuple[tuple[float, int], ...]]:
    """Keep a fraction of the file (None: all), and overwrite bytes at (position, value) pairs: a negative
    position is a fraction of the first 4 KiB (the TIFF header and first IFD), a positive one of the file.
    Half the files are left whole, so that the property also covers every header that opens."""
    mode = draw(st.sampled_from(["whole", "whole", "cut", "header", "anywhere"]))
    if mode == "whole":
        return None, ()
    if mode == "cut":
        return draw(st.floats(0.0, 1.0)), ()
    where = st.floats(0.0, 1.0).map(lambda f: -f) if mode == "header" else st.floats(0.0, 1.0)
    return None, tuple(draw(st.lists(st.tuples(where, st.integers(0, 255)), min_size=1, max_size=6)))


def tiff_bytes(h: Header) -> bytes:
    profile: dict[str, object] = {"driver": "GTiff", "width": h.width, "height": h.height, "count": h.count,
                                  "dtype": h.dtype, "interleave": h.interleave, "nodata": h.nodata}
    if h.tiled:
        profile.update(tiled=True, blockxsize=h.block, blockysize=h.block)
    else:
        profile.update(blockysize=min(h.block, h.height))
    if h.compress:
        profile["compress"] = h.compress
    if h.crs:
        profile["crs"] = h.crs
    if h.transform is not None:
        profile["transform"] = h.transform
    if h.sparse:
        profile["sparse_ok"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                if not h.sparse:
                    rng = np.random.default_rng(h.width * 7 + h.height)
                    values = rng.integers(0, 200, (h.count, h.height, h.width)).astype(h.dtype)
                    dst.write(values)
            return bytes(mem.read())


def damaged(raw: bytes, keep: float | None, spots: tuple[tuple[float, int], ...]) -> bytes:
    out = bytearray(raw if keep is None else raw[: int(len(raw) * keep)])
    for where, value in spots:
        if not out:
            break
        # negative: a position in the first 4 KiB (the TIFF header and first IFD); positive: anywhere
        limit = min(len(out), 4096) if where < 0 else len(out)
        out[min(int(abs(where) * limit), limit - 1)] = value
    return bytes(out)


def note(text: str) -> None:
    """Count an outcome in Hypothesis's statistics (pytest --hypothesis-show-statistics)."""
    if currently_in_test_context():
        event(text)


def check_scene(path: Path) -> None:
    """The property: each step works or raises a ScenewatchError, nothing else; and what opens is usable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GDAL's complaints about a broken file are not the property
        try:
            meta = open_scene(path, max_pixels=2_000_000_000)
        except ScenewatchError as err:
            reason = re.sub(r"[\d,.]+", "N", " ".join(str(err).split(": ", 2)[1].split()[:3]))
            note(f"open_scene: {type(err).__name__}: {reason}")
            return
        note("open_scene: opened")
        itemsize = np.dtype(meta.dtype).itemsize
        assert meta.width * meta.height * meta.count * itemsize <= DEFAULT_MAX_COMPRESSION_RATIO * path.stat().st_size
        assert meta.block_width * meta.block_height * meta.count * itemsize <= DEFAULT_MAX_BLOCK_BYTES
        assert not meta.transform.is_identity  # it has its own CRS (none was assumed), so it needs a geotransform
        last = PixelWindow(max(0, meta.height - 20), max(0, meta.width - 20), min(20, meta.height),
                           min(20, meta.width))
        for window in (PixelWindow(0, 0, min(64, meta.height), min(64, meta.width)), last):
            try:
                data, valid = read_window(meta, window, list(range(1, meta.count + 1)))
            except ScenewatchError as err:
                note(f"read_window: {type(err).__name__}")
                continue
            assert data.shape == (meta.count, window.height, window.width) and valid.shape == data.shape[1:]


@pytest.mark.slow
@pytest.mark.timeout(600)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 40,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(header=headers(), harm=damage())
def test_any_geotiff_opens_and_reads_or_raises_a_scenewatch_error(header: Header,
                                                                   harm: tuple[float | None, tuple]) -> None:
    raw = tiff_bytes(header)
    folder = Path(tempfile.mkdtemp(prefix="sw-fuzz-"))
    try:
        path = folder / "scene.tif"
        path.write_bytes(damaged(raw, *harm))
        check_scene(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_generator_writes_real_geotiffs(tmp_path: Path) -> None:
    """The property above tests something: an undamaged generated file is a GeoTIFF rasterio reads back."""
    header = Header(width=70, height=50, count=3, dtype="int16", tiled=True, block=32, interleave="band",
                    compress="deflate", nodata=-9999.0, crs="EPSG:32618",
                    transform=from_origin(500000.0, 4000000.0, 10.0, 10.0), sparse=False)
    path = tmp_path / "scene.tif"
    path.write_bytes(tiff_bytes(header))
    with rasterio.open(path) as src:
        assert (src.width, src.height, src.count, src.dtypes[0], src.block_shapes[0]) == (70, 50, 3, "int16",
                                                                                          (32, 32))
    meta = open_scene(path)
    data, valid = read_window(meta, PixelWindow(0, 0, 50, 70), [1, 2, 3])
    assert valid.all() and data.shape == (3, 50, 70)


@settings(max_examples=EXAMPLES * 5, deadline=None, derandomize=EXAMPLES <= 40)
@given(path=st.one_of(st.text(max_size=120), st.sampled_from(["", ".", "/", "..", "/dev/zero", "/dev/stdin",
                                                                "/proc/self/environ", "/tmp", "scene.tif/",
                                                                "<VRTDataset/>", " <x>", "GTIFF_DIR:1:scene.tif"])))
def test_any_string_given_as_a_scene_path_is_refused_in_one_error_or_opened(path: str) -> None:
    """check_input_path is the first thing any string meets: it never lets another exception through."""
    if any(path.lower().startswith(f"{scheme}://") for scheme in REMOTE_SCHEMES):
        return  # explicit URLs go to the network, by design; the suite stays offline
    with warnings.catch_warnings(), contextlib.suppress(ScenewatchError):
        warnings.simplefilter("ignore")
        open_scene(path)


# What the property found on the code before the defences, shrunk by Hypothesis; kept as named cases.


def test_found_a_1x1_scene_with_a_crs_and_no_geotransform(tmp_path: Path) -> None:
    header = Header(width=1, height=1, count=1, dtype="uint8", tiled=False, block=16, interleave="pixel",
                    compress=None, nodata=None, crs="EPSG:32618", transform=None, sparse=False)
    path = tmp_path / "scene.tif"
    path.write_bytes(tiff_bytes(header))
    with pytest.raises(ScenewatchError, match="has a CRS but no geotransform"):
        open_scene(path)
    check_scene(path)


def test_found_a_592_byte_file_declaring_65_x_18216_x_5(tmp_path: Path) -> None:
    """Found with the geotransform check left out (the case above shrinks first otherwise); the size is
    checked first."""
    header = Header(width=65, height=18216, count=5, dtype="uint8", tiled=False, block=512, interleave="pixel",
                    compress=None, nodata=None, crs="EPSG:32618", transform=None, sparse=True)
    path = tmp_path / "scene.tif"
    path.write_bytes(tiff_bytes(header))
    assert path.stat().st_size == 592
    with pytest.raises(ScenewatchError, match=r"declares 65 x 18216 px x 5 band\(s\) of uint8 \(5.6 MiB\) in a "
                                              r"file of 592 bytes, 10,000.3 times its size \(limit 10,000\)"):
        open_scene(path)
    check_scene(path)
