"""Reading a scene from object storage against reading it from the local disk: the same tiled GeoTIFF, once
as a file and once as ``s3://`` on moto's S3 server on 127.0.0.1, in one process (ratios; loopback has no
network latency, so this measures what the S3 path itself costs: HTTP range requests, GDAL's /vsis3/
caching, request signing; a real bucket adds the round trips).

    PYTHONPATH=. python bench/remote_read.py [--size 4096] [--tile 512] [--halo 32] [--repeats 3]
                                           [--workdir /tmp/sw-bench-remote]

Rows: (1) every tile window of the scene read with pipeline.inference.read.read_window (open_scene once,
tiles in row-major order, one thread), local vs S3, the best of ``repeats`` alternating runs; (2) a whole
``predict_scene`` (vegetation, NDVI) on a LocalCluster of 2 workers, local vs S3 (after a warm-up, the
best of two alternating runs each, the workers reading their tiles by URL).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

from bench.scenes import make_scene
from bench.stac_read import _free_port


def _read_all(path: str, tile: int, halo: int) -> int:
    from pipeline.inference.read import open_scene, read_window, use_read_cache
    from tiles.grid import plan_tiles

    meta = open_scene(path)
    use_read_cache(meta, halo)  # GDAL's block cache sized as in a worker: a pass does not fit, so each pass decodes
    pixels = 0
    for t in plan_tiles(meta.height, meta.width, tile, halo):
        data, _ = read_window(meta, t.read_window, (1, 2, 3, 4))
        pixels += data.shape[1] * data.shape[2]
    return pixels


def _best(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--halo", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/sw-bench-remote")
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    work = Path(args.workdir)
    scene = make_scene(work / f"scene-{args.size}.tif", args.size)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        os.environ.update({"AWS_S3_ENDPOINT": f"127.0.0.1:{port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
                           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bench")
        client.upload_file(str(scene), "bench", scene.name)
        url = f"s3://bench/{scene.name}"
        mb = scene.stat().st_size / 1e6

        _read_all(str(scene), args.tile, args.halo)  # warm-up: imports, the OS page cache, GDAL's drivers
        _read_all(url, args.tile, args.halo)
        local_s = remote_s = float("inf")
        for _ in range(args.repeats):  # alternating, so that drift on a shared machine hits both alike
            local_s = min(local_s, _best(lambda: _read_all(str(scene), args.tile, args.halo), 1))
            remote_s = min(remote_s, _best(lambda: _read_all(url, args.tile, args.halo), 1))

        from distributed import Client, LocalCluster

        from pipeline.config import PredictConfig
        from pipeline.models.contract import ModelRef
        from workflows.scene import plan_scene, predict_scene

        config = PredictConfig(bands="naip", tile_size=args.tile, halo=args.halo)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                          memory_limit=0) as cluster, Client(cluster) as dask:
            timings = {"local": float("inf"), "s3": float("inf")}
            runs = [("warm-up", str(scene))] + [("local", str(scene)), ("s3", url)] * 2  # alternating, best of 2
            for name, path in runs:
                plan = plan_scene(path, ModelRef.of("vegetation"), config, scene_id=f"bench-{name}")
                started = time.perf_counter()
                predict_scene(plan, work / "out", client=dask, progress=False)
                timings[name] = min(timings.get(name, float("inf")), time.perf_counter() - started)
    finally:
        server.stop()

    print(f"scene: {args.size}x{args.size} px x 4 bands uint16, {args.tile} px tiles + {args.halo} px halo, "
          f"{mb:.0f} MB deflate GeoTIFF; S3 = moto on 127.0.0.1")
    print(f"read every tile, local file            {local_s:7.2f} s")
    print(f"read every tile, s3:// (loopback)      {remote_s:7.2f} s   {remote_s / local_s:.2f} x local")
    print(f"predict_scene, local file (2 workers)  {timings['local']:7.2f} s")
    ratio = timings["s3"] / timings["local"]
    print(f"predict_scene, s3:// (2 workers)       {timings['s3']:7.2f} s   {ratio:.2f} x local")


if __name__ == "__main__":
    main()
