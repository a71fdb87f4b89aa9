"""Every command's errors through the CLI (CliRunner; nothing here starts a cluster): bad flag values, missing
files, bad band maps and areas, library errors shown with the command's own flags, and exit codes.

Our errors are one line, ``scenewatch: error: ...``, with the error's exit code (2 for a bad option value or
job file, 1 for a bad input file or model); click's own usage errors (an unknown flag, a value outside a
choice, a word for a number) keep click's format and also exit 2.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner, Result
from rasterio.crs import CRS
from rasterio.transform import from_origin

from workflows.cli import main


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(code: int, *args: str | Path, says: tuple[str, ...] = ()) -> str:
    """Run, expect one line ``scenewatch: error: ...`` holding every fragment of ``says`` and ``code``."""
    result = invoke(*args)
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("scenewatch: error: "), result.stderr
    for fragment in says:
        assert fragment in lines[0], lines[0]
    return lines[0]


def usage_error(*args: str | Path, says: str) -> None:
    """click's own refusal of a flag: exit code 2, the usage line and the flag named."""
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Usage: " in result.stderr and says in result.stderr, result.stderr


def write_classes(path: Path, seed: int = 0, crs: str | None = "EPSG:32633", dtype: str = "uint8") -> Path:
    """A small class raster as predict writes them: class names in the tags, nodata 255."""
    data = np.random.default_rng(seed).integers(0, 2, (1, 64, 64)).astype(dtype)
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": dtype, "nodata": 255,
               "transform": from_origin(500000.0, 4000000.0, 10.0, 10.0)}
    if crs is not None:
        profile["crs"] = CRS.from_user_input(crs)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(SCENEWATCH_CLASSES="other,forest")
    return path


@pytest.fixture
def scene(make_geotiff) -> Path:
    return make_geotiff("scene.tif", shape=(4, 64, 64))


@pytest.fixture
def nocrs(make_geotiff) -> Path:
    return make_geotiff("nocrs.tif", shape=(4, 64, 64), crs=None)


# -------------------------------------------------------------------------------------------------- predict


def test_predict_errors(scene: Path, nocrs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ("predict", scene, "--out", out, "--bands", "naip", "-q")
    refused(1, "predict", tmp_path / "missing.tif", "--out", out, says=("scene missing.tif: no such file",))
    refused(1, "predict", nocrs, "--out", out, "--bands", "naip",
            says=("nocrs.tif: no CRS", "set --assume-crs (e.g. EPSG:32618)"))
    refused(1, *base, "--assume-crs", "nonsense", says=("--assume-crs 'nonsense' is not a CRS",))
    refused(1, *base, "--max-pixels", "100", says=("over the limit of 100", "raise --max-pixels"))
    refused(2, "predict", scene, "--out", out, "--bands", "red,,nir", says=("band map 'red,,nir': cannot read ''",))
    refused(2, *base, "--min-area", "lots", says=("area 'lots'", "0.5ha"))
    refused(2, *base, "--tile-size", "0", says=("--tile-size: Input should be greater than 0",))
    refused(2, *base, "--halo", "4", "--overlap", "8", says=("--overlap (8) cannot be larger than --halo (4)",))
    refused(2, *base, "--format", "shp",
            says=("--format: format 'shp': unknown; choose from gpkg, parquet, fgb, geojson",))
    refused(2, *base, "--model-option", "threshold", says=("--model-option 'threshold': write KEY=VALUE",))
    usage_error(*base, "--precision", "fp64", says="Invalid value for '--precision'")
    usage_error(*base, "--tile-size", "big", says="Invalid value for '--tile-size'")
    usage_error("predict", scene, says="Missing option '--out'")
    assert not out.exists()  # every refusal came before any output


def test_predict_bands_as_names_in_file_order(scene: Path, tmp_path: Path) -> None:
    """``red,green,blue`` is bands 1, 2, 3, as for ``models init``; the model then misses its nir band."""
    refused(1, "predict", scene, "--out", tmp_path / "out", "--bands", "red,green,blue",
            says=("the model needs band(s) nir but the band map has red=1,green=2,blue=3", "set --bands"))


# ------------------------------------------------------------------------------------------------ vectorize


def test_vectorize_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    classes = write_classes(tmp_path / "a.classes.tif")
    refused(1, "vectorize", tmp_path / "missing.tif", "--out", out, says=("missing.tif: no such file",))
    refused(1, "vectorize", write_classes(tmp_path / "nocrs.classes.tif", crs=None), "--out", out,
            says=("no CRS", "--assume-crs"))
    refused(1, "vectorize", write_classes(tmp_path / "f.classes.tif", dtype="float32"), "--out", out,
            says=("float32 pixels are not classes",))
    refused(2, "vectorize", classes, "--out", out, "--classes", "water", says=("no class named 'water'",))
    refused(2, "vectorize", classes, "--out", out, "--min-area", "lots", says=("area 'lots'",))
    refused(2, "vectorize", classes, "--out", out, "--format", "gpkg,shp", says=("--format: format 'shp': unknown",))
    refused(2, "vectorize", classes, "--out", out, "--max-polygons", "0",
            says=("--max-polygons: Input should be greater than 0",))
    refused(2, "vectorize", classes, "--out", out, "--attr", "campaign",
            says=("--attr 'campaign': write it as name=value",))
    usage_error("vectorize", classes, "--out", out, "--sieve", "some", says="Invalid value for '--sieve'")
    assert not out.exists()


# ------------------------------------------------------------------------------------------ change, timeline


def test_change_errors(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    refused(1, "change", scene, tmp_path / "missing.tif", "--out", out, says=("scene missing.tif: no such file",))
    refused(2, "change", scene, scene, "--out", out, "--min-area", "lots", says=("area 'lots'",))
    refused(2, "change", scene, scene, "--out", out, "--bands", "red=1,nir", says=("give every band its index",))
    refused(2, "change", scene, scene, "--out", out, "--date-pattern", "(",
            says=("--date-pattern '(': not a regular expression",))
    refused(2, "change", scene, scene, "--out", out, "--sieve", "-1",
            says=("--sieve: Input should be greater than or equal to 0",))
    assert not out.exists()


def test_change_and_timeline_take_areas_with_units(tmp_path: Path) -> None:
    before = write_classes(tmp_path / "a_20200101.classes.tif", seed=0)
    after = write_classes(tmp_path / "b_20210101.classes.tif", seed=1)
    for command in (("change", before, after), ("timeline", before, after)):
        result = invoke(*command, "--out", tmp_path / command[0], "--min-area", "0.5ha", "--no-polygons", "-q")
        assert result.exit_code == 0, result.output


def test_timeline_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = write_classes(tmp_path / "a_20200101.classes.tif", seed=0)
    after = write_classes(tmp_path / "b_20210101.classes.tif", seed=1)
    refused(2, "timeline", before, "--out", out, says=("timeline: 1 scene(s) given",))
    refused(2, "timeline", before, after, "--out", out, "--confirm", "0",
            says=("--confirm: Input should be greater than or equal to 1",))
    refused(2, "timeline", before, after, "--out", out, "--date-pattern", r"(?P<y>\d{4})",
            says=("--date-pattern", "needs a named group year"))
    refused(2, "timeline", before, after, "--out", out, "--min-area", "1 acre", says=("area '1 acre'",))
    usage_error("timeline", "--out", out, says="Missing argument 'SCENES...'")
    assert not out.exists()


# --------------------------------------------------------------------------------------------------- models


def test_models_errors(tmp_path: Path, scene: Path) -> None:
    refused(1, "models", "show", "nope", says=("model 'nope': not a built-in model",))
    refused(2, "models", "show", "water", "--model-option", "threshold", says=("--model-option 'threshold'",))
    usage_error("models", "show", "water", "-o", "threshold=0.2", says="No such option")
    init = ("models", "init", "--arch", "Unet", "--encoder", "resnet18", "--classes", "a,b", "--out", tmp_path / "m")
    refused(2, *init, "--bands", "red,red", says=("band map 'red,red': red named twice",))
    refused(2, *init, "--bands", "red=1,nir=1", says=("two names for one band",))
    refused(2, *init, "--bands", "red,nir", "--mean", "a,b", says=("--mean/--std: numbers separated by commas",))
    usage_error(*init, says="Missing option '--bands'")
    refused(1, "models", "quantize", tmp_path / "nope", "--scene", scene, says=("not a bundle",))
    refused(2, "models", "quantize", tmp_path / "nope", "--scene", scene, "--bands", "x=",
            says=("band map 'x='",))
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------ train, evaluate


def test_train_errors(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    pair = ("train", "--scene", tmp_path / "missing.tif", "--labels", tmp_path / "labels.geojson",
            "--classes", "background,building", "--out", out)
    refused(2, "train", says=("train: give --scene, --labels and --out (or --config FILE)",))
    refused(2, *pair, "--epochs", "0", says=("--epochs: Input should be greater than 0",))
    refused(2, *pair, "--model", "a", "--weights", "b.pt",
            says=("give --model (a bundle) or --weights (a state dict file), not both",))
    refused(2, *pair, "--sampling", "stratified", says=("--sampling: Input should be 'random' or 'balanced'",))
    refused(2, *pair, "--region", "1,2", says=("region '1,2': write ROW,COL,HEIGHT,WIDTH",))
    refused(2, *pair, "--bands", "pan,,x", says=("band map 'pan,,x'",))
    refused(2, "train", "--config", tmp_path / "missing.yaml", says=("train config missing.yaml: cannot be read",))
    refused(1, *pair, "--bands", "pan", says=("scene missing.tif: no such file",))
    assert not out.exists()


def test_evaluate_errors(scene: Path, nocrs: Path, tmp_path: Path) -> None:
    labels = write_classes(tmp_path / "labels.tif")
    base = ("evaluate", scene, "--model", "vegetation", "--labels", labels, "--bands", "naip", "-q")
    refused(1, "evaluate", tmp_path / "missing.tif", "--model", "vegetation", "--labels", labels,
            says=("scene missing.tif: no such file",))
    refused(1, "evaluate", nocrs, "--model", "vegetation", "--labels", labels, says=("no CRS", "--assume-crs"))
    refused(2, *base, "--iou-threshold", "2", says=("--iou-threshold: Input should be less than or equal to 1",))
    refused(2, *base, "--region", "0,0,0", says=("region '0,0,0'",))
    refused(2, *base, "--bands", "naip,red", says=("band map 'naip,red': naip is a preset",))
    refused(1, *base, "--model-option", "treshold=0.2", says=("unknown option(s) treshold",))
    usage_error("evaluate", scene, "--model", "vegetation", says="Missing option '--labels'")


# ---------------------------------------------------------------------------------------------- run, status


def test_run_and_status_errors(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("version: 1\nname: x\ninputs:\n  folder: .\nmodel:\n  name: vegetation\nbandz: naip\n"
                   "outputs:\n  folder: out\n")
    sigterm = signal.getsignal(signal.SIGTERM)  # `run` installs its own handler
    try:
        for command in ("run", "status"):
            refused(2, command, tmp_path / "missing.yaml", says=("job missing.yaml: cannot be read",))
            refused(2, command, job, says=("job job.yaml", "bandz", "line 7"))
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert not (tmp_path / "out").exists()


def test_unknown_command_is_a_usage_error() -> None:
    usage_error("predcit", says="No such command 'predcit'")
