"""Shared helpers for the batch tests: job files, archives of tiny real scenes, manifests, checksums."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SHAPE = (4, 200, 300)  # bands red, green, blue, nir (the naip preset); tiny so the suite stays fast


def write_job(folder: Path, inputs: dict[str, Any], out: Path, *, model: dict[str, Any] | None = None,
              name: str = "test-job", **extra: Any) -> Path:
    spec: dict[str, Any] = {
        "version": 1, "name": name, "inputs": inputs,
        "model": model or {"name": "vegetation"}, "bands": "naip",
        "dask": {"workers": 1}, "outputs": {"folder": str(out)}, **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def make_archive(tmp_path: Path, make_geotiff: Callable[..., Path], folder: str, count: int) -> Path:
    (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    paths = [make_geotiff(f"{folder}/scene_{i:02d}.tif", shape=SHAPE, seed=i) for i in range(count)]
    return paths[0].parent


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def product_checksums(out: Path) -> dict[str, str]:
    """Every product and STAC file under ``out`` (not the manifest, the lock or report.html, whose timings
    differ from run to run) by relative path."""
    return {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(("scenewatch-manifest", ".scenewatch"))
            and p.name != "report.html"}


def manifest_rows(out: Path) -> list[dict[str, Any]]:
    path = out / "scenewatch-manifest.sqlite"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM items ORDER BY item_id")]
    except sqlite3.OperationalError:  # the run is creating the schema right now
        return []


def cli(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """``scenewatch ARGS`` as a real process (own session, so its Dask workers can be killed with it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "workflows.cli", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **popen)
