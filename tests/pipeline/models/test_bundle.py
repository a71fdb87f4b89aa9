"""Model bundles: round trip, STAC MLM spec, and every way a bundle can be untrustworthy."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.models.bundle import (
    SPEC_FILE,
    WEIGHTS_FILE,
    build_network,
    import_state_dict,
    init_bundle,
    load_bundle,
    read_spec,
    save_bundle,
)
from pipeline.models.contract import ModelInfo
from pipeline.models.network import TorchSegmentationModel

torch = pytest.importorskip("torch")
smp = pytest.importorskip("segmentation_models_pytorch")

BANDS = ["red", "green", "blue", "nir"]
CLASSES = ["background", "tree"]
# A small encoder keeps these tests fast; the resnet18 U-Net of the issue runs in the CLI tests.
ENCODER = "mobilenet_v2"


def _network(arch: str = "Unet", encoder: str = ENCODER, seed: int = 0, classes: int = 2):
    torch.manual_seed(seed)
    return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=4, classes=classes).eval()


def _rewrite_spec(bundle: Path, **changes: object) -> None:
    spec_path = bundle / SPEC_FILE
    doc = json.loads(spec_path.read_text())
    doc.update(changes)
    spec_path.write_text(json.dumps(doc))


def _replace_weights(bundle: Path, data: bytes) -> None:
    """What an attacker controlling the folder can do: new weights and a spec whose sha256 matches them."""
    (bundle / WEIGHTS_FILE).write_bytes(data)
    _rewrite_spec(bundle, **{"scenewatch:weights_sha256": hashlib.sha256(data).hexdigest()})


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    network = _network()
    path = save_bundle(tmp_path_factory.mktemp("bundles") / "trees", network, arch="unet", encoder=ENCODER,
                       bands=BANDS, class_names=CLASSES, mean=[100.0, 100.0, 90.0, 120.0],
                       std=[40.0, 35.0, 30.0, 50.0], class_colors=["#d9d0b4", "#1A9641"], tile_size=256,
                       halo=16, version="1.2.0", licence="CC-BY-4.0",
                       extra={"mlm:hyperparameters": {"lr": 0.001}, "dataset": "naip-2020"})
    return path, network


def _copy(saved_path: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / saved_path.name
    shutil.copytree(saved_path, target)
    return target


class Payload:
    """Unpickling this object creates ``marker``: the stand-in for arbitrary code in a malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_round_trip_gives_identical_outputs(saved, tmp_path):
    path, network = saved
    direct = TorchSegmentationModel(_network(), ModelInfo("x", "0", tuple(BANDS), tuple(CLASSES)),
                                    mean=[100.0, 100.0, 90.0, 120.0], std=[40.0, 35.0, 30.0, 50.0],
                                    precision="fp32")
    loaded = load_bundle(path, precision="fp32")
    batch = np.random.default_rng(0).uniform(0, 255, (2, 4, 96, 80)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(batch), direct.predict(batch))
    for key, value in network.state_dict().items():
        torch.testing.assert_close(loaded.network.state_dict()[key].cpu(), value, rtol=0, atol=0)
    info = loaded.info
    assert (info.name, info.version, info.licence) == ("trees", "1.2.0", "CC-BY-4.0")
    assert info.bands == tuple(BANDS) and info.class_names == tuple(CLASSES)
    assert info.class_colors == ("#d9d0b4", "#1a9641") and (info.tile_size, info.halo) == (256, 16)


def test_saving_is_deterministic(saved, tmp_path):
    path, network = saved
    again = save_bundle(tmp_path / "trees", network, arch="Unet", encoder=ENCODER, bands=BANDS,
                        class_names=CLASSES, mean=[100.0, 100.0, 90.0, 120.0], std=[40.0, 35.0, 30.0, 50.0],
                        class_colors=["#d9d0b4", "#1A9641"], tile_size=256, halo=16, version="1.2.0",
                        licence="CC-BY-4.0", extra={"mlm:hyperparameters": {"lr": 0.001}, "dataset": "naip-2020"})
    for name in (SPEC_FILE, WEIGHTS_FILE):
        assert (again / name).read_bytes() == (path / name).read_bytes()


def test_spec_is_valid_stac_mlm(saved):
    """The spec validates with stac-model and applies to a pystac Item through the MLM extension."""
    import pystac
    from stac_model.schema import MLModelExtension, MLModelProperties

    doc = json.loads((saved[0] / SPEC_FILE).read_text())
    props = MLModelProperties.model_validate(doc)
    assert props.architecture == "Unet" and props.framework == "pytorch"
    assert [c.name for c in props.output[0].classes] == CLASSES
    assert doc["mlm:hyperparameters"] == {"lr": 0.001} and doc["scenewatch:extra"] == {"dataset": "naip-2020"}
    item = pystac.Item("trees", None, None, pystac.utils.str_to_datetime("2024-01-01T00:00:00Z"), {})
    MLModelExtension.ext(item, add_if_missing=True).apply(props)
    assert item.properties["mlm:input"][0]["bands"] == BANDS
    assert item.properties["mlm:input"][0]["value_scaling"][3] == {"type": "z-score", "mean": 120.0, "stddev": 50.0}


@pytest.mark.parametrize(("change", "message"), [
    ({"mlm:architecture": "NotANet"}, "mlm:architecture 'NotANet' is not a segmentation-models-pytorch"),
    ({"mlm:input": "bands"}, "not a valid STAC MLM model spec (mlm:input: Input should be a valid list"),
    ({"scenewatch:halo": -1}, "scenewatch:halo"),
    ({"scenewatch:colour": "red"}, "scenewatch:colour"),
    ({"mlm:framework": "tensorflow"}, "only pytorch bundles"),
])
def test_invalid_spec_names_the_key(saved, tmp_path, change, message):
    bundle = _copy(saved[0], tmp_path)
    _rewrite_spec(bundle, **change)
    with pytest.raises(ModelError) as err:
        read_spec(bundle)
    assert message in str(err.value)


def test_wrong_sha256_is_refused(saved, tmp_path):
    bundle = _copy(saved[0], tmp_path)
    data = bytearray((bundle / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last tensor: still valid safetensors, different weights
    (bundle / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"weights\.safetensors have sha256 .* but model\.json expects"):
        load_bundle(bundle)


def test_state_dict_of_another_architecture_is_refused(saved, tmp_path):
    from safetensors.torch import save as save_safetensors

    bundle = _copy(saved[0], tmp_path)
    fpn = _network("FPN")
    _replace_weights(bundle, save_safetensors({k: v.contiguous() for k, v in fpn.state_dict().items()}))
    with pytest.raises(ModelError, match=r"do not fit Unet/mobilenet_v2 .*\d+ missing key\(s\).*\d+ unexpected key"):
        load_bundle(bundle)


def test_fake_safetensors_never_runs_its_payload(saved, tmp_path, monkeypatch):
    marker = tmp_path / "payload-ran"
    data = pickle.dumps({"encoder.weight": Payload(marker)})
    # The payload is real: unpickling it the unsafe way does run it (into another marker).
    pickle.loads(pickle.dumps(Payload(tmp_path / "control")))
    assert (tmp_path / "control").exists()
    bundle = _copy(saved[0], tmp_path)
    _replace_weights(bundle, data)  # the sha256 matches: only the format check stands in the way
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        load_bundle(bundle)
    assert not marker.exists()


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_state_dict_import_never_runs_its_payload(tmp_path, monkeypatch, writer):
    marker = tmp_path / "payload-ran"
    weights = tmp_path / "evil.pth"
    state = {"encoder.conv1.weight": Payload(marker)}
    if writer == "pickle":
        weights.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, weights)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ModelError, match="evil.pth: refused: not a plain tensor state dict"):
        import_state_dict(weights, tmp_path / "out", arch="Unet", encoder=ENCODER, bands=BANDS,
                          class_names=CLASSES)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_import_plain_state_dict(tmp_path):
    network = _network(seed=3)
    weights = tmp_path / "unet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in network.state_dict().items()}}, weights)
    path = import_state_dict(weights, tmp_path / "imported", arch="Unet", encoder=ENCODER, bands=BANDS,
                             class_names=CLASSES, version="2.0.0")
    loaded = load_bundle(path, precision="fp32")
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key].cpu(), value)
    assert read_spec(path).version == "2.0.0"


def test_import_of_another_architecture_is_refused(tmp_path):
    weights = tmp_path / "fpn.pth"
    torch.save(_network("FPN").state_dict(), weights)
    with pytest.raises(ModelError, match=r"fpn.pth: the weights do not fit Unet/.*missing key"):
        import_state_dict(weights, tmp_path / "out", arch="Unet", encoder=ENCODER, bands=BANDS,
                          class_names=CLASSES)


def test_save_refuses_a_network_that_is_not_what_it_claims(tmp_path):
    with pytest.raises(ModelError, match="do not fit FPN"):
        save_bundle(tmp_path / "b", _network("Unet"), arch="FPN", encoder=ENCODER, bands=BANDS,
                    class_names=CLASSES)
    assert not (tmp_path / "b").exists()


def test_init_bundle_is_seeded_and_builds_without_downloads(tmp_path):
    a = init_bundle(tmp_path / "a", "Unet", ENCODER, BANDS, CLASSES, seed=7)
    b = init_bundle(tmp_path / "b", "Unet", ENCODER, BANDS, CLASSES, seed=7)
    assert (a / WEIGHTS_FILE).read_bytes() == (b / WEIGHTS_FILE).read_bytes()
    network = build_network(read_spec(a))
    total = json.loads((a / SPEC_FILE).read_text())["mlm:total_parameters"]
    assert sum(p.numel() for p in network.parameters()) == total


def test_unknown_bundle_option_is_refused(saved):
    with pytest.raises(ModelError, match="unknown model option.*threshold"):
        load_bundle(saved[0], threshold=0.3)


def test_a_weights_file_is_not_a_bundle(tmp_path):
    from pipeline.models.contract import ModelRef
    from pipeline.models.loader import load_model

    weights = tmp_path / "unet.pth"
    weights.write_bytes(b"not used")
    with pytest.raises(ModelError, match="unet.pth: a weights file, not a bundle; make a bundle from it with "
                                         "pipeline.models.bundle.import_state_dict .on the command line: "
                                         "scenewatch models import."):
        load_model(ModelRef.of(str(weights)))


def test_a_rewritten_bundle_is_not_served_from_the_cache(tmp_path):
    from pipeline.models.contract import ModelRef
    from pipeline.models.loader import load_model

    path = init_bundle(tmp_path / "b", "Unet", ENCODER, BANDS, CLASSES, seed=1)
    ref = ModelRef.of(str(path), precision="fp32")
    first = load_model(ref)
    assert load_model(ref) is first  # cached while unchanged
    init_bundle(path, "Unet", ENCODER, BANDS, ["a", "b", "c"], seed=2)  # a new version at the same path
    assert load_model(ref).info.class_names == ("a", "b", "c")


def test_smp_architecture_list_matches_installed_smp() -> None:
    """The static list used to read specs without importing torch is smp's own."""
    import segmentation_models_pytorch as smp

    from pipeline.models.bundle import SMP_ARCHITECTURES

    assert {k: c.__name__ for k, c in smp.MODEL_ARCHITECTURES_MAPPING.items()} == SMP_ARCHITECTURES


def test_reading_a_spec_does_not_import_torch(tmp_path) -> None:
    """The process that plans and writes reads the bundle's spec and asks where it would run, nothing more:
    no torch (500 MiB) there."""
    import subprocess
    import sys

    from pipeline.models.bundle import init_bundle

    bundle = init_bundle(tmp_path / "b", "Unet", "resnet18", ["red", "green", "blue"], ["a", "b"])
    code = ("import sys; from pipeline.models.contract import ModelRef; "
            "from pipeline.models.loader import describe_model, runs_on_gpu; "
            f"ref = ModelRef.of({str(bundle)!r}, precision='auto'); info = describe_model(ref); runs_on_gpu(ref); "
            "assert info.num_classes == 2; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3])
