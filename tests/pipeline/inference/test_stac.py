"""STAC items as scenes (pipeline.inference.stac through read.open_scene/read_window), on real data.

The Rondonia Sentinel-2 item of tests/stac_items.py has B02/B8A at 10 m, B11 and SCL at 20 m, and
reflectance stored as ``DN = reflectance x 1e4 + 1000`` with ``raster:bands`` scale 0.0001 / offset -0.1.
Its reference is the same scene stacked at 10 m by ``rasterio.warp.reproject`` (independent of the reader).
Tolerances: bands on the grid, nearest-resampled masks and averages of identical pixels are exact (float32
rounding of the scale: 1e-6); a bilinear-resampled band is within half a DN (5e-5 in reflectance), because
GDAL's resampled read rounds to the asset's integer type where the reference warps in float32.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import calculate_default_transform, reproject

from pipeline.change.dates import scene_date
from pipeline.config import PredictConfig
from pipeline.errors import BandMapError, SceneOpenError, SceneReadError
from pipeline.inference.read import open_scene, parse_band_map, read_window, resolve_bands
from pipeline.inference.stac import SourceOptions, cloud_settings, is_stac_item, parse_resampling
from tests.conftest import shared, textured
from tests.stac_items import RONDONIA_DIR, BuiltItem, naip_items, rondonia_item, upload_item
from tiles.grid import PixelWindow

HALF_DN = 0.5e-4 + 1e-6
WINDOWS = (PixelWindow(0, 0, 1000, 1000), PixelWindow(101, 333, 200, 301), PixelWindow(877, 901, 123, 99))


@pytest.fixture(scope="module")
def rondonia(tmp_path_factory: pytest.TempPathFactory) -> BuiltItem:
    return rondonia_item(tmp_path_factory.mktemp("rondonia"))


def _original(band: str) -> np.ndarray:
    with rasterio.open(shared(RONDONIA_DIR) / f"SENTINEL-2_MSI_20LLQ_{band}_2021-09-22.tif") as src:
        return src.read(1).astype(np.float64) * 1e-4


def _reference(built: BuiltItem, window: PixelWindow) -> np.ndarray:
    with rasterio.open(built.reference) as src:
        return src.read(window=((window.row_off, window.row_end), (window.col_off, window.col_end)))


def _all_bands(meta) -> tuple[int, ...]:
    return resolve_bands(meta, parse_band_map(None, meta), ("blue", "nir08", "swir16", "scl"))


def test_an_item_reads_as_its_stacked_reference_on_the_finest_grid(rondonia: BuiltItem) -> None:
    meta = open_scene(rondonia.item)
    assert (meta.width, meta.height, meta.transform.a) == (1000, 1000, 10.0)
    assert [(s.name, s.key, s.resampling) for s in meta.sources] == [
        ("blue", "B02", "nearest"), ("nir08", "B8A", "nearest"), ("swir16", "B11", "bilinear"),
        ("scl", "SCL", "nearest")]
    indexes = _all_bands(meta)
    for window in WINDOWS:
        data, valid = read_window(meta, window, indexes)
        reference = _reference(rondonia, window)
        assert valid.all()
        np.testing.assert_allclose(data[[0, 1, 3]], reference[[0, 1, 3]], rtol=0, atol=1e-6)
        np.testing.assert_allclose(data[2], reference[2], rtol=0, atol=HALF_DN)
    # scale and offset applied: the item's DN x 0.0001 - 0.1 is the original reflectance
    data, _ = read_window(meta, WINDOWS[0], indexes)
    np.testing.assert_allclose(data[0, ::2, ::2], _original("B02"), atol=1e-6)


def test_resolution_20m_averages_the_10m_bands_and_reads_20m_bands_as_they_are(rondonia: BuiltItem) -> None:
    meta = open_scene(rondonia.item, source=SourceOptions(resolution=20.0))
    assert (meta.width, meta.height) == (500, 500)
    assert {s.name: s.resampling for s in meta.sources} == {"blue": "average", "nir08": "average",
                                                            "swir16": "nearest", "scl": "nearest"}
    data, valid = read_window(meta, PixelWindow(0, 0, 500, 500), _all_bands(meta))
    np.testing.assert_allclose(data[0], _original("B02"), atol=1e-6)  # the mean of four equal 10 m pixels
    np.testing.assert_allclose(data[1], _original("B8A"), atol=1e-6)
    np.testing.assert_allclose(data[2], _original("B11"), atol=1e-6)


def test_resampling_is_chosen_per_band_and_names_only_bands_of_the_item(rondonia: BuiltItem) -> None:
    meta = open_scene(rondonia.item, source=SourceOptions(resampling=parse_resampling("B11=nearest")))
    assert meta.sources[2].resampling == "nearest"  # by asset key as well as by common name
    data, _ = read_window(meta, PixelWindow(0, 0, 1000, 1000), _all_bands(meta)[2:3])
    np.testing.assert_allclose(data[0], np.repeat(np.repeat(_original("B11"), 2, 0), 2, 1), atol=1e-6)
    with pytest.raises(BandMapError, match="`resampling` names band.s. red that the item does not have"):
        open_scene(rondonia.item, source=SourceOptions(resampling=(("red", "nearest"),)))
    with pytest.raises(ValueError, match="unknown method"):
        parse_resampling("swir16=lanczos3")
    assert PredictConfig(resampling="swir16=average, scl=nearest").resampling == (("scl", "nearest"),
                                                                                    ("swir16", "average"))


def test_bands_are_picked_by_name(rondonia: BuiltItem) -> None:
    meta = open_scene(rondonia.item)
    assert resolve_bands(meta, parse_band_map("nir=nir08", meta), ("nir", "swir16")) == (2, 3)
    assert resolve_bands(meta, parse_band_map("nir=B8A", meta), ("nir", "swir16")) == (2, 3)  # asset key
    # a preset names bands for items by name, whatever its index order
    assert resolve_bands(meta, parse_band_map("sentinel2-l2a", meta), ("swir16", "blue", "scl")) == (3, 1, 4)
    with pytest.raises(BandMapError, match=r"needs band\(s\) nir but the STAC item has blue, nir08, swir16, scl; "
                                           r"map them by name"):
        resolve_bands(meta, parse_band_map(None, meta), ("nir", "swir16"))
    with pytest.raises(BandMapError, match="names nir=b99 but the scene has no band of that name"):
        resolve_bands(meta, parse_band_map("nir=B99", meta), ("nir",))


def test_an_item_of_an_item_collection_is_named_by_its_id(rondonia: BuiltItem, tmp_path: Path) -> None:
    item = json.loads(rondonia.item.read_text())
    for asset in item["assets"].values():
        asset["href"] = str(rondonia.item.parent / asset["href"])
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    meta = open_scene(f"{collection}#{rondonia.id}")
    assert meta.tags["STAC_ITEM"] == rondonia.id and meta.width == 1000
    with pytest.raises(SceneOpenError, match="has no item 'nope'"):
        open_scene(f"{collection}#nope")


def test_an_asset_that_is_a_vrt_is_refused(rondonia: BuiltItem, tmp_path: Path) -> None:
    """A VRT names files and URLs of its author's choosing: an item's asset is read as GeoTIFF only."""
    vrt = tmp_path / "B02.tif"
    vrt.write_text('<VRTDataset rasterXSize="1000" rasterYSize="1000"><VRTRasterBand dataType="UInt16" band="1">'
                   '<SimpleSource><SourceFilename>/vsicurl/http://192.0.2.1/x.tif</SourceFilename></SimpleSource>'
                   '</VRTRasterBand></VRTDataset>')
    item = json.loads(rondonia.item.read_text())
    for key, asset in item["assets"].items():
        asset["href"] = str(vrt if key == "B02" else rondonia.item.parent / asset["href"])
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item))
    with pytest.raises(SceneOpenError, match="item.json: asset B02 .*is a GDAL VRT"):
        open_scene(path)


def test_cloud_settings_bound_retries_connections_and_name_the_endpoint() -> None:
    settings = dict(cloud_settings(SourceOptions(requester_pays=True, s3_endpoint="http://127.0.0.1:9000")))
    assert settings["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert int(settings["GDAL_HTTP_MAX_RETRY"]) > 0 and float(settings["GDAL_HTTP_RETRY_DELAY"]) > 0
    assert int(settings["GDAL_MAX_CONNECTIONS"]) <= 16 and int(settings["GDAL_HTTP_TIMEOUT"]) > 0
    assert (settings["AWS_S3_ENDPOINT"], settings["AWS_HTTPS"], settings["AWS_VIRTUAL_HOSTING"],
            settings["AWS_REQUEST_PAYER"]) == ("127.0.0.1:9000", "NO", "FALSE", "requester")
    assert not any("SECRET" in k or "KEY_ID" in k for k in settings)  # credentials only from the environment
    assert is_stac_item("s3://b/items/x.json") and is_stac_item("https://api/collections/s2/items/S2B_1")
    assert not is_stac_item("s3://b/x.tif")


def test_an_item_in_s3_reads_as_the_local_one(rondonia: BuiltItem, s3) -> None:
    url, local_copy = upload_item(rondonia, s3)
    local = open_scene(rondonia.item)
    window = PixelWindow(240, 480, 300, 260)
    expected, _ = read_window(local, window, _all_bands(local))
    relative = s3.url(f"{rondonia.id}/relative.json")  # the item as written, its hrefs relative to it
    s3.client.upload_file(str(rondonia.item), s3.bucket, f"{rondonia.id}/relative.json")
    for scene in (url, local_copy, relative):  # in the bucket, a local item whose hrefs are s3:// URLs
        meta = open_scene(scene)
        assert all(s.href.startswith(f"s3://{s.href.split('/')[2]}/") for s in meta.sources)
        data, valid = read_window(meta, window, _all_bands(meta))
        assert valid.all()
        np.testing.assert_array_equal(data, expected)


def test_a_missing_asset_object_fails_with_one_line_naming_the_item_and_asset(rondonia: BuiltItem, s3) -> None:
    url, _ = upload_item(rondonia, s3, prefix="gone")
    s3.client.delete_object(Bucket=s3.bucket, Key="gone/B11.tif")
    meta = open_scene(url)  # the grid's asset (B02) is there; B11 is read by the tiles
    with pytest.raises(SceneReadError) as caught:
        read_window(meta, PixelWindow(0, 0, 64, 64), _all_bands(meta))
    message = str(caught.value)
    assert message.startswith(f"scene {rondonia.id}.json: asset B11 ({s3.url('gone/B11.tif')}) cannot be read")
    assert "\n" not in message
    url, _ = upload_item(rondonia, s3, prefix="gone-too")  # GDAL caches what it found at a URL: a new one
    s3.client.delete_object(Bucket=s3.bucket, Key="gone-too/B02.tif")
    with pytest.raises(SceneOpenError, match=rf"^scene {rondonia.id}.json: asset B02 \(s3://[^)]*/gone-too/B02.tif\): "
                                             r"not a readable raster \(.*does not exist"):
        open_scene(url)


class _Forbidding(http.server.SimpleHTTPRequestHandler):
    """Serves a folder over HTTP on 127.0.0.1, with HTTP range requests (GDAL's /vsicurl/ needs them), and
    answers 403 for B11.tif as a bucket policy or an expired signed URL would."""

    def do_GET(self) -> None:
        if self.path.endswith("/B11.tif"):
            self.send_error(403, "Forbidden")
            return
        range_header = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if range_header is None or not path.is_file():
            super().do_GET()
            return
        start, end = (int(v) if v else None for v in range_header.removeprefix("bytes=").split("-"))
        data = path.read_bytes()
        end = len(data) - 1 if end is None else min(end, len(data) - 1)
        body = data[start : end + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        if self.path.endswith("/B11.tif"):
            self.send_error(403, "Forbidden")
            return
        super().do_HEAD()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_folder(rondonia: BuiltItem) -> Iterator[str]:
    handler = partial(_Forbidding, directory=str(rondonia.item.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_item_over_http_reads_and_a_403_names_the_asset(rondonia: BuiltItem, http_folder: str) -> None:
    meta = open_scene(f"{http_folder}/{rondonia.item.name}")
    assert meta.sources[0].href == f"{http_folder}/B02.tif"  # relative hrefs resolved against the item's URL
    data, valid = read_window(meta, PixelWindow(0, 0, 50, 50), _all_bands(meta)[:2])
    np.testing.assert_allclose(data, _reference(rondonia, PixelWindow(0, 0, 50, 50))[:2], atol=1e-6)
    with pytest.raises(SceneReadError, match=rf"^scene {rondonia.id}.json: asset B11 \({http_folder}/B11.tif\) "
                                             r"cannot be read.*403"):
        read_window(meta, PixelWindow(0, 0, 50, 50), _all_bands(meta))


def test_naip_items_are_the_original_files_band_for_band(tmp_path: Path) -> None:
    for built in naip_items(tmp_path):
        meta = open_scene(built.item)
        indexes = resolve_bands(meta, parse_band_map("naip", meta), ("red", "green", "blue", "nir"))
        file_meta = open_scene(built.reference)
        window = PixelWindow(0, 0, meta.height, meta.width)
        data, valid = read_window(meta, window, indexes)
        expected, expected_valid = read_window(file_meta, window, (1, 2, 3, 4))
        np.testing.assert_array_equal(data[:, valid], expected[:, valid])
        assert (valid <= expected_valid).all()  # a pixel is nodata in an item where any band is


def test_a_landsat_item_is_scaled_and_its_nodata_and_qa_band_honoured(make_geotiff, tmp_path: Path) -> None:
    """Landsat Collection 2 L2: reflectance = DN x 0.0000275 - 0.2 (raster:bands), nodata 0, QA_PIXEL bit flags
    (classification:bitfields) read with nearest; the model's red and nir are the item's common names."""
    rng = np.random.default_rng(3)
    dn = rng.integers(7273, 30000, size=(2, 60, 80)).astype(np.uint16)
    dn[:, :5, :] = 0  # a fill collar
    qa = np.full((1, 60, 80), 21824, dtype=np.uint16)
    qa[0, :5, :] = 1
    assets = {}
    for key, common, data in (("red", "red", dn[:1]), ("nir08", "nir", dn[1:]), ("qa_pixel", None, qa)):
        make_geotiff(f"{key}.tif", data=data, dtype="uint16", res=30.0, nodata=None if key == "qa_pixel" else 0)
        band = {"nodata": 1, "data_type": "uint16"} if common is None else \
            {"nodata": 0, "data_type": "uint16", "scale": 0.0000275, "offset": -0.2}
        assets[key] = {"href": f"./{key}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "roles": ["cloud", "cloud-shadow"] if common is None else ["data"], "raster:bands": [band]}
        if common is not None:
            assets[key]["eo:bands"] = [{"name": key.upper(), "common_name": common}]
        else:
            assets[key]["classification:bitfields"] = [{"offset": 3, "length": 1, "name": "cloud"}]
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "LC09_L2SP_001002_20240601", "geometry": None,
            "properties": {"datetime": "2024-06-01T10:00:00Z"}, "links": [], "assets": assets}
    path = tmp_path / "landsat.json"
    path.write_text(json.dumps(item))
    meta = open_scene(path)
    assert [(s.name, s.resampling, s.mask_like) for s in meta.sources] == [
        ("red", "nearest", False), ("nir", "nearest", False), ("qa_pixel", "nearest", True)]
    indexes = resolve_bands(meta, parse_band_map(None, meta), ("red", "nir"))
    data, valid = read_window(meta, PixelWindow(0, 0, 60, 80), indexes)
    assert not valid[:5].any() and valid[5:].all()
    np.testing.assert_allclose(data[:, 5:], dn[:, 5:] * 0.0000275 - 0.2, atol=1e-6)
    assert (data[:, :5] == 0).all()


def test_an_items_date_is_its_datetime(rondonia: BuiltItem, tmp_path: Path) -> None:
    item = json.loads(rondonia.item.read_text())
    item["properties"]["datetime"] = "2019-07-04T13:00:00Z"  # not the date in the file name
    renamed = tmp_path / "S2B_20LLQ_20210922.json"
    renamed.write_text(json.dumps(item))
    assert scene_date(renamed).isoformat() == "2019-07-04"


def test_the_s3_endpoint_option_replaces_the_environment(rondonia: BuiltItem, s3, monkeypatch) -> None:
    """`s3_endpoint` (--s3-endpoint, a job's inputs.s3_endpoint) reaches an S3-compatible store without GDAL's
    or boto3's endpoint variables: for the item JSON (boto3) and for every asset (GDAL, planner and reader)."""
    url, _ = upload_item(rondonia, s3, prefix="endpoint")
    for name in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    meta = open_scene(url, source=SourceOptions(s3_endpoint=s3.endpoint))
    data, valid = read_window(meta, PixelWindow(0, 0, 40, 40), _all_bands(meta))
    assert valid.all()
    np.testing.assert_allclose(data, _reference(rondonia, PixelWindow(0, 0, 40, 40)), atol=HALF_DN)
    # a plain GeoTIFF at an s3:// URL, too
    s3.client.upload_file(str(rondonia.reference), s3.bucket, "endpoint/stacked.tif")
    meta = open_scene(s3.url("endpoint/stacked.tif"), source=SourceOptions(s3_endpoint=s3.endpoint))
    data, _ = read_window(meta, PixelWindow(0, 0, 40, 40), (1, 2, 3, 4))
    np.testing.assert_array_equal(data, _reference(rondonia, PixelWindow(0, 0, 40, 40)))


def test_a_resampled_band_keeps_its_nodata_out_of_valid_pixels(make_geotiff, tmp_path: Path) -> None:
    """A 20 m band with a 3 px nodata collar read onto 10 m with bilinear: the collar (6 px at 10 m, less the
    half pixel whose kernel reaches valid data) is invalid, and no valid pixel mixes in the nodata value."""
    swir = np.full((1, 10, 10), 2000, dtype=np.uint16)
    swir[:, :, :3] = 0
    make_geotiff("swir.tif", data=swir, res=20.0, nodata=0)
    make_geotiff("blue.tif", data=np.full((1, 20, 20), 1000, dtype=np.uint16), res=10.0, nodata=0)
    assets = {key: {"href": f"./{key}.tif", "type": "image/tiff; application=geotiff", "roles": ["data"],
                    "eo:bands": [{"name": key, "common_name": common}]}
              for key, common in (("blue", "blue"), ("swir", "swir16"))}
    path = tmp_path / "item.json"
    path.write_text(json.dumps({"type": "Feature", "stac_version": "1.0.0", "id": "collar", "geometry": None,
                                "properties": {"datetime": "2020-01-01T00:00:00Z"}, "links": [], "assets": assets}))
    meta = open_scene(path)
    assert meta.sources[1].resampling == "bilinear"
    data, valid = read_window(meta, PixelWindow(0, 0, 20, 20), (1, 2))
    assert not valid[:, :5].any() and valid[:, 5:].all()
    assert (data[1][valid] == 2000).all()


def test_an_asset_in_another_crs_is_warped_onto_the_grid(make_geotiff, tmp_path: Path) -> None:
    """An asset whose CRS differs from the grid's is read through a WarpedVRT window: the same pixels as
    warping the whole asset onto the grid (nearest, so a pixel is either equal or a neighbour's)."""
    blue = make_geotiff("blue.tif", data=(1000 + 3000 * textured((200, 300), 1))[None], res=10.0, nodata=0)
    with rasterio.open(blue) as src:
        grid_crs, grid_t, h, w = src.crs, src.transform, src.height, src.width
        red = (1000 + 3000 * textured((200, 300), 2)).astype(np.uint16)
        crs34 = "EPSG:32634"  # the neighbouring UTM zone: a rotated, stretched grid
        t34, w34, h34 = calculate_default_transform(grid_crs, crs34, w, h, *src.bounds)
    warped = np.zeros((h34, w34), dtype=np.uint16)
    reproject(red, warped, src_transform=grid_t, src_crs=grid_crs, dst_transform=t34, dst_crs=crs34)
    with rasterio.open(tmp_path / "red.tif", "w", driver="GTiff", width=w34, height=h34, count=1, dtype="uint16",
                       crs=crs34, transform=t34, nodata=0) as dst:
        dst.write(warped, 1)
    assets = {key: {"href": f"./{key}.tif", "type": "image/tiff; application=geotiff", "roles": ["data"],
                    "eo:bands": [{"name": key, "common_name": key}]} for key in ("blue", "red")}
    path = tmp_path / "item.json"
    path.write_text(json.dumps({"type": "Feature", "stac_version": "1.0.0", "id": "zones", "geometry": None,
                                "properties": {"datetime": "2020-01-01T00:00:00Z"}, "links": [], "assets": assets}))
    meta = open_scene(path, source=SourceOptions(resampling=(("red", "nearest"),)))
    assert (meta.crs, meta.width, meta.height) == (grid_crs, w, h)  # blue is the finer grid
    expected = np.zeros((h, w), dtype=np.float32)
    reproject(warped, expected, src_transform=t34, src_crs=crs34, dst_transform=grid_t, dst_crs=grid_crs,
              src_nodata=0, dst_nodata=0)
    window = PixelWindow(37, 51, 120, 200)
    data, valid = read_window(meta, window, (2,))
    inner = expected[window.row_off : window.row_end, window.col_off : window.col_end]
    assert valid.mean() > 0.9
    assert (data[0][valid] == inner[valid]).mean() > 0.99
