"""A real S3 API on 127.0.0.1 for tests: moto's server mode, started once per session on a free port.

Use the ``s3`` fixture (re-exported by tests/conftest.py)::

    def test_reads_from_s3(s3):
        s3.client.upload_file(str(local_tif), s3.bucket, "scenes/a.tif")
        url = s3.url("scenes/a.tif")          # s3://<bucket>/scenes/a.tif
        ...                                   # GDAL/rasterio, boto3 and Dask worker processes all reach it

Each test gets its own empty bucket (``s3.bucket``), and the environment GDAL and boto3 read for an
S3-compatible store: ``AWS_S3_ENDPOINT=127.0.0.1:PORT``, ``AWS_HTTPS=NO``, ``AWS_VIRTUAL_HOSTING=FALSE``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY=testing``, ``AWS_REGION=us-east-1`` and ``AWS_ENDPOINT_URL``
(boto3's name for the endpoint), set with monkeypatch so they are undone after the test. Worker processes
started during the test inherit them. ``s3.stop()`` / ``s3.start()`` stop and restart the server on the
same port (its buckets survive: moto keeps them in this process) for transient-fault tests.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

__all__ = ["S3Server", "s3", "s3_server"]

_REGION = "us-east-1"
_buckets = itertools.count()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    """moto's ThreadedMotoServer on a fixed loopback port, restartable."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        if self._server is None:
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="session")
def s3_server() -> Iterator[_Server]:
    """The session's one moto S3 server (started on first use); most tests want ``s3`` instead."""
    server = _Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class S3Server:
    """What a test needs of the S3 server: ``endpoint`` (http://127.0.0.1:PORT), a boto3 ``client``,
    this test's empty ``bucket``, and the server's ``stop``/``start``."""

    endpoint: str
    client: Any
    bucket: str
    _server: _Server

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as GDAL's AWS_S3_ENDPOINT takes it."""
        return self.endpoint.split("://", 1)[1]

    def url(self, key: str) -> str:
        """``s3://bucket/key`` of an object in this test's bucket."""
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def stop(self) -> None:
        self._server.stop()

    def start(self) -> None:
        self._server.start()


def s3_env(host: str) -> dict[str, str]:
    """The environment variables GDAL and boto3 read to reach an S3-compatible store at ``host``."""
    return {
        "AWS_S3_ENDPOINT": host,
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": _REGION,
        "AWS_DEFAULT_REGION": _REGION,
        "AWS_ENDPOINT_URL": f"http://{host}",
    }


@pytest.fixture
def s3(s3_server: _Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A fresh bucket on the session's S3 server, and the environment that points GDAL and boto3 at it."""
    import boto3

    s3_server.start()  # a test that stopped it may have failed before restarting it
    host = s3_server.endpoint.split("://", 1)[1]
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_NO_SIGN_REQUEST", "AWS_REQUEST_PAYER",
                 "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_env(host).items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name=_REGION,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"scenewatch-test-{next(_buckets)}"  # a new name per test: GDAL caches what it read by URL
    client.create_bucket(Bucket=bucket)
    yield S3Server(s3_server.endpoint, client, bucket, s3_server)
    s3_server.start()
