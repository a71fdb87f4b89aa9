"""Several scenes in flight on one cluster: the same products as one at a time, failures isolated, resumable."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.workflows.helpers import SHAPE, cli, make_archive, manifest_rows, product_checksums, write_job
from tests.workflows.test_batch_processes import SLOW, _kill_group, _wait
from workflows.batch import EXIT_OK, EXIT_SOME_FAILED, run_job
from workflows.cli import main

VECTORS = {"vectors": {"formats": ["gpkg", "parquet"], "options": {"min_area": 0}}}


@pytest.mark.slow
def test_scenes_in_flight_give_the_products_of_one_at_a_time(tmp_path: Path, make_geotiff, dask_client) -> None:
    archive = make_archive(tmp_path, make_geotiff, "archive", 4)
    job = write_job(tmp_path, {"folder": str(archive)}, tmp_path / "unused", products=VECTORS)
    reference = tmp_path / "one"
    one = run_job(job, out=reference, client=dask_client, progress=False, scenes_in_flight=1)
    assert one.exit_code == EXIT_OK

    out = tmp_path / "three"
    result = CliRunner().invoke(main, ["run", str(job), "--out", str(out), "--scenes-in-flight", "3"])
    assert result.exit_code == EXIT_OK, result.output
    # class and probability COGs, GeoPackages, Parquet and the STAC catalog, byte for byte
    assert product_checksums(out) == product_checksums(reference)
    assert any(name.endswith(".gpkg") for name in product_checksums(out))
    # the per-scene lines come in the scenes' order, whichever finished first
    lines = [line.split(":")[0] for line in result.output.splitlines() if line.startswith("[")]
    assert lines == [f"[{i + 1}/4] scene scene_{i:02d}" for i in range(4)]

    rows = {r["item_id"]: r for r in manifest_rows(out)}
    assert {r["status"] for r in rows.values()} == {"done"}
    # three scenes were marked running before the first was done: they were computed side by side
    assert rows["scene_02"]["started_at"] < rows["scene_00"]["finished_at"]
    assert rows["scene_03"]["started_at"] > rows["scene_00"]["started_at"]


@pytest.mark.slow
def test_a_failing_scene_among_several_in_flight_fails_alone(tmp_path: Path, make_geotiff, dask_client) -> None:
    archive = make_archive(tmp_path, make_geotiff, "archive", 3)
    make_geotiff("archive/scene_01b_two_bands.tif", shape=(2, *SHAPE[1:]))
    (archive / "scene_00b_empty.tif").write_bytes(b"")
    out = tmp_path / "out"
    job = write_job(tmp_path, {"folder": str(archive)}, out, dask={"workers": 1, "scenes_in_flight": 5})
    summary = run_job(job, client=dask_client, progress=False)
    assert summary.exit_code == EXIT_SOME_FAILED
    assert [(o.item_id, o.status) for o in summary.outcomes] == [
        ("scene_00", "done"), ("scene_00b_empty", "failed"), ("scene_01", "done"),
        ("scene_01b_two_bands", "failed"), ("scene_02", "done")]
    rows = {r["item_id"]: r for r in manifest_rows(out)}
    assert (rows["scene_00b_empty"]["error_class"], rows["scene_00b_empty"]["stage"]) == ("SceneOpenError", "plan")
    assert rows["scene_01b_two_bands"]["error_class"] == "BandMapError"
    assert sorted(p.name for p in out.glob("*.classes.tif")) == [f"scene_{i:02d}.classes.tif" for i in range(3)]
    # all five were marked running before the first result came back (the job's dask.scenes_in_flight)
    assert max(r["started_at"] for r in rows.values() if r["status"] == "done") < min(
        r["finished_at"] for r in rows.values() if r["status"] == "done")


@pytest.mark.slow
def test_kill_9_with_scenes_in_flight_then_rerun(tmp_path: Path, make_geotiff, dask_client) -> None:
    archive = make_archive(tmp_path, make_geotiff, "archive", 5)
    job = write_job(tmp_path, {"folder": str(archive)}, tmp_path / "unused", model=SLOW)
    reference = tmp_path / "reference"
    assert run_job(job, out=reference, client=dask_client, allow_factory=True, progress=False,
                   scenes_in_flight=1).exit_code == EXIT_OK

    out = tmp_path / "out"
    proc = cli("run", str(job), "--allow-factory", "--out", str(out), "--scenes-in-flight", "3")
    _wait(lambda: sum(r["status"] == "running" for r in manifest_rows(out)) >= 2, "two scenes running at once")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    _kill_group(proc)
    rows = {r["item_id"]: r for r in manifest_rows(out)}
    done_before = {i for i, r in rows.items() if r["status"] == "done"}
    status = CliRunner().invoke(main, ["status", str(job), "--out", str(out)])
    assert status.exit_code == 0 and status.output.count("interrupted") >= 2, status.output

    rerun = cli("run", str(job), "--allow-factory", "--out", str(out), "--scenes-in-flight", "3")
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == EXIT_OK, stderr
    assert f"{5 - len(done_before)} done, {len(done_before)} up to date, 0 failed" in stdout
    assert {r["status"] for r in manifest_rows(out)} == {"done"}
    assert product_checksums(out) == product_checksums(reference)
    assert not [p for p in out.rglob("*") if ".sw-tmp-" in p.name]
