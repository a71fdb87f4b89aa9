"""A batch whose output folder is ``s3://bucket/prefix``: where things live and when they are uploaded.

The run works in a local *state folder* exactly as it would in a local output folder (the job's lock, the
manifest, the products built and checksummed there: ``--state``, ``outputs.state``, else
:func:`pipeline.storage.default_state_folder`). Each item's files are uploaded once they are complete and
checksummed, and the item is recorded ``done`` in the manifest only after every upload returned, so a
``done`` row always means "complete in the bucket". At the end of the run the STAC catalog (relative
hrefs, so it is valid in the bucket as it is) and a consistent snapshot of the manifest are uploaded
beside the products; the CLI uploads report.html. An item JSON under ``stac/`` that the new catalog no
longer lists is then deleted from the bucket (the catalog lists every done product whose files are both in
the state folder and in the bucket, :func:`products_present`); products are never deleted.

A rerun skips an item when its manifest row is done with the same fingerprint, its local copies still
match, and every object is in the bucket with the recorded size and sha256; an upload whose object is
already there and identical is skipped. Losing the state folder costs a recompute, never a wrong object:
the products are remade, found identical in the bucket and not uploaded again.

Remote *inputs* are fingerprinted by :func:`input_identity` (a STAC item's JSON and its assets' ETags and
sizes), not by their href alone: an item re-published or an asset reprocessed under the same URL is redone.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline import storage
from pipeline.inference.stac import SourceOptions
from workflows.job import Job
from workflows.manifest import MANIFEST_NAME, ItemRecord

__all__ = ["UNREADABLE", "input_identity", "prepare_remote", "upload_outputs", "outputs_in_bucket", "products_present",
           "upload_run_files"]


UNREADABLE = "unreadable:"
"""The start of an :func:`input_identity` that could not be established (the rest says what failed)."""


def input_identity(path: str, options: SourceOptions) -> str:
    """What a remote scene's fingerprint hashes in place of its bytes (which a daily rerun cannot afford to
    read): for a STAC item (``is_stac_item``), its JSON (canonical: key order, spacing and links do not count) and
    each image asset's href with the store's ETag and size (:func:`pipeline.storage.remote_identity`, one
    HEAD per asset, 8 at a time); for a raster URL, its ETag and size. An item re-published with new hrefs
    or new properties, or with an asset reprocessed under its old href, gets a new identity; an unchanged
    one the same. What cannot be read (a missing asset, a 403, a store that stays down) is written into the
    identity as such rather than raised: it cannot match a done scene's, so the scene is computed, and the
    stage that reads it reports it precisely (naming the item and the asset) and retries an outage; such an
    identity starts with :data:`UNREADABLE`, so a scene done before can keep its products instead."""
    import hashlib
    import json
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.inference.stac import image_hrefs, is_stac_item, load_item, split_fragment

    def identity(url: str) -> str:
        if "://" not in url:
            return ""  # a local file named by a remote item: never read (see docs/security.md)
        return storage.remote_identity(url, s3_endpoint=options.s3_endpoint, requester_pays=options.requester_pays)

    try:
        if not is_stac_item(path):
            return f"remote:{path}\n{identity(path)}"
        href, item_id = split_fragment(path)
        item = load_item(href, f"scene {path}", item_id, options)
        hrefs = image_hrefs(item, href)
        with ThreadPoolExecutor(max_workers=8) as pool:
            assets = [f"{h} {i}" for h, i in zip(hrefs, pool.map(identity, hrefs), strict=True)]
    except OSError as err:  # the item or an asset: missing, forbidden, or a store that stays down
        return f"{UNREADABLE}{path}: {err}"
    # links left out: they say where the API is served from (a new host name), not what the pixels are
    canonical = json.dumps({k: v for k, v in item.items() if k != "links"}, sort_keys=True, separators=(",", ":"))
    return "item:" + hashlib.sha256("\n".join([canonical, *assets]).encode("utf-8")).hexdigest()


def prepare_remote(job: Job) -> None:
    """At the start of a run, under the job's lock: abort multipart uploads a killed run left."""
    if job.remote is not None:
        storage.abort_incomplete_uploads(job.remote)


def upload_outputs(job: Job, paths: Iterable[Path]) -> None:
    """Upload an item's finished files (under the state folder) to the same relative keys in the bucket;
    nothing for a local output. Raises OutputError naming the key on a failure."""
    if job.remote is None:
        return
    for path in paths:
        relative = Path(path).resolve().relative_to(job.out_dir.resolve())
        storage.upload_file(path, storage.join_url(job.remote, relative))


def outputs_in_bucket(job: Job, record: ItemRecord | None) -> bool:
    """Whether every output the record lists is in the bucket with its size and sha256 (always True for a
    local output)."""
    if job.remote is None or record is None:
        return True
    remote = job.remote
    return all(storage.object_matches(storage.join_url(remote, o.path), o.size, o.sha256) for o in record.outputs)


def products_present(job: Job) -> Callable[[str], bool]:
    """Whether a product (its path relative to the output) is there: in the output folder, and for an
    ``s3://`` output in the bucket too (one listing of the prefix, not a request per file)."""
    out_dir = job.out_dir
    if job.remote is None:
        return lambda relative: (out_dir / relative).is_file()
    keys = set(storage.list_names(job.remote, recursive=True))
    return lambda relative: (out_dir / relative).is_file() and Path(relative).as_posix() in keys


def upload_run_files(job: Job, names: Iterable[str] = ()) -> None:
    """The run's shared files: the STAC catalog (catalog.json, stac/*.json), ``names`` (report.html...) and
    a snapshot of the manifest (SQLite's online backup, so it is consistent while the run holds it)."""
    if job.remote is None:
        return
    items = sorted((job.out_dir / "stac").glob("*.json"))
    files = [job.out_dir / "catalog.json", *items, *(job.out_dir / n for n in names)]
    upload_outputs(job, [f for f in files if f.is_file()])
    # items the catalog no longer links (their products are gone): deleted once the new catalog is up, so
    # that the bucket's stac/ holds what catalog.json lists, as the state folder's does
    published = {f.name for f in items}
    for stale in storage.list_names(storage.join_url(job.remote, "stac")):
        if stale.endswith(".json") and stale not in published:
            storage.delete_object(storage.join_url(job.remote, f"stac/{stale}"))
    manifest = job.out_dir / MANIFEST_NAME
    if manifest.is_file():
        with tempfile.TemporaryDirectory(prefix="scenewatch-manifest-") as tmp:
            copy = Path(tmp) / MANIFEST_NAME
            with contextlib.closing(sqlite3.connect(manifest)) as source, \
                    contextlib.closing(sqlite3.connect(copy)) as target:
                source.backup(target)
            storage.upload_file(copy, storage.join_url(job.remote, MANIFEST_NAME))
