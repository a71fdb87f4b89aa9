"""The run manifest: an embedded SQLite database beside the products, one row per scene per job.

It is what makes a batch resumable and auditable: a rerun skips a scene whose row is ``done`` with the same
fingerprint and whose outputs still have the recorded checksums; everyone else (and ``scenewatch status``)
can query it with any SQLite tool::

    sqlite3 out/scenewatch-manifest.sqlite "select item_id, status, stage, error_message from items"

Tables:

- ``runs``: one row per ``scenewatch run``: times, exit code, and provenance (scenewatch version, model
  identity and sha256, the resolved job as JSON).
- ``items``: one row per (job, item) -- a scene, or a change pair / timeline -- upserted as the item moves
  through its stages, never duplicated: status (running, done, failed), stage reached, attempts, the run
  that last touched it, timings, error class and one-line message, outputs (path relative to the output
  folder, size, sha256) and properties (date, bbox) as JSON.
- ``file_hashes``: sha256 of input files keyed by path, size, mtime and inode, so an unchanged archive is
  not re-read in full on every run.

Every write is its own short transaction in WAL mode, so a run killed at any moment leaves a consistent
database, and readers never block the writer.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import OutputError

__all__ = ["Manifest", "ItemRecord", "OutputRecord", "RunRecord", "MANIFEST_NAME", "open_manifest"]

MANIFEST_NAME = "scenewatch-manifest.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    exit_code INTEGER,
    scenewatch_version TEXT NOT NULL,
    model_identity TEXT NOT NULL,
    model_sha256 TEXT,
    job_json TEXT NOT NULL,
    counts TEXT
);
CREATE TABLE IF NOT EXISTS items (
    job TEXT NOT NULL,
    item_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    fingerprint TEXT,
    status TEXT NOT NULL,
    stage TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    run_id INTEGER,
    started_at TEXT,
    finished_at TEXT,
    seconds REAL,
    error_class TEXT,
    error_message TEXT,
    outputs TEXT NOT NULL DEFAULT '[]',
    properties TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job, item_id)
);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
"""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One product file: path relative to the output folder, size in bytes, sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ItemRecord:
    job: str
    item_id: str
    kind: str
    source: str
    fingerprint: str | None
    status: str
    stage: str | None
    attempts: int
    run_id: int | None
    started_at: str | None
    finished_at: str | None
    seconds: float | None
    error_class: str | None
    error_message: str | None
    outputs: tuple[OutputRecord, ...] = ()
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: int
    job: str
    started_at: str
    finished_at: str | None
    exit_code: int | None
    scenewatch_version: str
    model_identity: str
    model_sha256: str | None
    job_json: str


class Manifest:
    """A connection to one manifest file; use :func:`open_manifest`."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection

    # ---- runs
    def start_run(self, job: str, version: str, model_identity: str, model_sha256: str | None,
                  job_json: str) -> int:
        cur = self._db.execute(
            "INSERT INTO runs (job, started_at, scenewatch_version, model_identity, model_sha256, job_json) "
            "VALUES (?, ?, ?, ?, ?, ?)", (job, _now(), version, model_identity, model_sha256, job_json))
        return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, exit_code: int, counts: dict[str, int]) -> None:
        self._db.execute("UPDATE runs SET finished_at = ?, exit_code = ?, counts = ? WHERE run_id = ?",
                         (_now(), exit_code, json.dumps(counts, sort_keys=True), run_id))

    def jobs(self) -> list[str]:
        """The jobs that have run into this output folder."""
        return [str(r[0]) for r in self._db.execute("SELECT DISTINCT job FROM runs ORDER BY job")]

    def runs(self, job: str) -> list[RunRecord]:
        rows = self._db.execute(
            "SELECT run_id, job, started_at, finished_at, exit_code, scenewatch_version, model_identity, "
            "model_sha256, job_json FROM runs WHERE job = ? ORDER BY run_id", (job,)).fetchall()
        return [RunRecord(*row) for row in rows]

    # ---- items
    def get(self, job: str, item_id: str) -> ItemRecord | None:
        row = self._db.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE job = ? AND item_id = ?",
                               (job, item_id)).fetchone()
        return None if row is None else _item(row)

    def items(self, job: str) -> list[ItemRecord]:
        rows = self._db.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE job = ? ORDER BY kind DESC, item_id",
                                (job,)).fetchall()
        return [_item(row) for row in rows]

    def begin(self, job: str, item_id: str, kind: str, source: str, fingerprint: str, run_id: int,
              properties: dict[str, Any]) -> None:
        """Mark an item running in this run (insert or update: one row per item, ever)."""
        self._db.execute(
            "INSERT INTO items (job, item_id, kind, source, fingerprint, status, stage, attempts, run_id, "
            "started_at, finished_at, seconds, error_class, error_message, outputs, properties) "
            "VALUES (?, ?, ?, ?, ?, 'running', 'start', 1, ?, ?, NULL, NULL, NULL, NULL, '[]', ?) "
            "ON CONFLICT (job, item_id) DO UPDATE SET kind = excluded.kind, source = excluded.source, "
            "fingerprint = excluded.fingerprint, status = 'running', stage = 'start', "
            "attempts = items.attempts + 1, run_id = excluded.run_id, started_at = excluded.started_at, "
            "finished_at = NULL, seconds = NULL, error_class = NULL, error_message = NULL, outputs = '[]', "
            "properties = excluded.properties",
            (job, item_id, kind, source, fingerprint, run_id, _now(), json.dumps(properties, sort_keys=True)))

    def set_stage(self, job: str, item_id: str, stage: str) -> None:
        self._db.execute("UPDATE items SET stage = ? WHERE job = ? AND item_id = ?", (stage, job, item_id))

    def succeed(self, job: str, item_id: str, outputs: Sequence[OutputRecord], seconds: float,
                properties: dict[str, Any]) -> None:
        payload = json.dumps([[o.path, o.size, o.sha256] for o in outputs])
        self._db.execute("UPDATE items SET status = 'done', stage = 'done', finished_at = ?, seconds = ?, "
                         "outputs = ?, properties = ? WHERE job = ? AND item_id = ?",
                         (_now(), seconds, payload, json.dumps(properties, sort_keys=True), job, item_id))

    def fail(self, job: str, item_id: str, stage: str, error_class: str, message: str, seconds: float) -> None:
        self._db.execute("UPDATE items SET status = 'failed', stage = ?, finished_at = ?, seconds = ?, "
                         "error_class = ?, error_message = ? WHERE job = ? AND item_id = ?",
                         (stage, _now(), seconds, error_class, message, job, item_id))

    # ---- input hash cache
    def cached_sha256(self, path: str, size: int, mtime_ns: int, inode: int) -> str | None:
        row = self._db.execute("SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ? "
                               "AND inode = ?", (path, size, mtime_ns, inode)).fetchone()
        return None if row is None else str(row[0])

    def store_sha256(self, path: str, size: int, mtime_ns: int, inode: int, sha256: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, inode, sha256) "
                         "VALUES (?, ?, ?, ?, ?)", (path, size, mtime_ns, inode, sha256))


_ITEM_COLUMNS = ("job, item_id, kind, source, fingerprint, status, stage, attempts, run_id, started_at, "
                 "finished_at, seconds, error_class, error_message, outputs, properties")


def _item(row: tuple[Any, ...]) -> ItemRecord:
    values = dict(zip(_ITEM_COLUMNS.split(", "), row, strict=True))  # the columns are named as the fields
    values["outputs"] = tuple(OutputRecord(p, int(s), h) for p, s, h in json.loads(values["outputs"]))
    values["properties"] = json.loads(values["properties"])
    return ItemRecord(**values)


@contextmanager
def open_manifest(path: str | Path, *, create: bool = True) -> Iterator[Manifest]:
    """Open (and create, with its schema) the manifest at ``path``."""
    path = Path(path)
    if not create and not path.exists():
        raise OutputError(f"manifest {path}: not found; has this job been run with this output folder?")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    except (OSError, sqlite3.Error) as err:
        raise OutputError(f"manifest {path}: cannot be opened ({err}); check the output folder") from err
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        yield Manifest(path, db)
    finally:
        db.close()
