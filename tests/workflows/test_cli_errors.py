"""Bad input through the real CLI: one line naming the file and the problem, non-zero exit, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCENEWATCH = Path(sys.executable).parent / "scenewatch"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCENEWATCH), *args], capture_output=True, text=True, timeout=300, cwd=REPO)


def assert_refused(run: subprocess.CompletedProcess[str], out: Path, *fragments: str) -> None:
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("scenewatch: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert not list(out.glob("*")) if out.exists() else True


def bad_scenes(make_geotiff, tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    good = make_geotiff("good.tif", shape=(4, 256, 256), blocksize=64)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    damaged = tmp_path / "damaged.tif"  # header and last block intact, blocks in the middle overwritten
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 3 : 2 * len(raw) // 3] = b"Z" * (2 * len(raw) // 3 - len(raw) // 3)
    damaged.write_bytes(bytes(raw))
    return {
        "not a raster": (text, [], ["notes.tif", "not a readable raster"]),
        "damaged inside": (damaged, [], ["damaged.tif", "cannot be read", "truncated or corrupt"]),
        "truncated": (cut, [], ["cut.tif", "truncated"]),
        "no crs": (make_geotiff("nocrs.tif", crs=None), [], ["nocrs.tif", "no CRS", "set --assume-crs"]),
        "band out of range": (good, ["--bands", "red=1,nir=7"], ["good.tif", "nir=7", "4 band"]),
        "too many pixels": (good, ["--max-pixels", "1000"], ["good.tif", "over the limit", "raise --max-pixels"]),
    }


@pytest.mark.slow
def test_bad_inputs_are_refused_with_one_line(make_geotiff, tmp_path):
    for name, (scene, extra, fragments) in bad_scenes(make_geotiff, tmp_path).items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        run = run_cli("predict", str(scene), "--model", "vegetation", "--out", str(out), "--quiet",
                      *(extra or ["--bands", "naip"]))
        assert_refused(run, out, *fragments)


def test_both_entry_points_run_the_cli():
    """The installed script (``workflows.cli:main``) and ``python -m workflows.cli``; every command's help is
    checked in tests/workflows/cli/test_help.py."""
    for command in ([str(SCENEWATCH)], [sys.executable, "-m", "workflows.cli"]):
        run = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=300, cwd=REPO)
        assert run.returncode == 0 and "Example" in run.stdout and "Usage: scenewatch" in run.stdout, run.stderr


def test_a_usage_error_exits_2():
    run = run_cli("predict", "examples/data/m_4709963_se_14_1_20200831.tif", "--out", "unused", "--precision", "fp64")
    assert run.returncode == 2 and "Invalid value for '--precision'" in run.stderr
