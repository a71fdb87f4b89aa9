"""COGs assembled from pieces compressed apart: byte for byte the file the single writer (CogWriter, GDAL's
COG driver) makes from the same pixels, whatever the cut into pieces; valid; a failure leaves nothing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from pipeline.errors import OutputError
from pipeline.inference.assemble import BlockRef, CogSpec, assemble_cog, encode_blocks, tiff_blocks, write_part
from pipeline.inference.overviews import reduce2
from pipeline.inference.raster import CogWriter
from pipeline.inference.read import SceneMeta
from tiles.grid import PixelWindow


def _spec(height: int, width: int, count: int, dtype: str, **kw: object) -> CogSpec:
    return CogSpec(crs=CRS.from_epsg(32633), transform=from_origin(500000.0, 4000000.0, 10.0, 10.0), height=height,
                   width=width, count=count, dtype=dtype, **kw)  # type: ignore[arg-type]


def _reference(path: Path, spec: CogSpec, data: np.ndarray) -> Path:
    """The single-process writer: CogWriter, tile-sized windows, its own overviews, GDAL's COG copy."""
    meta = SceneMeta(path="mem", crs=spec.crs, transform=spec.transform, height=spec.height, width=spec.width,
                     count=1, dtype="uint8", nodata=None, block_height=256, block_width=256)
    with CogWriter(path, meta, count=spec.count, dtype=spec.dtype, nodata=spec.nodata, resampling=spec.resampling,
                   descriptions=list(spec.descriptions), colormap=spec.colormap,
                   scales=list(spec.scales) if spec.scales else None, tags=spec.tags) as writer:
        for row in range(0, spec.height, 256):
            for col in range(0, spec.width, 256):
                window = PixelWindow(row, col, min(256, spec.height - row), min(256, spec.width - col))
                writer.write(window, data[:, row:window.row_end, col:window.col_end])
        writer.finish()
    return path


def _pieces(folder: Path, spec: CogSpec, data: np.ndarray, piece: tuple[int, int]) -> dict:
    """Every level cut into ``piece``-sized rectangles, each encoded and stored in its own part file (as
    workers do), the levels made by halving the level above whole."""
    refs: dict[tuple[int, int, int], BlockRef] = {}
    level_data = data
    b = spec.block_size
    for level in range(len(spec.factors) + 1):
        rows, cols = level_data.shape[1:]
        for r0 in range(0, rows, piece[0]):
            for c0 in range(0, cols, piece[1]):
                part = level_data[:, r0:r0 + piece[0], c0:c0 + piece[1]]
                per_row = math.ceil(part.shape[2] / b)
                blocks = {(level, r0 // b + i // per_row, c0 // b + i % per_row): data
                          for i, data in enumerate(encode_blocks(spec, np.ascontiguousarray(part)))}
                refs |= write_part(folder / f"L{level}-{r0}-{c0}.part", blocks)
        level_data = reduce2(level_data, spec.resampling, spec.nodata)
    return refs


@pytest.mark.parametrize(("shape", "piece"), [((1300, 1100), (512, 1024)), ((700, 2100), (1024, 512)),
                                               ((300, 500), (512, 512))])
def test_classes_are_the_single_writers_file_byte_for_byte(tmp_path: Path, shape, piece) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 3, (1, *shape), dtype=np.uint8)
    data[:, : shape[0] // 3, : shape[1] // 4] = 255
    spec = _spec(*shape, 1, "uint8", nodata=255, resampling="mode", descriptions=("class",),
                 colormap={0: (0, 0, 0, 255), 1: (0, 200, 0, 255), 2: (0, 0, 200, 255), 255: (0, 0, 0, 0)},
                 tags={"SCENEWATCH_CLASSES": "a,b,c"})
    parts = tmp_path / "parts"
    parts.mkdir()
    out = assemble_cog(spec, _pieces(parts, spec, data, piece), tmp_path / "out.tif")
    reference = _reference(tmp_path / "ref.tif", spec, data)
    assert out.read_bytes() == reference.read_bytes()
    assert cog_validate(str(out), quiet=True)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "parts", "ref.tif"]  # no temporary left


def test_float_probabilities_with_nan_nodata_are_the_single_writers_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    data = rng.random((2, 1100, 900), dtype=np.float32)
    data[:, 100:300, 50:400] = np.nan
    spec = _spec(1100, 900, 2, "float32", nodata=float("nan"), resampling="average", descriptions=("p(a)", "p(b)"))
    out = assemble_cog(spec, _pieces(tmp_path, spec, data, (512, 512)), tmp_path / "out.tif")
    assert out.read_bytes() == _reference(tmp_path / "ref.tif", spec, data).read_bytes()
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), data)
        assert len(src.overviews(1)) == len(spec.factors)


def test_uint8_probabilities_with_scales_read_back_with_gdal(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(0, 255, (3, 800, 1500), dtype=np.uint8)
    spec = _spec(800, 1500, 3, "uint8", nodata=255, resampling="average", scales=(1 / 254,) * 3)
    out = assemble_cog(spec, _pieces(tmp_path, spec, data, (512, 1024)), tmp_path / "out.tif")
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), data)
        assert src.scales == spec.scales and src.nodata == 255
        for level, factor in enumerate(spec.factors):
            with rasterio.open(out, overview_level=level) as ovr:
                expected = data
                for _ in range(factor.bit_length() - 1):
                    expected = reduce2(expected, "average", 255)
                np.testing.assert_array_equal(ovr.read(), expected)
    assert cog_validate(str(out), quiet=True)[0]


def test_encoded_blocks_are_the_blocks_gdal_writes(tmp_path: Path) -> None:
    data = np.random.default_rng(4).integers(0, 9, (2, 600, 700), dtype=np.uint8)
    spec = _spec(600, 700, 2, "uint8", nodata=255)
    blocks = encode_blocks(spec, data)
    assert len(blocks) == 4
    with rasterio.open(tmp_path / "g.tif", "w", driver="GTiff", height=600, width=700, count=2, dtype="uint8",
                       tiled=True, blockxsize=512, blockysize=512, compress="deflate", zlevel=1) as dst:
        dst.write(data)
    assert tiff_blocks((tmp_path / "g.tif").read_bytes()) == blocks


def test_a_missing_or_cut_part_fails_and_publishes_nothing(tmp_path: Path) -> None:
    data = np.zeros((1, 600, 600), dtype=np.uint8)
    spec = _spec(600, 600, 1, "uint8", nodata=255)
    refs = _pieces(tmp_path, spec, data, (512, 512))
    with pytest.raises(ValueError, match="blocks missing"):
        assemble_cog(spec, {k: v for k, v in refs.items() if k != (0, 1, 1)}, tmp_path / "out.tif")
    part, offset, length = refs[0, 1, 1]
    Path(part).write_bytes(Path(part).read_bytes()[: offset + length // 2])
    with pytest.raises(OutputError, match="cut short"):
        assemble_cog(spec, refs, tmp_path / "out.tif")
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_averages_do_not_depend_on_the_cut(dtype: str) -> None:
    """A cell's average rounds its halves up whether or not its window holds nodata elsewhere, so pieces
    halved apart agree with the raster halved whole (with halves to even they differed by one)."""
    data = np.tile(np.array([[[1, 2, 5, 5, 9, 9], [2, 2, 5, 6, 9, 9]]], dtype=dtype), (1, 2, 2))
    data[0, 2, 4:8] = [2, 2, 2, 2]
    data[0, 3, 4:8] = [3, 3, 3, 3]  # 2.5: rounds up to 3 (halves to even gave 2 where a window held nodata)
    data[0, 0, 10:12] = 255 if dtype == "uint8" else 65535  # nodata in the right half only
    nodata = 255 if dtype == "uint8" else 65535
    whole = reduce2(data, "average", nodata)
    halves = np.concatenate([reduce2(data[:, :, :6], "average", nodata), reduce2(data[:, :, 6:], "average", nodata)],
                            axis=2)
    np.testing.assert_array_equal(whole, halves)
    assert whole[0, 1, 2] == 3
