"""What GDAL's per-file VSI cache (``VSI_CACHE_SIZE``, one per open asset per reading thread) costs and
buys when a STAC item is read tile by tile from object storage: the same item of four COGs (bench.stac_read's)
in moto's S3 server on 127.0.0.1, every tile read in a fresh process per run, at 32 MiB (the project's
setting until this bench), at 4 MiB and with the VSI cache off (the setting now); the memory the process
holds after the pass (RSS after minus before, the asset handles still open as in a worker) and the time,
alternating runs, ratios only.

    PYTHONPATH=. python bench/vsi_cache.py [--size 4096] [--tile 512] [--halo 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.scenes import make_scene
from bench.stac_read import _free_port, make_item

SETTINGS = {"off": ("FALSE", 32), "32 MiB": ("TRUE", 32), "4 MiB": ("TRUE", 4)}


def _child(cache: str, size_mib: int, url: str, tile: int, halo: int) -> None:
    import psutil

    import pipeline.inference.stac as stac
    from pipeline.inference.read import open_scene, parse_band_map, read_window, resolve_bands, use_read_cache
    from tiles.grid import plan_tiles

    stac._CLOUD_SETTINGS.update({"VSI_CACHE": cache, "VSI_CACHE_SIZE": str(size_mib * 2**20)})
    meta = open_scene(url)
    indexes = resolve_bands(meta, parse_band_map("naip", meta), ("red", "green", "blue", "nir"))
    use_read_cache(meta, halo)
    process = psutil.Process()
    before = process.memory_info().rss
    started = time.perf_counter()
    for t in plan_tiles(meta.height, meta.width, tile, halo):
        read_window(meta, t.read_window, indexes)
    print(json.dumps([time.perf_counter() - started, (process.memory_info().rss - before) / 2**20]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--halo", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/sw-bench-vsi")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cache, size_mib, url = args.child
        _child(cache, int(size_mib), url, args.tile, args.halo)
        return

    import boto3
    from moto.server import ThreadedMotoServer

    work = Path(args.workdir)
    item = make_item(make_scene(work / f"scene-{args.size}.tif", args.size), work / f"item-{args.size}")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    results: dict[str, list[list[float]]] = {name: [] for name in SETTINGS}
    try:
        env = os.environ | {"AWS_S3_ENDPOINT": f"127.0.0.1:{port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
                            "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        client = boto3.client("s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        client.create_bucket(Bucket="bench")
        for f in item.parent.glob("*.tif"):
            client.upload_file(str(f), "bench", f"item/{f.name}")
        client.upload_file(str(item), "bench", "item/item.json")
        for _ in range(args.repeats):  # alternating, so that drift on a shared machine hits every row alike
            for name, (cache, size_mib) in SETTINGS.items():
                done = subprocess.run([sys.executable, "-m", "bench.vsi_cache", "--tile", str(args.tile), "--halo",
                                       str(args.halo), "--child", cache, str(size_mib), "s3://bench/item/item.json"],
                                      env=env, capture_output=True, text=True, check=True)
                results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        server.stop()
    base = min(r[0] for r in results["off"])
    print(f"item: {args.size}x{args.size} px, red/green/blue 10 m + nir 20 m COGs in s3:// (moto, loopback); "
          f"{args.tile} px tiles + {args.halo} px halo, one thread")
    for name, rows in results.items():
        seconds = min(r[0] for r in rows)
        held = sorted(r[1] for r in rows)[len(rows) // 2]
        print(f"VSI cache {name:7s} best {seconds:6.2f} s ({seconds / base:.2f} x off); "
              f"held after the pass (median) {held:6.0f} MiB")


if __name__ == "__main__":
    main()
