"""`scenewatch run` as real processes: kill -9 in the middle and rerun, two runs at once, a bad archive."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from tests.workflows.helpers import SHAPE, cli, make_archive, manifest_rows, product_checksums, sha256, write_job
from workflows.batch import EXIT_LOCKED, EXIT_OK, EXIT_SOME_FAILED, run_job
from workflows.cli import main
from workflows.lock import is_locked

SLOW = {"factory": "tests.workflows.slow_model:slow_vegetation", "kwargs": {"delay": 0.4}}


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """The run and its Dask worker processes (same session), as a supervisor killing the job would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


def _wait(predicate, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_kill_9_mid_archive_then_rerun_matches_an_uninterrupted_run(tmp_path: Path, make_geotiff,
                                                                    dask_client) -> None:
    archive = make_archive(tmp_path, make_geotiff, "archive", 5)
    job = write_job(tmp_path, {"folder": str(archive)}, tmp_path / "unused", model=SLOW)
    reference = tmp_path / "reference"
    assert run_job(job, out=reference, client=dask_client, allow_factory=True).exit_code == EXIT_OK

    out = tmp_path / "out"
    proc = cli("run", str(job), "--allow-factory", "--out", str(out))
    def mid_archive() -> bool:  # a scene done and the next one being worked on
        statuses = [r["status"] for r in manifest_rows(out)]
        return "done" in statuses and "running" in statuses

    _wait(mid_archive, "a first scene done and the next one running")
    proc.send_signal(signal.SIGKILL)  # the run itself, mid-archive; its workers are orphaned
    proc.wait(timeout=60)
    _kill_group(proc)
    rows = {r["item_id"]: r for r in manifest_rows(out)}
    done_before = {i for i, r in rows.items() if r["status"] == "done"}
    assert 1 <= len(done_before) < 5, rows
    mtimes = {i: (out / f"{i}.classes.tif").stat().st_mtime_ns for i in done_before}
    status = CliRunner().invoke(main, ["status", str(job), "--out", str(out)])
    assert status.exit_code == 0, status.output
    assert f"{len(done_before)} done" in status.output and "interrupted" in status.output  # the scene it was on

    rerun = cli("run", str(job), "--allow-factory", "--out", str(out))
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == EXIT_OK, stderr
    assert f"{5 - len(done_before)} done, {len(done_before)} up to date, 0 failed" in stdout

    rows_after = manifest_rows(out)
    assert sorted(r["item_id"] for r in rows_after) == [f"scene_{i:02d}" for i in range(5)]  # one row each
    for row in rows_after:
        assert row["status"] == "done"
        if row["item_id"] in done_before:  # not done twice
            assert row["run_id"] == rows[row["item_id"]]["run_id"] and row["attempts"] == 1
            assert (out / f"{row['item_id']}.classes.tif").stat().st_mtime_ns == mtimes[row["item_id"]]
    assert product_checksums(out) == product_checksums(reference)  # rasters and STAC, byte for byte
    assert not [p for p in out.rglob("*") if ".sw-tmp-" in p.name]


@pytest.mark.slow
def test_two_runs_at_once_then_sigterm_then_resume(tmp_path: Path, make_geotiff, dask_client) -> None:
    """Two runs started at once: one proceeds, one refuses (exit 4). Then what systemd, Airflow or `timeout`
    do to the one that proceeds: SIGTERM. It unwinds (exit 143), its Dask workers stop with it, no
    temporary file or lock is left, and the next run does only what is left."""
    archive = make_archive(tmp_path, make_geotiff, "archive", 5)
    out = tmp_path / "out"
    job = write_job(tmp_path, {"folder": str(archive)}, out, model=SLOW)
    runs = [cli("run", str(job), "--allow-factory"), cli("run", str(job), "--allow-factory")]
    try:
        loser = _wait(lambda: [p for p in runs if p.poll() is not None], "one of the two runs to exit")[0]
        winner = runs[1 - runs.index(loser)]
        _, refused = loser.communicate(timeout=60)
        assert loser.returncode == EXIT_LOCKED, refused
        assert refused.startswith("scenewatch: error: job test-job: output folder ")
        assert "is locked by a run still in progress (" in refused and refused.count("\n") == 1

        def mid_archive() -> bool:
            statuses = [r["status"] for r in manifest_rows(out)]
            return "done" in statuses and "running" in statuses

        _wait(mid_archive, "the other run to finish a scene and start the next")
        winner.send_signal(signal.SIGTERM)
        _, stderr = winner.communicate(timeout=120)
        assert winner.returncode == 128 + signal.SIGTERM, stderr
        with pytest.raises(ProcessLookupError):  # nothing of the run is left: no orphaned worker
            _wait(lambda: os.killpg(winner.pid, 0) is not None, "the run's process group to end", timeout=30)
    finally:
        for p in runs:
            if p.poll() is None:
                _kill_group(p)
    assert not is_locked(out)
    assert not [p for p in out.rglob("*") if ".sw-tmp-" in p.name]
    done_before = sum(r["status"] == "done" for r in manifest_rows(out))
    assert 1 <= done_before < 5
    summary = run_job(job, client=dask_client, allow_factory=True)
    assert (summary.count("skipped"), summary.count("done")) == (done_before, 5 - done_before)


@pytest.mark.slow
def test_bad_scenes_are_recorded_and_the_rest_finish(tmp_path: Path, make_geotiff) -> None:
    archive = make_archive(tmp_path, make_geotiff, "archive", 2)
    truncated = make_geotiff("archive/truncated.tif", shape=SHAPE, seed=7)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    make_geotiff("archive/no_crs.tif", shape=SHAPE, crs=None)
    make_geotiff("archive/two_bands.tif", shape=(2, 200, 300))
    (archive / "empty.tif").write_bytes(b"")
    out = tmp_path / "out"
    job = write_job(tmp_path, {"folder": str(archive)}, out)

    proc = cli("run", str(job), "--allow-factory")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_SOME_FAILED, stderr
    assert "2 done, 0 up to date, 4 failed" in stdout
    rows = {r["item_id"]: r for r in manifest_rows(out)}
    assert {i: r["status"] for i, r in rows.items()} == {
        "scene_00": "done", "scene_01": "done", "truncated": "failed", "no_crs": "failed",
        "two_bands": "failed", "empty": "failed"}
    expected = {  # error class, stage, words of the reason
        "truncated": ("SceneReadError", "plan", "truncated or corrupt"),
        "no_crs": ("InvalidSceneError", "plan", "no CRS"),
        "two_bands": ("BandMapError", "plan", "the file has 2 band(s)"),
        "empty": ("SceneOpenError", "plan", "not a readable raster"),
    }
    for item, (error_class, stage, words) in expected.items():
        row = rows[item]
        assert (row["error_class"], row["stage"]) == (error_class, stage)
        assert words in row["error_message"] and "\n" not in row["error_message"]
        assert row["error_message"].startswith(f"scene {item}.tif: ")
        assert re.search(rf"^{item} +scene +failed +plan +[0-9.]+ +scene {item}.tif: ", stdout, re.M), stdout
        assert not list(out.glob(f"{item}.*"))
    for good in ("scene_00", "scene_01"):
        with rasterio.open(out / f"{good}.classes.tif") as src:
            assert src.read(1).shape == SHAPE[1:]
        assert rows[good]["outputs"].count(sha256(out / f"{good}.classes.tif")) == 1

    status = CliRunner().invoke(main, ["status", str(job), "--failed"])
    assert status.exit_code == 0, status.output
    assert "job test-job: 2 done, 4 failed" in status.output
    assert "no_crs" in status.output and "scene_00" not in status.output
    assert re.search(r"^last run: #1 started .* UTC, finished .* with exit code 3$", status.output, re.M)
    assert np.all([line.count("failed") == 1 for line in status.output.splitlines()[1:5]])
