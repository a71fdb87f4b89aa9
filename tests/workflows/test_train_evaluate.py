"""scenewatch train / evaluate end to end on generated scenes: the loss falls, the bundle loads and predicts
through predict_scene, evaluation counts pixels as an independent count does, the CLI validates its config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.config import EvaluateConfig, PredictConfig
from pipeline.models.bundle import load_bundle, read_spec
from workflows.cli import main
from workflows.evaluate import evaluate_scene
from workflows.scene import plan_scene, predict_scene
from workflows.train import TrainConfig, train


@pytest.fixture
def labelled(make_geotiff, tmp_path):
    """A one-band scene with bright 12-20 px squares (class 1) on a darker textured background, and its
    label raster; a nodata stripe along the top."""
    from tests.conftest import textured

    rng = np.random.default_rng(3)
    h, w = 192, 256
    labels = np.zeros((h, w), dtype=np.uint8)
    for _ in range(40):
        size = int(rng.integers(12, 21))
        r, c = int(rng.integers(8, h - size)), int(rng.integers(0, w - size))
        labels[r : r + size, c : c + size] = 1
    image = 300 + 400 * textured((h, w), seed=5) + 900.0 * labels.astype(np.float64) + rng.normal(0, 40, (h, w))
    scene = make_geotiff("scene.tif", data=image[None], nodata=0, nodata_box=(0, 6, 0, w))
    label_path = make_geotiff("labels.tif", data=labels[None], dtype="uint8")
    return scene, label_path, labels


def _config(scene, label_path, out, **kw) -> TrainConfig:
    values = {"scenes": (str(scene),), "labels": (str(label_path),), "bands": "pan=1",
              "classes": ("background", "square"), "out": str(out), "epochs": 4, "batch_size": 4, "chip_size": 64,
              "chips_per_epoch": 16, "block_size": 64, "val_fraction": 0.25, "learning_rate": 3e-3, "seed": 1}
    return TrainConfig(**(values | kw))


@pytest.mark.slow
def test_tiny_training_lowers_the_loss_and_its_bundle_predicts(labelled, tmp_path, dask_client):
    scene, label_path, labels = labelled
    run = train(_config(scene, label_path, tmp_path / "squares"), progress=False)
    losses = [r["train_loss"] for r in run.result.history]
    assert losses[-1] < 0.75 * losses[0], losses

    spec = read_spec(run.bundle)
    assert spec.bands == ("pan",) and spec.class_names == ("background", "square")
    assert spec.mean is not None and spec.mean[0] > 300  # statistics of the raw training pixels
    training = spec.properties["scenewatch:extra"]["training"]
    assert len(training["history"]) == len(losses) and training["best_epoch"] >= 1
    assert spec.properties["scenewatch:extra"]["data"] == [
        {"scene": "scene.tif", "labels": "labels.tif", "label_attribute": None, "region": None}]
    # No pixel of a validation block in a training block.
    blocks = training["train_blocks"] + training["validation_blocks"]
    cover = np.zeros(labels.shape, dtype=int)
    for _, r, c, h, w in blocks:
        cover[r : r + h, c : c + w] += 1
    assert (cover == 1).all() and len(training["validation_blocks"]) == 3

    model = load_bundle(run.bundle, precision="fp32")
    assert model.info.bands == ("pan",)
    config = PredictConfig(bands="pan=1", precision="fp32")
    result = predict_scene(plan_scene(scene, str(run.bundle), config), tmp_path / "pred", client=dask_client,
                           progress=False)
    import rasterio

    with rasterio.open(result.classes_path) as src:
        predicted = src.read(1)
    assert (predicted[:6] == 255).all()  # nodata stays nodata
    assert set(np.unique(predicted[6:])) <= {0, 1}

    # Evaluation on the stitched prediction equals an independent pixel count on the same raster.
    ev = evaluate_scene(scene, str(run.bundle), label_path, EvaluateConfig(predict=config), client=dask_client,
                        progress=False)
    expected = [[int(np.sum((labels[6:] == t) & (predicted[6:] == p))) for p in (0, 1)] for t in (0, 1)]
    assert [list(r) for r in ev.pixels.confusion] == expected
    assert ev.unknown_pixels == 6 * labels.shape[1]


@pytest.mark.slow
def test_training_is_reproducible_with_a_seed(labelled, tmp_path):
    scene, label_path, _ = labelled
    # Any smp architecture and encoder: a small one keeps the test short.
    kw = {"epochs": 1, "chips_per_epoch": 8, "val_fraction": 0.0, "arch": "Linknet",
          "encoder": "tu-mobilenetv3_small_050"}
    a = train(_config(scene, label_path, tmp_path / "a", **kw), progress=False)
    b = train(_config(scene, label_path, tmp_path / "b", **kw), progress=False)
    assert read_spec(a.bundle).sha256 == read_spec(b.bundle).sha256
    c = train(_config(scene, label_path, tmp_path / "c", **kw, seed=2), progress=False)
    assert read_spec(c.bundle).sha256 != read_spec(a.bundle).sha256


@pytest.mark.slow
def test_fine_tune_with_frozen_encoder_keeps_the_encoder(labelled, tmp_path):
    scene, label_path, _ = labelled
    kw = {"epochs": 1, "chips_per_epoch": 8, "val_fraction": 0.0, "arch": "Linknet",
          "encoder": "tu-mobilenetv3_small_050"}
    base = train(_config(scene, label_path, tmp_path / "base", **kw), progress=False)
    tuned = train(_config(scene, label_path, tmp_path / "tuned", model=str(base.bundle), freeze_encoder=True,
                          classes=("background", "square", "other"), **kw), progress=False)
    before = load_bundle(base.bundle, precision="fp32").network.state_dict()
    after = load_bundle(tuned.bundle, precision="fp32").network.state_dict()
    encoder = [k for k in before if k.startswith("encoder.")]
    assert encoder and all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in encoder)
    assert after["segmentation_head.0.weight"].shape[0] == 3  # new head for three classes
    decoder = [k for k in before if k.startswith("decoder.") and k.endswith("weight")]
    assert any(not np.array_equal(before[k].numpy(), after[k].numpy()) for k in decoder)


def test_train_config_file_refuses_unknown_keys(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"scenes": ["a.tif"], "labels": ["a.geojson"], "out": "m", "epoch": 3}))
    result = CliRunner().invoke(main, ["train", "--config", str(path)])
    assert result.exit_code == 2 and "epoch: Extra inputs are not permitted" in result.output


def test_train_needs_one_labels_file_per_scene(tmp_path):
    result = CliRunner().invoke(main, ["train", "--scene", "a.tif", "--scene", "b.tif", "--labels", "a.tif",
                                       "--out", str(tmp_path / "m"), "--classes", "a,b"])
    assert result.exit_code == 2 and "2 scene(s) but 1 label file(s)" in result.output


@pytest.mark.slow
def test_evaluate_cli_json_with_vector_labels_and_objects(tmp_path, make_geotiff):
    """The built-in vegetation model on a scene whose vegetation is two rectangles: pixel metrics and
    objects are exact."""
    import geopandas as gpd
    from rasterio.transform import from_origin
    from shapely import box

    h, w = 64, 96
    veg = np.zeros((h, w), dtype=bool)
    veg[8:24, 8:40] = True
    veg[40:56, 60:90] = True
    data = np.stack([np.where(veg, 300, 1500), np.full((h, w), 800), np.full((h, w), 800),
                     np.where(veg, 3000, 1600)])
    scene = make_geotiff("veg.tif", data=data)
    t = from_origin(500000.0, 4000000.0, 10.0, 10.0)

    def rect(r0, r1, c0, c1):
        x0, y0 = t * (c0, r0)
        x1, y1 = t * (c1, r1)
        return box(x0, y1, x1, y0)

    # Truth: the first rectangle exactly, the second one shifted by 20 columns (IoU 10/50 < 0.5).
    path = tmp_path / "veg.geojson"
    gpd.GeoDataFrame({"cls": ["vegetation", "vegetation"]}, geometry=[rect(8, 24, 8, 40), rect(40, 56, 40, 70)],
                     crs="EPSG:32633").to_crs("EPSG:4326").to_file(path)
    result = CliRunner().invoke(main, ["evaluate", str(scene), "--model", "vegetation", "--labels", str(path),
                                       "--label-attribute", "cls", "--bands", "naip", "--json", "-q",
                                       "--workers", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    truth = np.zeros((h, w), dtype=bool)
    truth[8:24, 8:40] = True
    truth[40:56, 40:70] = True
    expected = [[int(np.sum(~truth & ~veg)), int(np.sum(~truth & veg))],
                [int(np.sum(truth & ~veg)), int(np.sum(truth & veg))]]
    assert report["pixels"]["confusion_matrix"]["values"] == expected
    objects = report["objects"][0]
    assert (objects["true_positives"], objects["false_positives"], objects["false_negatives"]) == (1, 1, 1)


def test_example_train_config_is_valid_and_flags_override_it():
    from pathlib import Path

    from workflows.train import load_train_config

    path = Path(__file__).resolve().parents[2] / "workflows" / "train_example.yaml"
    config = load_train_config(path, epochs=2)
    assert config.epochs == 2 and config.classes == ("background", "building") and config.region == (0, 0, 900, 600)
    assert config.options.chip_size == 128
