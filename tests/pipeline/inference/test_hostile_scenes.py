"""Hostile scene files (issue 15): what a scene file says must not decide what GDAL reads, where it connects,
how long it blocks, how much memory it takes, or whether its polygons land on the map.

Every case here failed on the code before the defences (GDAL opened whatever a file said it was). The
network canary is a real listener on 127.0.0.1 started by the test; a case passes only if no connection
reached it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.transform import from_origin

from pipeline.errors import InvalidSceneError, SceneOpenError, ScenewatchError
from pipeline.inference.read import (
    DEFAULT_MAX_BLOCK_BYTES,
    DEFAULT_MAX_COMPRESSION_RATIO,
    open_raster,
    open_scene,
    read_window,
)
from tests.conftest import SAMPLE_DIR, SHARED_DATA
from tiles.grid import PixelWindow

# --------------------------------------------------------------------------------------------- fixtures


@dataclass
class Canary:
    """A listener on 127.0.0.1 that records every connection made to it."""

    port: int
    connections: list[bytes] = field(default_factory=list)

    def url(self, name: str = "x.tif") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch) -> Iterator[Canary]:
    """Answers 404 at once, so that code that does connect fails fast instead of waiting; and GDAL gives up
    after 2 s, so that a connection made while GDAL holds the GIL (the thread cannot answer then) ends the
    call too. Connections still waiting in the backlog at the end are counted as well."""
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "2")
    monkeypatch.setenv("GDAL_HTTP_CONNECTTIMEOUT", "2")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.1)
    found = Canary(server.getsockname()[1])
    stop = threading.Event()

    def record(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(1.0)
            try:
                found.connections.append(conn.recv(4096))
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                found.connections.append(b"")

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            record(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join(5)
        server.setblocking(False)
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                break
            found.connections.append(b"(backlog)")
            conn.close()
        server.close()


def write_tif(path: Path, *, shape: tuple[int, int, int] = (1, 64, 64), dtype: str = "uint8", crs: str | None =
              "EPSG:32618", transform: object = "default", **profile: object) -> Path:
    count, height, width = shape
    options: dict[str, object] = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, **profile)
    if crs is not None:
        options["crs"] = crs
    if transform == "default":
        options["transform"] = from_origin(500000.0, 4000000.0, 10.0, 10.0)
    elif transform is not None:
        options["transform"] = transform
    with rasterio.open(path, "w", **options) as dst:
        if not profile.get("sparse_ok"):
            dst.write((np.arange(height * width).reshape(height, width) % 200).astype(dtype)[None].repeat(count, 0))
    return path


def vrt_xml(source: str, size: int = 64) -> str:
    return (f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>EPSG:32618</SRS>'
            f'<GeoTransform>500000, 10, 0, 4000000, 0, -10</GeoTransform>'
            f'<VRTRasterBand dataType="Byte" band="1"><SimpleSource><SourceFilename>{source}</SourceFilename>'
            f'<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>')


# ----------------------------------------------------------------- GDAL opens only what a scene may be


@pytest.mark.timeout(30)
def test_a_tif_that_is_vrt_xml_pointing_at_a_url_is_refused_without_any_request(tmp_path: Path,
                                                                                 canary: Canary) -> None:
    scene = tmp_path / "scene.tif"
    scene.write_text(vrt_xml(f"/vsicurl/{canary.url()}"))
    with pytest.raises(SceneOpenError, match=r"^scene scene.tif: is a GDAL VRT .*`allow_vrt`$"):
        open_scene(scene)
    assert canary.connections == []


@pytest.mark.timeout(30)
def test_inline_vrt_xml_given_as_the_scene_is_refused_without_any_request(canary: Canary) -> None:
    with pytest.raises(SceneOpenError, match=r"is GDAL XML, not a file path"):
        open_scene(vrt_xml(f"/vsicurl/{canary.url()}"))
    assert canary.connections == []


@pytest.mark.timeout(30)
def test_a_vsicurl_path_is_refused_without_any_request(canary: Canary) -> None:
    with pytest.raises(SceneOpenError, match=r"GDAL virtual file system paths \(vsicurl/...\) are not accepted"):
        open_scene(f"/vsicurl/{canary.url()}")
    assert canary.connections == []


@pytest.mark.timeout(30)
def test_an_explicit_url_is_still_read_remotely(canary: Canary) -> None:
    """STAC hrefs keep working: a URL the user gives as the scene is fetched (here: a 404, one line)."""
    with pytest.raises(SceneOpenError, match=r"^scene remote.tif: not a readable raster"):
        open_scene(canary.url("remote.tif"))
    assert canary.connections and canary.connections[0].split(b" ")[1] == b"/remote.tif"


@pytest.mark.timeout(30)
def test_an_overview_sidecar_that_is_a_vrt_is_never_opened(tmp_path: Path, canary: Canary) -> None:
    """GDAL opens ``x.tif.ovr`` with any driver it has, VRT included, as soon as overviews are asked for."""
    scene = write_tif(tmp_path / "scene.tif")
    Path(f"{scene}.ovr").write_text(vrt_xml(f"/vsicurl/{canary.url()}", size=32))
    open_scene(scene)
    with open_raster(scene) as src:
        assert src.overviews(1) == []
    assert canary.connections == []


def test_a_vrt_tif_pointing_at_another_local_raster_is_refused_unless_allowed(tmp_path: Path) -> None:
    other = write_tif(tmp_path / "private.tif")
    scene = tmp_path / "scene.tif"
    scene.write_text(vrt_xml(str(other)))
    with pytest.raises(SceneOpenError, match="VRT inputs are read only when asked"):
        open_scene(scene)
    meta = open_scene(scene, allow_vrt=True)  # the caller asked for it: read, and read as a VRT every time
    assert meta.driver == "VRT"
    data, valid = read_window(meta, PixelWindow(0, 0, 8, 8), [1])
    assert valid.all() and data[0, 0, 1] == 1


def test_a_scene_swapped_for_a_vrt_after_it_was_opened_is_not_read_as_one(tmp_path: Path) -> None:
    scene = write_tif(tmp_path / "scene.tif")
    meta = open_scene(scene)
    other = write_tif(tmp_path / "private.tif")
    scene.unlink()
    scene.write_text(vrt_xml(str(other)))
    with pytest.raises(SceneOpenError, match="is a GDAL VRT"):
        read_window(meta, PixelWindow(0, 0, 8, 8), [1])


@pytest.mark.parametrize("path, why", [
    ("/vsizip/archive.zip/scene.tif", "GDAL virtual file system"),
    ("/vsimem/scene.tif", "GDAL virtual file system"),
    ("GTIFF_DIR:1:scene.tif", "GTIFF_DIR: is GDAL driver syntax"),
    ('NETCDF:"scene.nc":band', "NETCDF: is GDAL driver syntax"),
    ("zip:///tmp/archive.zip!/scene.tif", "zip:// is not a supported URL scheme"),
    ("file:///etc/passwd", "file:// is not a supported URL scheme"),
    ("scene\0.tif", "NUL character"),
])
def test_gdal_filename_syntax_is_refused_where_a_path_is_expected(tmp_path: Path, path: str, why: str) -> None:
    write_tif(tmp_path / "scene.tif")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # so that the relative forms would name a real file
    try:
        with pytest.raises(SceneOpenError, match=why) as err:
            open_scene(path)
    finally:
        os.chdir(cwd)
    assert len(str(err.value).splitlines()) == 1


def test_a_file_whose_name_has_a_colon_is_read_with_a_relative_prefix(tmp_path: Path) -> None:
    write_tif(tmp_path / "site:2020.tif")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(SceneOpenError, match=r"\./site:2020.tif for a file whose name has a colon"):
            open_scene("site:2020.tif")
        assert open_scene("./site:2020.tif").width == 64
    finally:
        os.chdir(cwd)


def test_another_format_is_refused_with_how_to_convert_it(tmp_path: Path) -> None:
    png = tmp_path / "scene.png"
    with rasterio.open(png, "w", driver="PNG", width=8, height=8, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(SceneOpenError, match=r"^scene scene.png: not a readable raster .*gdal_translate -of COG"):
        open_scene(png)


# ---------------------------------------------------------------------- only regular files, never a hang


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "directory", "device"])
def test_only_regular_files_are_scenes(tmp_path: Path, kind: str) -> None:
    scene = tmp_path / "scene.tif"
    if kind == "fifo":
        os.mkfifo(scene)
    elif kind == "link to /dev/zero":
        scene.symlink_to("/dev/zero")
    elif kind == "directory":
        scene.mkdir()
    else:
        scene = Path("/dev/null")
    with pytest.raises(SceneOpenError, match=r": not a regular file but a (FIFO|character device|directory)"):
        open_scene(scene)


@pytest.mark.timeout(20)
def test_a_scene_swapped_for_a_fifo_after_it_was_opened_does_not_hang_a_read(tmp_path: Path) -> None:
    scene = write_tif(tmp_path / "scene.tif")
    meta = open_scene(scene)
    scene.unlink()
    os.mkfifo(scene)
    with pytest.raises(SceneOpenError, match="not a regular file but a FIFO"):
        read_window(meta, PixelWindow(0, 0, 8, 8), [1])


# ------------------------------------------------------------------- declared size against file size


def test_a_small_file_declaring_a_huge_raster_is_refused_before_any_block_is_read(tmp_path: Path) -> None:
    """A sparse GeoTIFF: 20000 x 20000 x 4 bytes declared (1.5 GiB) in a file of about 80 KB."""
    scene = write_tif(tmp_path / "huge.tif", shape=(4, 20000, 20000), tiled=True, blockxsize=512,
                      blockysize=512, compress="deflate", sparse_ok=True)
    assert scene.stat().st_size < 200_000
    with pytest.raises(InvalidSceneError, match=r"^scene huge.tif: declares 20000 x 20000 px x 4 band\(s\) of "
                                                r"uint8 .* times its size .*raise `max_ratio`"):
        open_scene(scene)
    assert open_scene(scene, max_ratio=None).width == 20000  # the limit is the user's to raise


@pytest.mark.slow
def test_one_huge_block_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """One 10240 x 10240 x 3 block (300 MiB) in a file of a few hundred bytes: decoding it to check the file
    is what took 2.7 GB before."""
    scene = write_tif(tmp_path / "block.tif", shape=(3, 10240, 10240), tiled=True, blockxsize=10240,
                      blockysize=10240, compress="deflate", sparse_ok=True)
    with pytest.raises(InvalidSceneError, match=r"^scene block.tif: one block of 10240 x 10240 px x 3 band\(s\) "
                                                r"of uint8 is 300 MiB, over the limit of 256 MiB;.*`max_block_bytes`"):
        open_scene(scene)


def _real_geotiffs() -> list[Path]:
    found = sorted(SAMPLE_DIR.glob("*.tif"))
    if SHARED_DATA.exists():
        found += sorted(SHARED_DATA.rglob("*.tif"))
    return found


@pytest.mark.parametrize("path", _real_geotiffs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_geotiff_passes_the_default_limits(path: Path) -> None:
    """The defaults were chosen on these files (max ratio seen: 37, a mostly-empty burn-scar mask; max block
    1 MiB); see DEFAULT_MAX_COMPRESSION_RATIO."""
    with rasterio.open(path) as src:
        declared = src.width * src.height * src.count * np.dtype(src.dtypes[0]).itemsize
    assert declared / path.stat().st_size < DEFAULT_MAX_COMPRESSION_RATIO / 100
    meta = open_scene(path)
    assert meta.block_height * meta.block_width * meta.count < DEFAULT_MAX_BLOCK_BYTES


# ---------------------------------------------------------------------------------- georeferencing


def test_a_crs_without_a_geotransform_is_refused_with_how_to_fix_it(tmp_path: Path) -> None:
    scene = write_tif(tmp_path / "scene.tif", transform=None)
    with rasterio.open(scene) as src:
        assert src.crs is not None and src.transform.is_identity
    with pytest.raises(InvalidSceneError, match=r"^scene scene.tif: has a CRS but no geotransform.*"
                                                r"gdal_edit.py -a_ullr <ulx> <uly> <lrx> <lry> scene.tif\)$"):
        open_scene(scene)


def test_ground_control_points_without_a_geotransform_are_refused(tmp_path: Path) -> None:
    scene = write_tif(tmp_path / "scene.tif", transform=None, crs=None)
    with rasterio.open(scene, "r+") as dst:
        dst.gcps = ([GroundControlPoint(0, 0, 500000, 4000000), GroundControlPoint(64, 64, 500640, 3999360),
                     GroundControlPoint(0, 64, 500000, 3999360)], rasterio.crs.CRS.from_epsg(32618))
    with pytest.raises(InvalidSceneError, match=r"has ground control points but no geotransform.*gdalwarp"):
        open_scene(scene, assume_crs="EPSG:32618")


def test_no_crs_and_no_geotransform_still_takes_an_assumed_crs(tmp_path: Path) -> None:
    scene = write_tif(tmp_path / "scene.tif", transform=None, crs=None)
    with pytest.raises(InvalidSceneError, match="no CRS"):
        open_scene(scene)
    assert open_scene(scene, assume_crs="EPSG:32618").crs.to_epsg() == 32618


# ------------------------------------------------------------------------------ only ScenewatchError


def test_refusals_are_one_line_scenewatch_errors_chained_where_gdal_spoke(tmp_path: Path) -> None:
    notes = tmp_path / "notes.tif"
    notes.write_text("not a raster")
    with pytest.raises(ScenewatchError) as err:
        open_scene(notes)
    assert err.value.__cause__ is not None and len(str(err.value).splitlines()) == 1


# ------------------------------------------- every stage that opens an input raster opens it the same way


def _grid_of(path: Path) -> object:
    from pipeline.change.align import grid_of

    return grid_of(path, "scene")


def _read_aligned(path: Path) -> object:
    from rasterio.crs import CRS

    from pipeline.change.align import GridSpec, read_aligned

    grid = GridSpec(CRS.from_epsg(32618), from_origin(500000.0, 4000000.0, 10.0, 10.0), 64, 64)
    return read_aligned(path, grid, grid.bounds)


def _scene_date(path: Path) -> object:
    from pipeline.change.dates import scene_date

    return scene_date(path)


def _dated_classes(path: Path) -> object:
    from pipeline.change.rasters import dated_classes

    return dated_classes(path, None)


def _labels(path: Path) -> object:
    from pipeline.training.labels import open_labels

    return open_labels(path, open_scene(write_tif(path.with_name("real.tif"))), ("a", "b"))


def _class_window(path: Path) -> object:
    from pipeline.vectors.vectorize import read_class_window

    return read_class_window(str(path), PixelWindow(0, 0, 8, 8))


def _proba_window(path: Path) -> object:
    from pipeline.vectors.vectorize import read_proba_window

    return read_proba_window(str(path), PixelWindow(0, 0, 8, 8))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reader", [_grid_of, _read_aligned, _scene_date, _dated_classes, _labels, _class_window,
                                    _proba_window], ids=lambda f: f.__name__.strip("_"))
def test_every_reader_of_an_input_raster_refuses_a_vrt_without_any_request(tmp_path: Path, canary: Canary,
                                                                           reader: Callable[[Path], object]) -> None:
    """Change grids and dates, label rasters, class and probability rasters: all given by the user."""
    scene = tmp_path / "2020-08-31.tif"
    scene.write_text(vrt_xml(f"/vsicurl/{canary.url()}"))
    if reader is _scene_date:  # the date comes from the name; the scene is refused when it is opened
        assert str(reader(scene)) == "2020-08-31"
    else:
        with pytest.raises(SceneOpenError, match="is a GDAL VRT"):
            reader(scene)
    assert canary.connections == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize("reader", [_grid_of, _read_aligned, _labels, _class_window],
                         ids=lambda f: f.__name__.strip("_"))
def test_every_reader_of_an_input_raster_refuses_a_fifo_at_once(tmp_path: Path,
                                                                 reader: Callable[[Path], object]) -> None:
    scene = tmp_path / "scene.tif"
    os.mkfifo(scene)
    with pytest.raises(SceneOpenError, match="not a regular file but a FIFO"):
        reader(scene)


# ------------------------------------------------------------------------------ two dates, two grids


def test_grid_offset_measures_a_sub_pixel_shift_and_a_resolution_ratio() -> None:
    from rasterio.crs import CRS

    from pipeline.change.align import GridSpec, grid_offset

    crs = CRS.from_epsg(32618)
    grid = GridSpec(crs, from_origin(500000.0, 4000000.0, 10.0, 10.0), 100, 100)
    shifted = GridSpec(crs, from_origin(500005.0, 4000000.0 - 30.0 - 2.5, 10.0, 10.0), 100, 100)
    offset = grid_offset(grid, shifted)
    assert offset is not None and (offset.cols, offset.rows) == (0.5, 0.25)  # whole pixels are no offset
    assert offset.misaligned() and offset.pixels == 0.5
    whole = grid_offset(grid, GridSpec(crs, from_origin(500030.0, 3999990.0, 10.0, 10.0), 100, 100))
    assert whole is not None and not whole.misaligned()
    coarse = grid_offset(grid, GridSpec(crs, from_origin(500000.0, 4000000.0, 20.0, 20.0), 50, 50))
    assert coarse is not None and (coarse.x_scale, coarse.y_scale) == (2.0, 2.0) and coarse.misaligned()
    assert grid_offset(grid, GridSpec(CRS.from_epsg(4326), shifted.transform, 100, 100)) is None


def test_two_dates_half_a_pixel_apart_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Half a pixel made 6 % of a scene "change" against itself, and nothing said so."""
    from workflows.change import _check_overlap, common_grid

    before = write_tif(tmp_path / "before.tif")
    after = write_tif(tmp_path / "after.tif", transform=from_origin(500005.0, 4000000.0, 10.0, 10.0))
    grid = common_grid(None, before)
    with caplog.at_level("WARNING", logger="scenewatch"):
        _check_overlap(grid, [before, after])
    (record,) = caplog.records
    assert record.getMessage().startswith("scene after.tif: its pixels are 0.00 px (rows) and 0.50 px (columns) "
                                          "off the common grid")


# ------------------------------------------------------------------------------------ model output


class _BrokenModel:
    """Probabilities 0.5 everywhere except ``value`` (NaN, inf) on the pixels whose band 1 is -1."""

    def __init__(self, value: float = np.nan) -> None:
        from pipeline.models.contract import ModelInfo

        self.info = ModelInfo("broken-net", "1", ("red",), ("background", "tree"), tile_size=32, halo=4)
        self.precision = "fp16"
        self.value = value

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = np.full((batch.shape[0], 2, *batch.shape[2:]), 0.5, np.float32)
        return np.where((batch[:, 0] == -1)[:, None], np.float32(self.value), out)


def _tiles(data: np.ndarray, valid: np.ndarray) -> tuple[object, list[object]]:
    from pipeline.inference.predict import TileInput
    from tiles.grid import TileGrid

    grid = TileGrid(data.shape[1], data.shape[2], 32, 4)
    inputs = []
    for t in grid:
        r, c = t.read_window.relative_to(grid.bounds)
        inputs.append(TileInput(t, data[:, r, c], valid[r, c]))
    return grid, inputs


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_model_output_on_valid_pixels_is_a_model_error_naming_the_tile(value: float) -> None:
    """A NaN model gave every pixel "background" and probability 0, and the run succeeded."""
    from pipeline.errors import ModelError
    from pipeline.inference.predict import predict_array, predict_tiles

    data = np.zeros((1, 80, 100), np.float32)
    data[0, 50, 70] = -1  # tile (row 1, col 2) of 32 px tiles
    valid = np.ones((80, 100), bool)
    model = _BrokenModel(value)
    grid, inputs = _tiles(data, valid)
    with pytest.raises(ModelError, match=r"^model broken-net: returned NaN or infinite probabilities at precision "
                                         r"fp16 for 1 valid pixel\(s\) of tile \(row 1, col 2\);.*`precision`"):
        predict_tiles(model, inputs, grid, 4, "cosine", "float32", max_batch=1)
    with pytest.raises(ModelError, match=r"for 1 valid pixel\(s\) of the array"):
        predict_array(model, data, valid)


def test_non_finite_model_output_on_invalid_pixels_only_is_fine() -> None:
    from pipeline.inference.predict import predict_array, predict_tiles

    data = np.zeros((1, 80, 100), np.float32)
    data[0, 10:20, 10:20] = -1
    valid = data[0] != -1  # NaN where the scene has no data: never used
    model = _BrokenModel()
    grid, inputs = _tiles(data, valid)
    assert all(c is not None for c in predict_tiles(model, inputs, grid, 4, "cosine", "float32"))
    probs = predict_array(model, data, valid)
    assert np.isnan(probs[:, ~valid]).all() and (probs[:, valid] == 0.5).all()
