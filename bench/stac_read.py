"""Reading a STAC item of one COG per band against the same scene as one stacked GeoTIFF, in one process:
what separate band files, a band at another resolution (resampled per tile) and scale/offset cost, on disk
and from moto's S3 server on 127.0.0.1 (ratios; loopback has no network latency).

    PYTHONPATH=. python bench/stac_read.py [--size 2048] [--tile 512] [--halo 32] [--repeats 3]
                                         [--workdir /tmp/sw-bench-stac]

The scene is bench.scenes.make_scene's 4-band uint16 one (10 m). The item has red, green and blue as 10 m
COGs and nir as a 20 m COG (2 x 2 averages), each with ``raster:bands`` scale 0.0001 and offset -0.1. Rows:
every tile window (``--tile`` + ``--halo``) of all four bands read with pipeline.inference.read.read_window in
row-major order, one thread, the best of ``repeats`` alternating runs: (1) the stacked file, (2) the item on
disk, (3) the item in S3 (assets and item JSON uploaded to moto).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from bench.scenes import make_scene


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_item(scene: Path, folder: Path) -> Path:
    """``scene`` as a STAC item of one COG per band, nir at half the resolution (written once)."""
    item_path = folder / "item.json"
    if item_path.exists():
        return item_path
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(scene) as src:
        data, crs, transform = src.read(), src.crs, src.transform
    assets: dict[str, dict[str, object]] = {}
    for i, name in enumerate(("red", "green", "blue", "nir")):
        band, t = data[i], transform
        if name == "nir":  # 20 m: the mean of each 2 x 2 block
            h, w = band.shape[0] // 2 * 2, band.shape[1] // 2 * 2
            band = band[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).round().astype(np.uint16)
            t = transform * Affine.scale(2)
        with rasterio.open(folder / f"{name}.tif", "w", driver="COG", width=band.shape[1], height=band.shape[0],
                           count=1, dtype="uint16", crs=crs, transform=t, nodata=0, compress="deflate",
                           blocksize=512) as dst:
            dst.write(band, 1)
        assets[name] = {"href": f"./{name}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                        "roles": ["data"], "eo:bands": [{"name": name, "common_name": name}],
                        "proj:shape": list(band.shape), "proj:transform": list(t)[:6],
                        "raster:bands": [{"data_type": "uint16", "nodata": 0, "scale": 0.0001, "offset": -0.1}]}
    item: dict[str, object] = {"type": "Feature", "stac_version": "1.0.0", "id": "bench", "geometry": None, "links": [],
            "properties": {"datetime": "2024-06-01T00:00:00Z", "proj:epsg": crs.to_epsg()}, "assets": assets}
    item_path.write_text(json.dumps(item))
    return item_path


def _read_all(path: str, tile: int, halo: int) -> int:
    from pipeline.inference.read import open_scene, parse_band_map, read_window, resolve_bands, use_read_cache
    from tiles.grid import plan_tiles

    meta = open_scene(path)
    indexes = resolve_bands(meta, parse_band_map("naip", meta), ("red", "green", "blue", "nir"))
    use_read_cache(meta, halo)
    pixels = 0
    for t in plan_tiles(meta.height, meta.width, tile, halo):
        data, _ = read_window(meta, t.read_window, indexes)
        pixels += data.shape[1] * data.shape[2]
    return pixels


def _timed(path: str, tile: int, halo: int) -> float:
    started = time.perf_counter()
    _read_all(path, tile, halo)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--halo", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/sw-bench-stac")
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    work = Path(args.workdir)
    scene = make_scene(work / f"scene-{args.size}.tif", args.size)
    item = make_item(scene, work / f"item-{args.size}")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        os.environ.update({"AWS_S3_ENDPOINT": f"127.0.0.1:{port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
                           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bench")
        for f in item.parent.glob("*.tif"):
            client.upload_file(str(f), "bench", f"item/{f.name}")
        client.upload_file(str(item), "bench", "item/item.json")
        paths = {"file": str(scene), "item": str(item), "s3": "s3://bench/item/item.json"}
        best = {name: float("inf") for name in paths}
        for path in paths.values():  # warm-up: imports, the OS page cache, GDAL's drivers and VSI caches
            _read_all(path, args.tile, args.halo)
        for _ in range(args.repeats):  # alternating, so that drift on a shared machine hits every row alike
            for name, path in paths.items():
                best[name] = min(best[name], _timed(path, args.tile, args.halo))
    finally:
        server.stop()

    print(f"scene: {args.size}x{args.size} px x 4 bands uint16 (10 m), {args.tile} px tiles + {args.halo} px halo; "
          f"item: red/green/blue 10 m + nir 20 m COGs, scale/offset; S3 = moto on 127.0.0.1")
    print(f"read every tile, stacked GeoTIFF            {best['file']:7.2f} s")
    for name, what in (("item", "STAC item on disk   "), ("s3", "STAC item in s3://  ")):
        print(f"read every tile, {what}       {best[name]:7.2f} s   {best[name] / best['file']:.2f} x file")


if __name__ == "__main__":
    main()
