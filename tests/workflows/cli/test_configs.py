"""Flags become the engine's typed configs once, and the engine gets values: predict plans the scene once and
hands that plan to predict_scene. The engine is replaced by recorders here, so nothing runs on Dask."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.config import ChangeConfig, EvaluateConfig, PredictConfig, TimelineConfig, VectorizeConfig
from tests.conftest import NAIP_2009, NAIP_2020
from workflows.cli import main


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """Record what the CLI hands the engine; each engine function returns just enough to be printed."""
    import workflows.change
    import workflows.cluster
    import workflows.evaluate
    import workflows.scene
    import workflows.vectorize

    seen: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    real_plan = workflows.scene.plan_scene

    def plan_scene(*args: Any, **kwargs: Any) -> Any:
        seen.append(("plan_scene", args, kwargs))
        return real_plan(*args, **kwargs)

    def predict_scene(*args: Any, **kwargs: Any) -> Any:
        seen.append(("predict_scene", args, kwargs))
        out = Path(args[1])
        return SimpleNamespace(scene_id="s", tiles_planned=1, tiles_skipped=0, seconds=0.0,
                               classes_path=out / "s.classes.tif", proba_path=out / "s.proba.tif")

    def vectorize_scene(*args: Any, **kwargs: Any) -> Any:
        seen.append(("vectorize_scene", args, kwargs))
        return SimpleNamespace(scene_id="s", features=0, tiles=1, seconds=0.0, paths={})

    def record(name: str) -> Any:
        def engine(*args: Any, **kwargs: Any) -> Any:
            seen.append((name, args, kwargs))
            raise SystemExit(0)  # what it returned is not the point here
        return engine

    @contextlib.contextmanager
    def dask_client(*args: Any, **kwargs: Any) -> Iterator[str]:
        seen.append(("dask_client", args, kwargs))
        yield "client"

    monkeypatch.setattr(workflows.scene, "plan_scene", plan_scene)
    monkeypatch.setattr(workflows.scene, "predict_scene", predict_scene)
    monkeypatch.setattr(workflows.vectorize, "vectorize_scene", vectorize_scene)
    monkeypatch.setattr(workflows.cluster, "dask_client", dask_client)
    monkeypatch.setattr(workflows.change, "detect_change", record("detect_change"))
    monkeypatch.setattr(workflows.change, "run_timeline", record("run_timeline"))
    monkeypatch.setattr(workflows.evaluate, "evaluate_scene", record("evaluate_scene"))
    return seen


def run(*args: str | Path) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_predict_plans_once_and_predicts_that_plan(calls, tmp_path: Path) -> None:
    run("predict", NAIP_2020, "--out", tmp_path, "--bands", "red,green,blue,nir", "--tile-size", "256",
        "--precision", "fp32", "--workers", "2", "--model-option", "threshold=0.25", "--format", "gpkg,GeoParquet",
        "--min-area", "0.5ha", "--classes", "vegetation", "-q")
    names = [name for name, _, _ in calls]
    assert names == ["plan_scene", "dask_client", "predict_scene", "vectorize_scene"]
    (_, (scene, ref, config), _), _, (_, (plan, out), options), (_, (classes, _, layers), vector_options) = calls
    assert config == PredictConfig(bands="red=1,green=2,blue=3,nir=4", tile_size=256, precision="fp32", workers=2)
    assert dict(ref.options) == {"threshold": 0.25}
    assert plan.config is config and plan.scene == str(NAIP_2020) and out == str(tmp_path)
    assert options == {"client": "client", "progress": False, "preload": ("workflows.vectorize", "pandas")}
    assert layers == VectorizeConfig(formats=("gpkg", "parquet"), min_area=5000.0, classes=("vegetation",))
    assert vector_options["client"] == "client" and vector_options["proba_path"] == tmp_path / "s.proba.tif"


def test_predict_without_layers_and_with_defaults(calls, tmp_path: Path) -> None:
    run("predict", NAIP_2020, "--out", tmp_path, "--bands", "naip", "--format", "none")
    assert [name for name, _, _ in calls] == ["plan_scene", "dask_client", "predict_scene"]
    assert calls[0][1][2] == PredictConfig(bands="naip")


def test_change_and_timeline_build_their_configs(calls, tmp_path: Path) -> None:
    run("change", NAIP_2009, NAIP_2020, "--out", tmp_path, "--bands", "red,green,blue,nir", "--min-area", "0.5ha",
        "--sieve", "4", "--no-polygons", "--grid", "first", "--tile-size", "512")
    _, (before, after, model, out, config), _ = calls[-1]
    assert config == ChangeConfig(predict=PredictConfig(bands="red=1,green=2,blue=3,nir=4", tile_size=512),
                                  grid="first", min_area=5000.0, sieve=4, polygons=False)
    run("timeline", NAIP_2009, NAIP_2020, "--out", tmp_path, "--bands", "naip", "--min-area", "1km2",
        "--watch", "vegetation->other", "--confirm", "1", "--name", "nd")
    _, (scenes, model, out, config), _ = calls[-1]
    assert scenes == [str(NAIP_2009), str(NAIP_2020)] and model == "vegetation"
    assert config == TimelineConfig(predict=PredictConfig(bands="naip"), grid="first", min_area=1e6,
                                    watch=("vegetation->other",), confirm=1, name="nd")


def test_evaluate_builds_its_config(calls, tmp_path: Path) -> None:
    run("evaluate", NAIP_2020, "--model", "water", "--labels", "labels.tif", "--bands", "naip", "--region",
        "0,0,100,200", "--objects", "water", "--iou-threshold", "0.3", "--workers", "1", "-q")
    _, (scene, ref, labels, config), options = calls[-1]
    assert ref.source == "water" and labels == "labels.tif" and options["out_dir"] is None
    assert config == EvaluateConfig(predict=PredictConfig(bands="naip", workers=1), region=(0, 0, 100, 200),
                                    object_classes=("water",), iou_threshold=0.3)
