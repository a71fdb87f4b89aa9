"""Outputs in object storage: ``--out s3://bucket/prefix``.

Products are never written to S3 piece by piece. They are built and verified in a local folder exactly as
for a local ``--out`` (atomic renames, checksums), then each finished file is uploaded whole:

- **No partial object at a final key.** An S3 ``PutObject`` and a ``CompleteMultipartUpload`` are atomic per
  object: until the call succeeds readers see the previous object or none, never part of the new one. Large
  files go through boto3's managed transfer (multipart above :data:`MULTIPART_THRESHOLD`), whose failure path
  aborts the multipart upload; a process killed mid-upload leaves only invisible parts, which the next run
  aborts (:func:`abort_incomplete_uploads`, under the job's lock) and which a bucket lifecycle rule
  ``AbortIncompleteMultipartUpload`` also removes.
- **Reruns skip what is there.** Every object carries its sha256 as user metadata (``x-amz-meta-sha256``); an
  upload is skipped when the object at the key has the same size and sha256 (:func:`object_matches`).
- **Credentials** come from the standard AWS chain only (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
  ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, the instance role), never from a job file.
- **Endpoint** of an S3-compatible store (MinIO, Ceph, moto): ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``
  (boto3's own variables, a full URL), else GDAL's ``AWS_S3_ENDPOINT`` (``host:port``, with ``AWS_HTTPS=NO``
  for plain http), so the variables that let GDAL read the inputs let the products be written too.
  ``AWS_VIRTUAL_HOSTING=FALSE`` selects path-style addressing, as it does for GDAL.
- **Transient faults** (a 5xx, a throttle, a dropped connection) are retried by botocore's ``standard``
  retry mode, :data:`MAX_ATTEMPTS` attempts with jittered exponential backoff; a missing bucket or a 403 is
  one :class:`~pipeline.errors.OutputError` naming the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.errors import OutputError

__all__ = ["is_remote_out", "S3Url", "parse_s3_url", "s3_client", "upload_file", "object_matches", "UploadResult",
           "upload_tree", "staged_output", "abort_incomplete_uploads", "default_state_folder", "join_url",
           "remote_reachable", "remote_identity", "list_names", "delete_object",
           "MULTIPART_THRESHOLD", "MAX_ATTEMPTS", "SHA256_METADATA"]

MULTIPART_THRESHOLD = 64 * 1024 * 1024
"""Files above this size go up in parts of this size, several at a time (boto3's managed transfer)."""
MAX_ATTEMPTS = 8
"""botocore ``standard`` retry mode attempts per request (about a minute of backoff in all)."""
SHA256_METADATA = "sha256"
"""User metadata key (``x-amz-meta-sha256``) holding each uploaded object's sha256."""


def is_remote_out(out: str | os.PathLike[str] | None) -> bool:
    """Whether an output location is in object storage (``s3://bucket/prefix``)."""
    return out is not None and os.fspath(out).lower().startswith("s3://")


@dataclass(frozen=True, slots=True)
class S3Url:
    bucket: str
    prefix: str  # without leading or trailing "/"; "" for the bucket's root

    def key(self, relative: str | os.PathLike[str]) -> str:
        rel = Path(relative).as_posix().lstrip("/")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_s3_url(url: str) -> S3Url:
    """``s3://bucket/some/prefix`` as a value; an OutputError for anything else."""
    if not is_remote_out(url):
        raise OutputError(f"output {url}: not an s3://bucket/prefix URL")
    rest = url[5:]
    bucket, _, prefix = rest.partition("/")
    parts = [p for p in prefix.split("/") if p]
    if not bucket or any(p in (".", "..") for p in parts):
        raise OutputError(f"output {url}: give s3://bucket/prefix (a bucket name, then a prefix without '..')")
    return S3Url(bucket, "/".join(parts))


def join_url(url: str, relative: str | os.PathLike[str]) -> str:
    target = parse_s3_url(url)
    return f"s3://{target.bucket}/{target.key(relative)}"


def default_state_folder(url: str) -> Path:
    """Where a run keeps the manifest and the staging copy of the products of an ``s3://`` output when no
    ``--state`` is given: ``$XDG_STATE_HOME/scenewatch/s3/<bucket>/<prefix>`` (``~/.local/state`` by
    default), one folder per output URL."""
    target = parse_s3_url(url)
    root = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return root / "scenewatch" / "s3" / target.bucket / target.prefix


def _endpoint_url() -> str | None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            return os.environ[name]
    gdal = os.environ.get("AWS_S3_ENDPOINT")
    if gdal:
        if "://" in gdal:
            return gdal
        https = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
        return f"{'https' if https else 'http'}://{gdal}"
    return None


def s3_client() -> Any:
    """A boto3 S3 client from the standard AWS environment (see the module docstring), with ``standard``
    retries. Cached per process and per endpoint setting."""
    virtual = os.environ.get("AWS_VIRTUAL_HOSTING", "").upper()
    return _client(_endpoint_url(), "path" if virtual in ("NO", "FALSE", "OFF", "0") else "auto")


@lru_cache(maxsize=4)
def _client(endpoint: str | None, addressing: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                    s3={"addressing_style": addressing}, connect_timeout=10, read_timeout=60)
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """A file's sha256, read in 1 MiB chunks (the batch's fingerprints and the uploads' metadata)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _error_line(err: Exception, where: str) -> OutputError:
    """One line for a failed request: a 403 or a missing bucket says what to check."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("AccessDenied", "403") or status == 403:
            return OutputError(f"{where}: access denied (403); check the AWS credentials (AWS_PROFILE, "
                               "AWS_ACCESS_KEY_ID) and the bucket policy")
        if code == "NoSuchBucket":
            return OutputError(f"{where}: no such bucket; create it or fix the s3:// URL")
        return OutputError(f"{where}: {code or status} ({str(err).splitlines()[0]})")
    if isinstance(err, BotoCoreError):
        return OutputError(f"{where}: {str(err).splitlines()[0]}; check the endpoint (AWS_ENDPOINT_URL or "
                           "AWS_S3_ENDPOINT) and the network")
    return OutputError(f"{where}: {err}")


def object_matches(url: str, size: int, sha256: str) -> bool:
    """Whether the object at ``url`` exists with this size and the sha256 we stored on upload."""
    from botocore.exceptions import BotoCoreError, ClientError

    target = parse_s3_url(url)
    try:
        head = s3_client().head_object(Bucket=target.bucket, Key=target.prefix)
    except ClientError as err:
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404 or err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _error_line(err, url) from err
    except BotoCoreError as err:
        raise _error_line(err, url) from err
    return int(head.get("ContentLength", -1)) == size and head.get("Metadata", {}).get(SHA256_METADATA) == sha256


def remote_reachable(url: str) -> bool:
    """Whether an input URL answers now: :func:`remote_identity` (a HEAD for ``s3://``, the first byte for
    ``http(s)://``, a store that does not answer waited for with backoff) gets its answer. False for a
    missing object, a 403 or a store that stays down: a read that failed on a reachable object was a
    transient fault worth trying again; one that failed on an unreachable one was not."""
    if not url.lower().startswith(("s3://", "http://", "https://")):
        return False
    try:
        remote_identity(url)
    except OSError:  # SceneOpenError: missing, forbidden, or no answer after every try
        return False
    return True


def remote_identity(url: str, *, s3_endpoint: str | None = None, requester_pays: bool = False) -> str:
    """What the store says of an input object's content, without reading it: ``etag=...;size=...`` (and
    ``modified=...`` from HTTP servers), for a rerun to tell a reprocessed object under the same URL from
    an unchanged one. ``s3://``: a HEAD (``s3_endpoint``: an S3-compatible store's URL; ``requester_pays``);
    ``http(s)://``: the headers of its first byte (not HEAD, which some STAC APIs refuse with 405). A store
    that does not answer (refused, reset, timed out, 429/5xx) is waited for with backoff, here too for
    ``s3://``: botocore's standard retries use full jitter, so its tries can all fall within a second of a
    refused connection. A missing object, a 403 or a store that stays down is a SceneOpenError (an
    OSError) naming the URL."""
    import time
    import urllib.error
    import urllib.request

    from botocore.exceptions import BotoCoreError, ClientError

    from pipeline.errors import SceneOpenError

    failure = "no answer"
    for attempt in range(MAX_ATTEMPTS):
        try:
            if url.lower().startswith("s3://"):
                target = parse_s3_url(url)
                client = s3_client() if s3_endpoint is None else _client(
                    s3_endpoint if "://" in s3_endpoint else f"https://{s3_endpoint}", "path")
                head = client.head_object(Bucket=target.bucket, Key=target.prefix,
                                          **({"RequestPayer": "requester"} if requester_pays else {}))
                return f"etag={head.get('ETag', '')};size={head.get('ContentLength', '')}"
            request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
            with urllib.request.urlopen(request, timeout=30) as response:  # the URL the user (or item) gave
                headers = response.headers
                size = (headers.get("Content-Range") or "").rpartition("/")[2] or headers.get("Content-Length", "")
                return (f"etag={headers.get('ETag', '')};size={size};"
                        f"modified={headers.get('Last-Modified', '')}")
        except ClientError as err:  # the store answered: missing, forbidden
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise SceneOpenError(f"{url}: {_refusal(status, err.response.get('Error', {}).get('Code'))}") from err
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code != 429:
                raise SceneOpenError(f"{url}: {_refusal(err.code, None)}") from err
            failure = f"HTTP {err.code}"
        except (BotoCoreError, OSError) as err:
            failure = str(err).splitlines()[0] if str(err) else type(err).__name__
        time.sleep(min(0.5 * 2**attempt, 10.0))
    raise SceneOpenError(f"{url}: the store does not answer ({failure})")


def _refusal(status: int | None, code: str | None) -> str:
    if status == 404:
        return "does not exist (404)"
    if status == 403:
        return "access denied (403); check the AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID) and the bucket policy"
    return f"refused ({code or status})"


@dataclass(frozen=True, slots=True)
class UploadResult:
    url: str
    size: int
    sha256: str
    uploaded: bool  # False: an identical object was already there


def upload_file(path: str | os.PathLike[str], url: str, *, sha256: str | None = None,
                content_type: str | None = None) -> UploadResult:
    """Upload one finished local file to ``url`` (skipped when an identical object is there). Returns only
    once the object is complete at its key; raises OutputError naming the key otherwise."""
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    path = Path(path)
    size = path.stat().st_size
    digest = sha256 or file_sha256(path)
    if object_matches(url, size, digest):
        return UploadResult(url, size, digest, False)
    target = parse_s3_url(url)
    extra: dict[str, Any] = {"Metadata": {SHA256_METADATA: digest}}
    if content_type:
        extra["ContentType"] = content_type
    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD,
                            max_concurrency=4)
    try:
        # managed transfer: one PUT, or a multipart upload that is aborted if any part fails
        s3_client().upload_file(str(path), target.bucket, target.prefix, ExtraArgs=extra, Config=config)
    except (ClientError, BotoCoreError, S3UploadFailedError) as err:
        cause = err.__context__ if isinstance(err, S3UploadFailedError) and err.__context__ else err
        raise _error_line(cause if isinstance(cause, Exception) else err, f"upload of {path.name} to {url}") from err
    return UploadResult(url, size, digest, True)


def upload_tree(folder: str | os.PathLike[str], url: str,
                files: Iterable[str | os.PathLike[str]] | None = None) -> list[UploadResult]:
    """Upload ``files`` (paths under ``folder``; default: every file below it, in name order) to ``url``,
    each under its path relative to ``folder``."""
    root = Path(folder)
    chosen = sorted(p for p in root.rglob("*") if p.is_file()) if files is None else [Path(f) for f in files]
    results = []
    for path in chosen:
        full = path if path.is_absolute() else root / path
        relative = full.resolve().relative_to(root.resolve())
        results.append(upload_file(full, join_url(url, relative), content_type=_media_type(full)))
    return results


def _media_type(path: Path) -> str | None:
    return {".tif": "image/tiff; application=geotiff; profile=cloud-optimized", ".json": "application/json",
            ".html": "text/html", ".png": "image/png", ".csv": "text/csv", ".gpkg": "application/geopackage+sqlite3",
            ".parquet": "application/vnd.apache.parquet", ".fgb": "application/vnd.flatgeobuf",
            ".geojson": "application/geo+json"}.get(path.suffix.lower())


def list_names(url: str, *, recursive: bool = False) -> list[str]:
    """The names of the objects under ``url``'s prefix, relative to it, in name order: one level, as a
    folder listing, or with ``recursive`` every object below it (``stac/x.json``). One request per 1000."""
    from botocore.exceptions import BotoCoreError, ClientError

    target = parse_s3_url(url)
    prefix = f"{target.prefix}/" if target.prefix else ""
    names: list[str] = []
    paging = {"Bucket": target.bucket, "Prefix": prefix, **({} if recursive else {"Delimiter": "/"})}
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(**paging):
            names += [obj["Key"][len(prefix):] for obj in page.get("Contents", [])]
    except (ClientError, BotoCoreError) as err:
        raise _error_line(err, f"listing of {url}") from err
    return sorted(names)


def delete_object(url: str) -> None:
    """Delete the object at ``url`` (nothing if it is not there); an OutputError naming it otherwise."""
    from botocore.exceptions import BotoCoreError, ClientError

    target = parse_s3_url(url)
    try:
        s3_client().delete_object(Bucket=target.bucket, Key=target.prefix)
    except (ClientError, BotoCoreError) as err:
        raise _error_line(err, f"deletion of {url}") from err


def abort_incomplete_uploads(url: str) -> int:
    """Abort the multipart uploads left under ``url``'s prefix by a killed run (never visible as objects);
    call it only while holding the output's lock, when no upload of ours is in flight. Returns how many."""
    from botocore.exceptions import BotoCoreError, ClientError

    target = parse_s3_url(url)
    client = s3_client()
    aborted = 0
    try:
        listing = client.list_multipart_uploads(Bucket=target.bucket, Prefix=target.prefix)
        for upload in listing.get("Uploads", []):
            client.abort_multipart_upload(Bucket=target.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
    except (ClientError, BotoCoreError) as err:
        raise _error_line(err, f"output {url}") from err
    return aborted


@contextlib.contextmanager
def staged_output(out: str | os.PathLike[str]) -> Iterator[Path]:
    """The folder a command writes into: ``out`` itself when it is local; for ``s3://...`` a local staging
    folder whose files are uploaded under the prefix once the command has finished without error (then the
    staging folder is removed). A failed command uploads nothing."""
    if not is_remote_out(out):
        yield Path(out)
        return
    url = os.fspath(out)
    parse_s3_url(url)  # a malformed URL is refused before any work
    staging = Path(tempfile.mkdtemp(prefix="scenewatch-out-"))
    try:
        yield staging
        upload_tree(staging, url)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
