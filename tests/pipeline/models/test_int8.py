"""int8 variants: calibrated on real imagery, checked on load, used by ``auto``, refused when they drift.

The reference is always the same bundle run in fp32 by torch; the int8 variant runs on OpenVINO.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from pipeline.errors import ModelError
from pipeline.models.bundle import load_bundle, read_spec, save_bundle
from pipeline.models.network import AUTO_DRIFT_LIMIT, TorchSegmentationModel
from pipeline.models.quantize import Int8Result, quantize_bundle
from tests.conftest import NAIP_2020
from tests.pipeline.models.test_model_precision import _fit, _unet

torch = pytest.importorskip("torch")
pytest.importorskip("openvino")
pytest.importorskip("nncf")

BANDS = ("red", "green", "blue", "nir")


@pytest.fixture(scope="module")
def naip_crops() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Six 128 px crops spread over the real NAIP sample, and the scene's per-band mean and std."""
    with rasterio.open(NAIP_2020) as src:
        data = src.read(out_dtype="float32")
    mean, std = data.mean(axis=(1, 2)), data.std(axis=(1, 2))
    spots = ((100, 200), (400, 500), (560, 40), (50, 700), (380, 780), (595, 400))
    return np.stack([data[:, r : r + 128, c : c + 128] for r, c in spots]), mean, std


def _save(path: Path, network, mean, std) -> Path:
    return save_bundle(path, network, arch="Unet", encoder="resnet18", bands=BANDS,
                       class_names=("other", "vegetation"), mean=mean.tolist(), std=std.tolist(), tile_size=128,
                       halo=16)


def _settle_batchnorm(network, data, mean, std):
    """BatchNorm running statistics recomputed over ``data`` (torch's ``update_bn``), as training to
    convergence leaves them.

    After a few steps they still lag the weights, and the network in eval mode sees activations far from
    what it was fitted on: int8 then drifts 0.06 where, with settled statistics, it drifts 0.004 (measured
    here); a trained network's statistics are settled.
    """
    x = torch.from_numpy((data - mean[None, :, None, None]) / std[None, :, None, None]).float()
    torch.optim.swa_utils.update_bn([x], network)
    return network.eval()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, naip_crops) -> tuple[Path, Int8Result]:
    """A U-Net briefly fitted to the NAIP sample's NDVI mask, saved as a bundle, with an int8 variant
    calibrated on the same scene. Fitted on crops from all over the scene: fitted on three crops of one
    part, one tile elsewhere drifted 0.18 in int8 (0.002 in bf16), as an undertrained network does."""
    data, mean, std = naip_crops
    network = _settle_batchnorm(_fit(_unet(), data, mean, std, steps=20), data, mean, std)
    path = _save(tmp_path_factory.mktemp("int8") / "trees", network, mean, std)
    return path, quantize_bundle(path, [NAIP_2020], bands="naip", tiles=8)


@pytest.mark.slow
def test_quantize_writes_a_checked_variant_that_auto_picks_within_the_limit(quantized, naip_crops):
    path, result = quantized
    spec = read_spec(path)
    assert spec.int8 is not None and spec.int8.source_sha256 == spec.sha256
    assert (path / spec.int8.model).is_file() and (path / spec.int8.weights).is_file()
    assert result.calibration_tiles == 4 and result.held_out_tiles == 4
    assert result.drift <= AUTO_DRIFT_LIMIT and result.agreement > 0.98
    assert spec.int8.drift == pytest.approx(result.drift, abs=1e-6)

    data = naip_crops[0]
    fp32 = load_bundle(path, precision="fp32").predict(data)
    assert np.abs(fp32[:, 1] - 0.5).mean() > 0.2  # the fit worked: confident, not degenerate
    auto = load_bundle(path)
    assert auto.precision == "int8"  # before measuring: what it would run without measuring
    auto.predict(data)
    int8 = next(m for m in auto.choice.measurements if m.name == "openvino-int8")
    assert not int8.refused and int8.drift <= AUTO_DRIFT_LIMIT  # measured, and the variant was within limits
    out = load_bundle(path, precision="int8").predict(data)
    # OpenVINO must not pin threads: each worker process would pin its one thread to the same first core
    assert auto._int8._compiled.get_property("ENABLE_CPU_PINNING") is False
    drift = float(np.abs(out - fp32).mean())
    assert 0 < drift <= 0.01  # really another runtime, and within what auto promises
    assert (out.argmax(1) == fp32.argmax(1)).mean() > 0.98
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    # odd sizes (edge tiles) run without recompiling and come back cropped
    assert auto.predict(data[:, :, :77, :120]).shape == (6, 2, 77, 120)
    code, listing = _cli("models", "--path", str(path.parent))
    assert code == 0 and "trees        Unet/resnet18 v0.1.0" in listing
    assert f"+int8 (drift {result.drift:.4f})" in listing


@pytest.mark.slow
def test_a_changed_int8_file_is_refused(quantized, tmp_path):
    path = Path(shutil.copytree(quantized[0], tmp_path / "copy"))
    weights = path / read_spec(path).int8.weights
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match=r"bundle copy: int8 file int8.bin has sha256 .* but model.json expects"):
        load_bundle(path)
    assert load_bundle(path, precision="fp32").precision == "fp32"  # the fp32 weights are still usable


@pytest.mark.slow
def test_saving_new_weights_drops_the_stale_variant(quantized, tmp_path, naip_crops):
    path = Path(shutil.copytree(quantized[0], tmp_path / "retrained"))
    _save(path, _unet(seed=1), naip_crops[1], naip_crops[2])
    assert read_spec(path).int8 is None and not (path / "int8.bin").exists()
    # and a spec edited by hand to point at other weights is refused for int8, not run stale
    doc = json.loads((quantized[0] / "model.json").read_text())
    doc["scenewatch:int8"]["source_sha256"] = "0" * 64
    stale = Path(shutil.copytree(quantized[0], tmp_path / "stale"))
    (stale / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="made from other weights"):
        load_bundle(stale, precision="int8")


@pytest.mark.slow
def test_a_random_network_is_refused_and_the_bundle_left_as_it_was(tmp_path, naip_crops):
    path = _save(tmp_path / "random", _unet(), naip_crops[1], naip_crops[2])
    before = sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir())
    code, output = _cli("models", "quantize", str(path), "--scene", str(NAIP_2020), "--bands", "naip",
                        "--tiles", "4")
    assert code != 0
    error = output.strip().splitlines()[-1]
    assert error.startswith("scenewatch: error: bundle random: int8 drifts ") and "not written" in error
    assert sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir()) == before
    assert not list(tmp_path.glob(".random*"))  # no temporary copy left behind
    with pytest.raises(ModelError, match="bundle random: has no int8 variant; calibrate one with "
                                         "`scenewatch models quantize`"):
        load_bundle(path, precision="int8")
    assert load_bundle(path).precision != "int8"  # auto without a variant: bf16 or fp32 as before
    # asked for on the command line, it is refused in planning: one line, nothing written
    code, output = _cli("predict", str(NAIP_2020), "--model", str(path), "--bands", "naip", "--precision", "int8",
                        "--out", str(tmp_path / "out"), "-q")
    assert code != 0
    assert output.strip().splitlines() == ["scenewatch: error: bundle random: has no int8 variant; calibrate one "
                                           "with `scenewatch models quantize`"]
    assert not list((tmp_path / "out").glob("*.tif"))


def test_auto_steps_down_from_an_int8_variant_that_drifts(caplog):
    """The worker-side guard: a variant whose logits are off (here: shifted by a constant per class, as a
    badly calibrated output layer would be) is dropped on the first tile."""
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 3, padding=1)).eval()

    def off(x):
        with torch.no_grad():
            return net(x) + torch.tensor([1.5, -1.5]).view(1, 2, 1, 1)

    from pipeline.models.contract import ModelInfo

    info = ModelInfo("conv", "0", BANDS, ("a", "b"))
    model = TorchSegmentationModel(net, info, precision="auto", int8=off, stride=1)
    assert model.precision == "int8"
    batch = np.random.default_rng(0).normal(0, 1, (1, 4, 64, 64)).astype(np.float32)
    with caplog.at_level("INFO", logger="scenewatch"):
        out = model.predict(batch)
    assert model.precision in ("bf16", "fp16", "fp32") and "openvino-int8 refused (drifts" in caplog.text
    reference = TorchSegmentationModel(net, info, precision="fp32", stride=1).predict(batch)
    assert np.abs(out - reference).mean() <= 0.01


def test_auto_steps_down_when_openvino_cannot_run_the_variant_here(caplog):
    """A variant made on a CPU with AVX-512 and run on one without: OpenVINO refuses to compile it ("No
    suitable implementations", as for one-band networks). ``auto`` warns in one line and goes on in bf16 or
    fp32; an explicit int8 request gets the one-line error."""
    from pipeline.models.contract import ModelInfo
    from pipeline.models.int8 import Int8UnsupportedError, _cpu_refusal

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1)).eval()
    crash = RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\nCheck '!implementations.empty()' "
                         "failed at executor_factory.hpp:117:\nNo suitable implementations.This may indicate ...")

    def refuse(x):
        raise Int8UnsupportedError(_cpu_refusal(crash))

    info = ModelInfo("pan", "0", ("pan",), ("a", "b"))
    batch = np.random.default_rng(0).normal(0, 1, (1, 1, 64, 64)).astype(np.float32)
    model = TorchSegmentationModel(net, info, precision="auto", int8=refuse, stride=1)
    with caplog.at_level("INFO", logger="scenewatch"):
        out = model.predict(batch)
    assert model.precision in ("bf16", "fp16", "fp32")
    assert ("openvino-int8 refused (fails here: OpenVINO cannot run this int8 network on this CPU (No suitable "
            "implementations") in caplog.text
    assert out.shape == (1, 2, 64, 64)
    with pytest.raises(ModelError, match=r"^OpenVINO cannot run this int8 network on this CPU .*bf16 or fp32"):
        TorchSegmentationModel(net, info, precision="int8", int8=refuse, stride=1).predict(batch)


def _cli(*args: str) -> tuple[int, str]:
    from workflows.cli import main

    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.mark.slow
def test_a_scene_through_the_cluster_runs_int8_in_the_workers(quantized, tmp_path, dask_client):
    """The real sample scene, tiled on the 2-process LocalCluster: ``int8`` runs the variant within 0.01
    of fp32 and bf16 is measurably different from it; ``auto`` measured the backends in the workers, runs
    what it chose within 0.01 of fp32, and the COGs name it."""
    from pipeline.config import PredictConfig
    from pipeline.models.backends import package_versions
    from pipeline.products import Tag
    from workflows.scene import plan_scene, predict_scene

    path = quantized[0]
    outputs, tags = {}, {}
    for precision in ("auto", "int8", "fp32", "bf16"):
        plan = plan_scene(NAIP_2020, path, PredictConfig(bands="naip", precision=precision, proba_dtype="float32"))
        result = predict_scene(plan, tmp_path / precision, client=dask_client, progress=False)
        with rasterio.open(result.proba_path) as proba, rasterio.open(result.classes_path) as classes:
            outputs[precision] = proba.read(), classes.read(1)
            tags[precision] = classes.tags().get(Tag.BACKEND)
    assert tags["auto"] and set(tags["auto"].split(",")) <= {"torch-fp32", "torch-fp32-cl", "torch-bf16", "torch-fp16",
                                                             "openvino-fp32", "openvino-bf16", "openvino-int8"}
    assert "openvino" in package_versions()
    assert float(np.abs(outputs["auto"][0] - outputs["fp32"][0]).mean()) <= 0.01
    drift = float(np.abs(outputs["int8"][0] - outputs["fp32"][0]).mean())
    assert 0 < drift <= 0.01
    assert (outputs["int8"][1] == outputs["fp32"][1]).mean() > 0.98
    assert np.abs(outputs["bf16"][0] - outputs["int8"][0]).mean() > 1e-3


@pytest.mark.slow
def test_auto_calibrates_int8_on_the_first_tiles_of_a_bundle_without_a_variant(quantized, naip_crops, tmp_path,
                                                                                caplog):
    """A fitted bundle as training leaves it (no variant): auto calibrates int8 on every other sample tile
    (6 crops spread over the scene, as predict samples a scene), checks it on the rest, keeps the
    calibration in the cache (a second load measures nothing and makes no new calibration) and says so in
    its one line. Calibrated on 2 crops of one half of the scene instead, it held out at 0.0026 but drifted
    0.020 on the other half: samples are spread, and there are 6."""
    from pipeline.models import backends

    data, mean, std = naip_crops
    path = _save(tmp_path / "plain", load_bundle(quantized[0], precision="fp32").network, mean, std)
    assert read_spec(path).int8 is None
    with caplog.at_level("INFO", logger="scenewatch"):
        model = load_bundle(path)
        model.choose_backend(data, max_samples=6)
    int8 = next(m for m in model.choice.measurements if m.name == "openvino-int8")
    assert not int8.refused and int8.drift <= AUTO_DRIFT_LIMIT and int8.agreement >= backends.AUTO_AGREEMENT_LIMIT
    assert "int8 calibrated here on 3 tile(s)" in caplog.text and not model.choice.cached
    stored = backends.artifact_dir("int8", model.identity) / "model.xml"
    assert stored.is_file()
    again = load_bundle(path)
    again.choose_backend(data, max_samples=6)
    assert again.choice.cached and again.backend == model.backend
    out = again.predict(data)
    reference = load_bundle(path, precision="fp32").predict(data)
    assert float(np.abs(out - reference).mean()) <= 0.01


_WORKER = """
import json, sys
import numpy as np
import pipeline.models.warm
from pipeline.models.bundle import load_bundle
if len(sys.argv) > 5:  # a scene on which the cached graph fails the check
    pipeline.models.warm.AUTO_DRIFT_LIMIT = float(sys.argv[5])
data = np.load(sys.argv[2])
model = load_bundle(sys.argv[1], threads=int(sys.argv[3]))
warm = model.settle_from_cache(data[:1])
out = model.predict(data)
np.save(sys.argv[4], out)
print(json.dumps({"warm": warm, "torch": "torch" in sys.modules, "backend": model.backend,
                  "said": "started without torch" in model.choice.summary()}))
"""


@pytest.mark.slow
def test_a_cached_openvino_choice_starts_a_worker_without_torch(quantized, naip_crops, tmp_path, monkeypatch):
    """Once auto has chosen an OpenVINO backend for a bundle, a worker process (threads given, as the loader
    gives them) starts from the cache without importing torch, checks the choice on its first sample
    against the cached OpenVINO fp32 graph, and gives the probabilities the torch model gives with the same
    choice (numpy's softmax against torch's: within 1e-6) and the same classes. One whose check fails
    there loads torch and decides as before; a weights file changed behind ``model.json``'s back is
    refused as the torch path refuses it."""
    import subprocess
    import sys

    from pipeline.models import backends

    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "cache"))  # inherited by the worker process below
    data, mean, std = naip_crops
    path = _save(tmp_path / "plain", load_bundle(quantized[0], precision="fp32").network, mean, std)
    threads = torch.get_num_threads()
    torch_model = load_bundle(path)  # no threads: the torch model, as before
    torch_model.choose_backend(data, max_samples=6)
    assert torch_model.backend.startswith("openvino-")
    expected = torch_model.predict(data)
    np.save(tmp_path / "data.npy", data)
    run = [sys.executable, "-c", _WORKER, str(path), str(tmp_path / "data.npy"), str(threads),
           str(tmp_path / "out.npy")]
    done = subprocess.run(run, check=True, capture_output=True, text=True)
    worker = json.loads(done.stdout.strip().splitlines()[-1])
    assert worker == {"warm": True, "torch": False, "backend": torch_model.backend, "said": True}
    out = np.load(tmp_path / "out.npy")
    assert out.shape == expected.shape and float(np.abs(out - expected).max()) <= 1e-6
    assert (out.argmax(1) == expected.argmax(1)).all()

    # failing the torch-free check (a limit of 0 there), the worker loads torch and decides as before
    done = subprocess.run([*run, "0"], check=True, capture_output=True, text=True)
    worker = json.loads(done.stdout.strip().splitlines()[-1])
    assert worker == {"warm": False, "torch": True, "backend": torch_model.backend, "said": False}
    assert float(np.abs(np.load(tmp_path / "out.npy") - expected).max()) == 0.0

    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    failed = subprocess.run(run, capture_output=True, text=True)
    assert failed.returncode != 0 and "the file was changed or belongs to another bundle" in failed.stderr
