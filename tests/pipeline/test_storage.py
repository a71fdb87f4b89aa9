"""pipeline.storage against a real S3 API (moto's server on 127.0.0.1, tests/s3_server.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline import storage
from pipeline.errors import OutputError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_parse_and_join() -> None:
    assert storage.is_remote_out("s3://b/p") and not storage.is_remote_out("out/") and not storage.is_remote_out(None)
    assert storage.parse_s3_url("s3://bucket/a/b/") == storage.S3Url("bucket", "a/b")
    assert storage.join_url("s3://bucket/a", "x/y.tif") == "s3://bucket/a/x/y.tif"
    assert storage.join_url("s3://bucket", "y.tif") == "s3://bucket/y.tif"
    with pytest.raises(OutputError, match="s3://bucket/prefix"):
        storage.parse_s3_url("s3:///x")
    with pytest.raises(OutputError, match=r"\.\."):
        storage.parse_s3_url("s3://b/a/../c")


def test_upload_records_sha256_and_skips_identical(s3, tmp_path: Path) -> None:
    path = tmp_path / "a.tif"
    path.write_bytes(b"x" * 1000)
    url = s3.url("run/a.tif")
    first = storage.upload_file(path, url)
    assert first.uploaded and first.sha256 == _sha(b"x" * 1000)
    head = s3.client.head_object(Bucket=s3.bucket, Key="run/a.tif")
    assert head["Metadata"]["sha256"] == first.sha256 and head["ContentLength"] == 1000
    assert storage.object_matches(url, 1000, first.sha256)
    assert not storage.upload_file(path, url).uploaded  # a rerun: the same object is there
    path.write_bytes(b"y" * 1000)  # same size, new content: uploaded again
    assert storage.upload_file(path, url).uploaded
    assert s3.client.get_object(Bucket=s3.bucket, Key="run/a.tif")["Body"].read() == b"y" * 1000
    assert not storage.object_matches(s3.url("run/none.tif"), 1, "0")


def test_multipart_upload_is_one_complete_object(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)  # S3's smallest part
    data = bytes(range(256)) * (12 * 1024 * 1024 // 256)  # 12 MiB: three parts
    path = tmp_path / "big.tif"
    path.write_bytes(data)
    result = storage.upload_file(path, s3.url("big.tif"))
    head = s3.client.head_object(Bucket=s3.bucket, Key="big.tif")
    assert "-" in head["ETag"]  # a multipart ETag: md5-of-parts "-" part count
    assert head["ContentLength"] == len(data) and head["Metadata"]["sha256"] == result.sha256
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_incomplete_multipart_upload_never_shows_and_is_aborted(s3) -> None:
    """A run killed mid-upload: the parts exist, no object does; the next run aborts the upload."""
    started = s3.client.create_multipart_upload(Bucket=s3.bucket, Key="out/half.tif")
    s3.client.upload_part(Bucket=s3.bucket, Key="out/half.tif", UploadId=started["UploadId"], PartNumber=1,
                          Body=b"z" * (5 * 1024 * 1024))
    assert "Contents" not in s3.client.list_objects_v2(Bucket=s3.bucket, Prefix="out/")
    assert storage.abort_incomplete_uploads(s3.url("out")) == 1
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_staged_output_uploads_only_on_success(s3) -> None:
    with storage.staged_output(s3.url("cmd")) as folder:
        (folder / "sub").mkdir()
        (folder / "sub" / "a.json").write_text("{}")
        (folder / "b.png").write_bytes(b"png")
    assert not folder.exists()
    keys = sorted(o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"])
    assert keys == ["cmd/b.png", "cmd/sub/a.json"]
    with pytest.raises(RuntimeError), storage.staged_output(s3.url("failed")) as folder:
        (folder / "c.png").write_bytes(b"png")
        raise RuntimeError("the command failed")
    assert "Contents" not in s3.client.list_objects_v2(Bucket=s3.bucket, Prefix="failed/")


def test_missing_bucket_is_one_line(s3, tmp_path: Path) -> None:
    path = tmp_path / "a.tif"
    path.write_bytes(b"x")
    with pytest.raises(OutputError, match=r"s3://no-such-bucket-here/a\.tif: no such bucket") as info:
        storage.upload_file(path, "s3://no-such-bucket-here/a.tif")
    assert "\n" not in str(info.value)


def test_endpoint_from_gdal_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_S3_ENDPOINT", "127.0.0.1:9000")
    monkeypatch.setenv("AWS_HTTPS", "NO")
    assert storage._endpoint_url() == "http://127.0.0.1:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example:9000")
    assert storage._endpoint_url() == "https://minio.example:9000"


def test_upload_retries_while_the_store_restarts(s3, tmp_path: Path) -> None:
    """botocore's standard retries carry an upload over a store that is down for a moment."""
    import threading
    import time

    path = tmp_path / "a.tif"
    path.write_bytes(b"x" * 100)
    s3.stop()

    def back() -> None:
        time.sleep(1.0)
        s3.start()

    restart = threading.Thread(target=back)
    restart.start()
    try:
        assert storage.upload_file(path, s3.url("later/a.tif")).uploaded
    finally:
        restart.join()
    assert s3.client.head_object(Bucket=s3.bucket, Key="later/a.tif")["ContentLength"] == 100


def test_remote_identity_follows_the_content_and_names_a_missing_object(s3) -> None:
    from pipeline.errors import SceneOpenError

    s3.client.put_object(Bucket=s3.bucket, Key="in/a.tif", Body=b"first")
    first = storage.remote_identity(s3.url("in/a.tif"))
    assert first == storage.remote_identity(s3.url("in/a.tif")) and "size=5" in first
    s3.client.put_object(Bucket=s3.bucket, Key="in/a.tif", Body=b"other")  # same size, other bytes
    assert storage.remote_identity(s3.url("in/a.tif")) != first
    with pytest.raises(SceneOpenError, match=r"in/none.tif: does not exist \(404\)"):
        storage.remote_identity(s3.url("in/none.tif"))


def test_list_names_and_delete_object(s3) -> None:
    for key in ("p/stac/a.json", "p/stac/b.json", "p/stac/deeper/c.json", "p/x.tif"):
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"{}")
    assert storage.list_names(s3.url("p/stac")) == ["a.json", "b.json"]
    assert storage.list_names(s3.url("p"), recursive=True) == ["stac/a.json", "stac/b.json", "stac/deeper/c.json",
                                                               "x.tif"]
    storage.delete_object(s3.url("p/stac/a.json"))
    storage.delete_object(s3.url("p/stac/none.json"))  # nothing there: nothing to do
    assert storage.list_names(s3.url("p/stac")) == ["b.json"]
