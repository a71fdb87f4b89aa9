"""Hostile and broken inputs (issue 15): each case gets one clear error and leaves nothing behind."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.errors import ConfigError, OutputError
from pipeline.inference.read import SceneMeta
from tests.workflows.helpers import make_archive, sha256, write_job
from tiles.grid import PixelWindow
from workflows.job import MAX_JOB_NODES, load_job


def _laughs(levels: int) -> str:
    """A job file whose model kwargs are a 'billion laughs' of ``9 ** levels`` strings in a few hundred bytes."""
    lines = ['    l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(["version: 1", "inputs: {folder: .}", "model:", '  factory: "os:getcwd"', "  kwargs:",
                      *lines, "outputs: {folder: out}", ""])


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    job = tmp_path / "laughs.yaml"
    job.write_text(_laughs(10))  # 9 ** 10 = 3.5 billion strings
    assert job.stat().st_size < 1000
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"laughs.yaml line \d+: its aliases expand to more than 100,000 values"):
        load_job(job)
    assert time.perf_counter() - started < 5


def test_aliases_that_expand_to_a_normal_size_are_fine(tmp_path: Path) -> None:
    job = tmp_path / "anchors.yaml"
    job.write_text(_laughs(3))  # 729 strings
    assert MAX_JOB_NODES > 9 ** 3
    assert load_job(job, allow_factory=True).spec.model.kwargs["l2"][0][0] == ["x"] * 9


# ----------------------------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``mount(kib)``: a fresh tmpfs of that size, really full when it is full (CI runs as root). Skipped
    where this machine does not let the test mount one."""
    mounts: list[Path] = []

    def mount(kib: int) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'}); "
                        "the full-disk cases need one")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_never_publishes_a_broken_raster(small_disk: Callable[[int], Path]) -> None:
    """The COG copy filling the disk made GDAL leave unreadable files that were renamed into place: at every
    size from too small for the staging file to large enough, the final path holds either nothing or the
    whole raster, and a failure is an OutputError that says the disk is full."""
    from pipeline.inference.raster import CogWriter

    meta = _meta(1024, 1024)
    data = np.random.default_rng(7).integers(0, 255, (2, 1024, 1024), dtype=np.uint8)  # incompressible
    outcomes = []
    for kib in range(1500, 6600, 300):
        disk = small_disk(kib)
        target = disk / "scene.proba.tif"
        try:
            with CogWriter(target, meta, count=2, dtype="uint8", nodata=255, resampling="average") as writer:
                for row in range(0, 1024, 256):
                    writer.write(PixelWindow(row, 0, 256, 1024), data[:, row:row + 256])
                writer.finish()
        except OutputError as err:
            assert f"no space left in {disk}" in str(err) and "MiB needed" in str(err), str(err)
            assert not target.exists(), f"{kib} KiB: a failed write left {target.name}"
            outcomes.append("full")
        else:
            with rasterio.open(target) as src:
                np.testing.assert_array_equal(src.read(), data)
            outcomes.append("written")
        assert sorted(p.name for p in disk.iterdir()) in ([], ["scene.proba.tif"]), f"{kib} KiB: leftovers"
    assert "full" in outcomes and "written" in outcomes, outcomes


def _meta(height: int, width: int) -> SceneMeta:
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    return SceneMeta(path="synthetic", crs=CRS.from_epsg(32614), transform=from_origin(500000, 5000000, 1, 1),
                     height=height, width=width, count=1, dtype="uint8", nodata=None, block_height=256,
                     block_width=256)


@pytest.mark.slow
def test_a_batch_stops_cleanly_on_a_full_disk_and_a_rerun_finishes_it(
        tmp_path: Path, small_disk: Callable[[int], Path], make_geotiff: Callable[..., Path]) -> None:
    """A full disk in a batch was a 60-line traceback, 'unexpected error', the other scenes never tried and
    `status` saying the run did not finish. Now: the scene is recorded failed with one line naming the folder,
    the run stops with exit code 5, and once space is freed a rerun finishes with the same products."""
    from workflows.batch import EXIT_DISK_FULL, run_job
    from workflows.manifest import MANIFEST_NAME, open_manifest

    archive = make_archive(tmp_path, make_geotiff, "archive", 3)
    reference = tmp_path / "reference"
    assert run_job(write_job(tmp_path, {"folder": str(archive)}, reference, name="ref"), progress=False).exit_code == 0
    # from a disk that holds nothing to one that holds all but the last scene (the COGs are assembled from
    # compressed pieces: a scene needs about twice its COGs, 0.2 MiB here, no uncompressed staging raster)
    for kib in range(300, 2600, 100):
        out = small_disk(kib)
        # one scene at a time: with several in flight, those already started also fail on the full disk
        summary = run_job(write_job(tmp_path, {"folder": str(archive)}, out, name="full"), progress=False,
                          scenes_in_flight=1)
        if summary.exit_code == EXIT_DISK_FULL and summary.count("done") >= 1:
            break
    else:
        pytest.fail("no disk size between 300 and 2500 KiB stopped the batch after its first scene")
    failed = [o for o in summary.outcomes if o.status == "failed"]
    assert len(failed) == 1 and failed[0].error_class == "DiskFullError"
    assert f"no space left in {out}" in failed[0].message and "\n" not in failed[0].message
    assert len(summary.outcomes) < 3 or summary.outcomes[-1] is failed[0]  # nothing tried after it
    with open_manifest(out / MANIFEST_NAME) as manifest:
        assert manifest.runs("full")[-1].exit_code == EXIT_DISK_FULL  # `status` shows a run that ended, with its code
    done_before = {p.name: sha256(p) for p in out.glob("*.tif")
                   if p.name.startswith(tuple(o.item_id + "." for o in summary.outcomes if o.status == "done"))}

    subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)  # space freed
    rerun = run_job(write_job(tmp_path, {"folder": str(archive)}, out, name="full"), progress=False)
    assert rerun.exit_code == 0 and rerun.count("failed") == 0
    assert {o.item_id for o in rerun.outcomes if o.status == "skipped"} == {n.split(".")[0] for n in done_before}
    for name, digest in done_before.items():
        assert sha256(out / name) == digest
    for product in sorted(reference.glob("*.tif")):
        assert sha256(out / product.name) == sha256(product), product.name
    assert not list(out.rglob("*.sw-tmp-*"))


# --------------------------------------------------------------------------------------------- batch rooms


@pytest.mark.slow
def test_a_batch_writing_into_its_input_folder_does_not_take_its_products_for_scenes(
        tmp_path: Path, make_geotiff: Callable[..., Path]) -> None:
    from workflows.batch import run_job

    archive = make_archive(tmp_path, make_geotiff, "archive", 2)
    job = write_job(tmp_path, {"folder": str(archive), "pattern": "**/*.tif"}, archive)  # out == in
    first = run_job(job, progress=False)
    assert first.exit_code == 0 and first.count("done") == 2
    again = run_job(job, progress=False)
    assert sorted(o.item_id for o in again.outcomes) == ["scene_00", "scene_01"]
    assert again.count("skipped") == 2


@pytest.mark.slow
def test_a_symlinked_folder_inside_the_output_folder_is_never_written_through(
        tmp_path: Path, make_geotiff: Callable[..., Path]) -> None:
    from workflows.batch import run_job

    archive = make_archive(tmp_path, make_geotiff, "archive", 1)
    (tmp_path / "archive" / "scene_00.tif").rename(tmp_path / "archive" / "scene_2009.tif")
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "2009").symlink_to(elsewhere)
    job = write_job(tmp_path, {"folder": str(archive)}, out, outputs={"folder": str(out),
                                                                       "naming": "{year}/{scene_id}"})
    summary = run_job(job, progress=False)
    assert summary.exit_code == 3 and summary.count("failed") == 1
    assert "is a symbolic link" in summary.outcomes[0].message
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_fifo_or_a_device_in_the_archive_fails_that_scene_only(
        tmp_path: Path, make_geotiff: Callable[..., Path]) -> None:
    import os

    from workflows.batch import run_job

    archive = make_archive(tmp_path, make_geotiff, "archive", 1)
    os.mkfifo(archive / "fifo.tif")
    (archive / "zero.tif").symlink_to("/dev/zero")
    summary = run_job(write_job(tmp_path, {"folder": str(archive)}, tmp_path / "out"), progress=False)
    by_id = {o.item_id: o for o in summary.outcomes}
    assert by_id["scene_00"].status == "done"
    for bad in ("fifo", "zero"):
        assert by_id[bad].status == "failed" and "not a regular file" in by_id[bad].message


@pytest.mark.slow
def test_a_scene_named_like_an_option_is_processed(tmp_path: Path, make_geotiff: Callable[..., Path]) -> None:
    """``-rf.tif`` made the GeoPackage writer refuse the layer name and stopped the batch."""
    from workflows.batch import run_job

    archive = make_archive(tmp_path, make_geotiff, "archive", 1)
    (archive / "scene_00.tif").rename(archive / "-rf.tif")
    out = tmp_path / "out"
    summary = run_job(write_job(tmp_path, {"folder": str(archive)}, out, products={"vectors": {}}), progress=False)
    assert summary.exit_code == 0, summary.outcomes
    (layer,) = out.glob("*.gpkg")
    assert not layer.name.startswith("-")


@pytest.mark.slow
def test_a_scene_past_its_time_budget_is_stopped_and_leaves_nothing(
        tmp_path: Path, make_geotiff: Callable[..., Path]) -> None:
    from pipeline.config import PredictConfig
    from pipeline.errors import SceneTimeoutError
    from pipeline.models.contract import ModelRef
    from workflows.scene import plan_scene, predict_scene

    scene = make_geotiff("slow.tif", shape=(4, 600, 600))
    slow = ModelRef.from_factory("tests.workflows.slow_model:slow_vegetation", delay=3.0)
    plan = plan_scene(scene, slow, PredictConfig(bands="naip", tile_size=256, workers=1, timeout=2))
    started = time.perf_counter()
    with pytest.raises(SceneTimeoutError, match=r"scene slow: not finished after 2 s, the scene's `timeout`"):
        predict_scene(plan, tmp_path / "out", progress=False)
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "out").exists()  # the folder this run made is gone with what it wrote


@pytest.mark.slow
def test_a_later_predict_removes_what_a_killed_one_left_and_nothing_else(
        tmp_path: Path, make_geotiff: Callable[..., Path]) -> None:
    import sys

    from pipeline.atomic import temp_path_for
    from pipeline.config import PredictConfig
    from workflows.scene import plan_scene, predict_scene

    out = tmp_path / "out"
    out.mkdir()
    code = ("import sys; from pathlib import Path; from pipeline.atomic import temp_path_for; "
            "p = temp_path_for(Path(sys.argv[1])); p.write_text('half'); print(p)")
    dead = Path(subprocess.run([sys.executable, "-c", code, str(out / "scene.classes.staging.tif")], check=True,
                               capture_output=True, text=True).stdout.strip())  # its process has ended
    live = temp_path_for(out / "other.gpkg")  # this process's: a run still going
    live.write_text("busy")
    predict_scene(plan_scene(make_geotiff("scene.tif"), "vegetation", PredictConfig(bands="naip", workers=1)),
                  out, progress=False)
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(["scene.classes.tif", "scene.proba.tif", live.name])


def test_an_output_folder_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    from pipeline.atomic import output_folder

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=r"output folder .*a_file/out: a file is in the way"):
        output_folder(blocker / "out")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(read_only)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (not root)")
    try:
        with pytest.raises(OutputError, match=r"output folder .*ro/new: cannot be created \(Read-only file system\)"):
            output_folder(read_only / "new")
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)


# ------------------------------------------------------------------------------------------ job file is code


def test_a_job_file_cannot_run_code_without_the_users_word(tmp_path: Path) -> None:
    """`model.factory: os:system` with `kwargs: {command: ...}` ran the command."""
    from click.testing import CliRunner

    from workflows.cli import main

    canary = tmp_path / "canary"
    job = tmp_path / "evil.yaml"
    job.write_text("version: 1\ninputs: {folder: .}\nmodel:\n  factory: os:system\n"
                   f"  kwargs: {{command: 'touch {canary}'}}\noutputs: {{folder: out}}\n")
    with pytest.raises(ConfigError, match=r"evil.yaml line 4: model.factory 'os:system' would import and run Python"):
        load_job(job)
    result = CliRunner().invoke(main, ["run", str(job)])
    assert result.exit_code == 2 and not canary.exists()
    assert result.output.splitlines()[-1].startswith("scenewatch: error: job evil.yaml line 4: model.factory")
    assert "--allow-factory" in result.output  # the library's `allow_factory`, as the command's flag
    assert load_job(job, allow_factory=True).spec.model.factory == "os:system"  # the user's word


@pytest.mark.slow
def test_a_bug_on_one_scene_is_recorded_and_the_batch_goes_on(
        tmp_path: Path, make_geotiff: Callable[..., Path]) -> None:
    from workflows.batch import EXIT_ERROR, run_job

    archive = make_archive(tmp_path, make_geotiff, "archive", 3)
    make_geotiff("archive/scene_01.tif", data=np.full((4, 200, 300), 7), dtype="uint16")  # hits the bug
    model = {"factory": "tests.workflows.buggy_model:buggy_vegetation"}
    summary = run_job(write_job(tmp_path, {"folder": str(archive)}, tmp_path / "out", model=model),
                      progress=False, allow_factory=True)
    by_id = {o.item_id: o for o in summary.outcomes}
    assert by_id["scene_00"].status == by_id["scene_02"].status == "done"
    bug = by_id["scene_01"]
    assert bug.status == "failed" and bug.unexpected
    assert bug.message.startswith("scene scene_01: unexpected error, please report it: KeyError")
    assert summary.exit_code == EXIT_ERROR


def test_a_bug_is_one_line_unless_the_user_asks_for_the_traceback() -> None:
    import click
    from click.testing import CliRunner

    from workflows.cli import main
    from workflows.cli.options import report_errors

    @main.command("explode-for-test", hidden=True)
    @report_errors
    def explode() -> None:
        {}["tile"]  # the bug

    try:
        quiet = CliRunner().invoke(main, ["explode-for-test"])
        assert quiet.exit_code == 1 and quiet.exception is not None and isinstance(quiet.exception, SystemExit)
        assert quiet.output.strip().splitlines() == [
            "scenewatch: error: unexpected error, please report it: KeyError: 'tile' (rerun with --debug for the "
            "traceback)"]
        loud = CliRunner().invoke(main, ["--debug", "explode-for-test"])
        assert isinstance(loud.exception, KeyError)  # the traceback reaches the user
    finally:
        main.commands.pop("explode-for-test")
        assert isinstance(main, click.Group)


def test_the_untrusted_scene_limits_are_options_of_the_commands(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from workflows.cli import main

    scene = Path(__file__).resolve().parents[2] / "examples" / "data" / "m_4709963_se_14_1_20200831.tif"
    result = CliRunner().invoke(main, ["predict", str(scene), "--bands", "naip", "-o", str(tmp_path / "out"),
                                       "--max-ratio", "0.5", "--format", "none"])
    assert result.exit_code == 1
    assert "1.1 times its size (limit 0.5)" in result.output and "raise --max-ratio" in result.output
    assert not (tmp_path / "out").exists()


def test_dates_off_the_common_grid_can_be_refused(tmp_path: Path) -> None:
    """The bundled NAIP pair is 0.2 px apart (origins 485899 and 485900 m at 5 m): warned about by default,
    refused when `max_offset` asks for closer."""
    from pipeline.config import ChangeConfig
    from pipeline.errors import InvalidSceneError
    from workflows.change import detect_change

    data = Path(__file__).resolve().parents[2] / "examples" / "data"
    before, after = data / "m_4709963_se_14_1_20090818.tif", data / "m_4709963_se_14_1_20200831.tif"
    with pytest.raises(InvalidSceneError, match=r"px \(columns\) off the common grid, over `max_offset` \(0.1 px\)"):
        detect_change(before, after, "vegetation", tmp_path, ChangeConfig(max_offset=0.1))


@pytest.mark.slow
def test_the_time_budget_and_the_grid_offset_limit_are_flags(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from workflows.cli import main

    data = Path(__file__).resolve().parents[2] / "examples" / "data"
    before, after = data / "m_4709963_se_14_1_20090818.tif", data / "m_4709963_se_14_1_20200831.tif"
    late = CliRunner().invoke(main, ["predict", str(after), "--bands", "naip", "-o", str(tmp_path / "a"),
                                     "--workers", "1", "--timeout", "0.001", "--format", "none"])
    assert late.exit_code == 1, late.output
    assert "not finished after 0.001 s, the scene's --timeout" in late.output
    off = CliRunner().invoke(main, ["change", str(before), str(after), "--bands", "naip", "-o", str(tmp_path / "b"),
                                    "--max-offset", "0.1"])
    assert off.exit_code == 1, off.output
    assert "off the common grid, over --max-offset (0.1 px)" in off.output
