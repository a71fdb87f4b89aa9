"""Faults of object storage during a run, against moto's S3 server on 127.0.0.1: a transient outage (the
server stopped and started again mid-run) is retried and the run finishes; a missing object or a 403
fails that scene with one line naming the item and the asset, and the batch goes on."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

import pystac
import pytest

from tests.workflows.helpers import SHAPE, write_job
from workflows.batch import run_job

pytestmark = pytest.mark.slow


def _items(tmp_path: Path, hrefs: dict[str, str]) -> Path:
    items = []
    for day, (item_id, href) in enumerate(hrefs.items(), start=1):
        item = pystac.Item(item_id, None, None, dt.datetime(2024, 6, day, tzinfo=dt.timezone.utc), {})
        item.add_asset("image", pystac.Asset(href, media_type=pystac.MediaType.GEOTIFF))
        items.append(item)
    path = tmp_path / "items.json"
    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    return path


def _upload_scenes(s3, make_geotiff, count: int) -> list[str]:
    urls = []
    for i in range(count):
        s3.client.upload_file(str(make_geotiff(f"s{i}.tif", shape=SHAPE, seed=i)), s3.bucket, f"in/s{i}.tif")
        urls.append(s3.url(f"in/s{i}.tif"))
    return urls


@pytest.mark.parametrize(("workers", "in_flight", "count"), [(1, 1, 3), (2, None, 6)],
                         ids=["one-at-a-time", "default-in-flight"])
def test_server_restarted_mid_run_is_retried(tmp_path: Path, make_geotiff, s3, workers: int, in_flight: int | None,
                                             count: int) -> None:
    """The store stops after the first scene and starts again a second later: one scene at a time, the
    next scene opens during the outage; with the default scenes in flight (4 on 2 workers, 6 scenes) the
    outage also meets scenes in the middle of their reads and uploads. Every scene ends done."""
    urls = _upload_scenes(s3, make_geotiff, count)
    _items(tmp_path, {f"scene{i}": u for i, u in enumerate(urls)})
    # three re-runs: the first one can meet the store while it is still coming back (HEAD answers, a read
    # right after it did not, in CI's order of tests)
    job = write_job(tmp_path, {"stac": "items.json", "asset": "image"}, tmp_path / "unused", retries=3,
                    dask={"workers": workers})
    restarted = threading.Event()

    def outage(outcome, index: int, total: int) -> None:
        if index == 1:  # after the first scene: the store goes away and comes back a second later
            s3.stop()

            def back() -> None:
                time.sleep(1.0)
                s3.start()
                restarted.set()

            threading.Thread(target=back, daemon=True).start()

    summary = run_job(job, out=s3.url("out"), state=tmp_path / "state", scenes_in_flight=in_flight, report=outage)
    assert restarted.is_set()
    assert summary.exit_code == 0, [o.message for o in summary.outcomes]
    keys = {o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket, Prefix="out/")["Contents"]}
    assert {f"out/scene{i}.classes.tif" for i in range(count)} <= keys


def test_missing_object_and_403_fail_their_scene_only(tmp_path: Path, make_geotiff, s3) -> None:
    urls = _upload_scenes(s3, make_geotiff, 2)
    denied = f"{s3.bucket}-denied"
    s3.client.create_bucket(Bucket=denied)
    s3.client.upload_file(str(tmp_path / "s0.tif"), denied, "in/s0.tif")
    s3.client.put_bucket_policy(Bucket=denied, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{denied}/*"}]}))
    _items(tmp_path, {"good": urls[0], "missing": s3.url("in/nothere.tif"), "forbidden": f"s3://{denied}/in/s0.tif",
                      "good2": urls[1]})
    job = write_job(tmp_path, {"stac": "items.json", "asset": "image"}, tmp_path / "out")
    summary = run_job(job)
    status = {o.item_id: o for o in summary.outcomes}
    assert summary.exit_code == 3
    assert status["good"].status == status["good2"].status == "done"
    for item_id, asset, reason in (("missing", "nothere.tif", "does not exist"), ("forbidden", "s0.tif", "403")):
        outcome = status[item_id]
        assert outcome.status == "failed" and not outcome.unexpected
        line = f"{outcome.kind} {outcome.item_id}: failed at {outcome.stage}: {outcome.message}"  # as `run` prints
        assert "\n" not in line and asset in line and reason in line, line
