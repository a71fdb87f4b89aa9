"""``auto`` on a CPU: backends measured once on real tiles, refused past the drift and agreement limits,
and the choice cached per model, tile shape, CPU, threads and packages."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from pipeline.models import backends
from pipeline.models.contract import ModelInfo
from pipeline.models.network import TorchSegmentationModel

torch = pytest.importorskip("torch")

INFO = ModelInfo("conv", "0", ("red", "green", "blue", "nir"), ("a", "b"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / backends.CACHE_FILE


def _net(seed: int = 0, scale: float = 1.0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1))
    with torch.no_grad():
        net[2].weight.mul_(scale)
        net[2].bias.mul_(scale)
    return net.eval()


def _model(net=None, **kwargs) -> TorchSegmentationModel:
    return TorchSegmentationModel(net if net is not None else _net(), INFO, precision="auto", device="cpu",
                                  stride=1, **kwargs)


def _tiles(naip, size: int = 64) -> np.ndarray:
    data, mean, std = naip
    return ((data[:, :, :size, :size] - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)


def test_the_choice_is_measured_once_and_then_read_from_the_cache(naip, cache, caplog):
    batch = _tiles(naip)
    with caplog.at_level(logging.INFO, logger="scenewatch"):
        first = _model()
        first.choose_backend(batch)
    assert not first.choice.cached and first.backend in first.choice.ranking
    line = next(r.getMessage() for r in caplog.records if "precision auto runs" in r.getMessage())
    assert f"runs {first.backend} (measured; MP/s: " in line
    assert all(f"{m.name} " in line for m in first.choice.measurements)  # every candidate on the one line
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scenewatch"):
        second = _model()  # a new process would load it the same way: same weights, same key
        out = second.predict(batch)
    assert second.choice.cached and second.backend == first.backend
    assert f"runs {first.backend} (cached;" in caplog.text
    reference = TorchSegmentationModel(_net(), INFO, precision="fp32", device="cpu", stride=1).predict(batch)
    assert np.abs(out - reference).mean() <= 0.01


def test_a_changed_key_measures_again(naip, cache, monkeypatch):
    batch = _tiles(naip)
    _model().choose_backend(batch)
    other_weights = _model(_net(seed=1))
    other_weights.choose_backend(batch)
    assert not other_weights.choice.cached
    other_shape = _model()
    other_shape.choose_backend(_tiles(naip, 96))
    assert not other_shape.choice.cached
    monkeypatch.setattr(backends, "cpu_identity", lambda: "AMD EPYC 9R14 [avx2 avx512_bf16 avx512f avx512_vnni]")
    other_cpu = _model()
    other_cpu.choose_backend(batch)
    assert not other_cpu.choice.cached and other_cpu.choice.key["cpu"].startswith("AMD EPYC")
    keys = [e["key"] for e in json.loads(cache.read_text())["entries"].values()]
    assert len(keys) == 4 and {k["tile"][1] for k in keys} == {64, 96}
    monkeypatch.undo()
    monkeypatch.setenv(backends.CACHE_ENV, str(cache.parent))
    again = _model()
    again.choose_backend(batch)
    assert again.choice.cached  # the first key is still there


def test_a_cap_on_onednns_instruction_sets_is_measured_as_another_cpu(naip, cache, monkeypatch):
    # ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 on a CPU with AMX runs an int8 U-Net 2.6x slower: a choice
    # measured without the cap must not be taken with it
    batch = _tiles(naip)
    _model().choose_backend(batch)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    capped = _model()
    capped.choose_backend(batch)
    assert not capped.choice.cached
    assert capped.choice.key["cpu"] == backends.cpu_identity()
    assert capped.choice.key["cpu"].endswith("] ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    again = _model()
    again.choose_backend(batch)
    assert again.choice.cached and "ONEDNN" not in again.choice.key["cpu"]


def test_a_corrupt_cache_file_is_ignored_with_a_warning_and_rewritten(naip, cache, caplog):
    cache.parent.mkdir(parents=True)
    cache.write_text('{"version": 1, "entries": {"x"')
    with caplog.at_level(logging.WARNING, logger="scenewatch"):
        model = _model()
        model.choose_backend(_tiles(naip))
    assert not model.choice.cached
    assert f"backend cache {cache}: ignored, unreadable" in caplog.text
    assert len(json.loads(cache.read_text())["entries"]) == 1


class _Swapped:
    """A deliberately broken backend: the network's logits with the two classes swapped."""

    def __init__(self, net) -> None:
        self.net = net

    def __call__(self, x):
        with torch.no_grad():
            return self.net(x).flip(1)


def test_a_backend_that_changes_classes_is_refused_even_within_the_drift_limit(naip, cache, caplog):
    """Logits a thousandth of the usual size: every probability is within 0.001 of 0.5, so swapping the
    classes moves the mean probability by far less than the drift limit, but changes every pixel's class.
    The agreement limit refuses it; auto runs something else."""
    net = _net(scale=1e-3)
    with caplog.at_level(logging.INFO, logger="scenewatch"):
        model = _model(net, int8=_Swapped(net))
        model.choose_backend(_tiles(naip))
    refused = {m.name: m for m in model.choice.measurements if m.refused}
    assert "openvino-int8" in refused and model.backend != "openvino-int8"
    swapped = refused["openvino-int8"]
    assert swapped.drift is not None and swapped.drift < 0.008 and swapped.agreement is not None
    assert "openvino-int8 refused (keeps fp32's class on" in caplog.text


def test_a_backend_that_drifts_is_refused(naip, cache):
    net = _net()
    model = _model(net, int8=_Swapped(net))
    model.choose_backend(_tiles(naip))
    swapped = next(m for m in model.choice.measurements if m.name == "openvino-int8")
    assert swapped.refused.startswith("drifts ") and model.backend != "openvino-int8"


def test_a_cached_choice_that_drifts_on_this_scene_gives_way(naip, cache, caplog):
    """The cache holds a choice measured elsewhere; on this scene's first tile it is checked again."""
    batch = _tiles(naip)
    model = _model()
    model.choose_backend(batch)
    doc = json.loads(cache.read_text())
    for entry in doc["entries"].values():
        entry["backend"] = "torch-fp16"  # pretend fp16 won, on a network for which it drifts (below)
        entry["measurements"] = [{"name": "torch-fp16", "mp_s": 9.0, "drift": 0.0, "agreement": 1.0, "refused": ""},
                                 {"name": "torch-fp32", "mp_s": 1.0, "drift": 0.0, "agreement": 1.0, "refused": ""}]
    cache.write_text(json.dumps(doc))
    if backends._torch_backend("torch-fp16") is None:
        pytest.skip("this CPU has no native fp16: the cached choice cannot be rebuilt, so it is measured again")
    net = _net()

    class Amplified(torch.nn.Module):
        """The same weights, but logits large enough for fp16 to overflow to inf."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) * 1e5

    # same identity as the cached entry, so the cache is hit; fp16 then gives NaN on the first tile
    amplified = _model(Amplified(), identity=model.identity)
    with caplog.at_level(logging.WARNING, logger="scenewatch"):
        amplified.choose_backend(batch)
    assert amplified.choice.cached and amplified.backend == "torch-fp32"
    assert "cached backend torch-fp16 drifts" in caplog.text


def test_a_worker_starts_without_torch_only_from_a_complete_openvino_choice(cache):
    """:func:`backends.cached_openvino` offers the torch-free start only for a cached OpenVINO choice whose
    IR files are in the cache and whose OpenVINO fp32 was measured within REFERENCE_DRIFT of torch fp32;
    anything else (a torch choice, a missing graph, an OpenVINO fp32 that drifted, another key) is None,
    and the worker then loads the torch network and decides as before."""
    pytest.importorskip("openvino")
    identity, shape, threads = "a" * 64, (4, 576, 576), 1

    def cached(backend: str, fp32_drift: float) -> None:
        key = backends.cache_key(identity, shape, threads)
        measured = [backends.Measurement(backend, 5.0, 0.001, 0.999),
                    backends.Measurement("openvino-fp32", 1.0, fp32_drift, 1.0)]
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"version": backends.CACHE_VERSION, "entries": {backends._digest(key): {
            "key": key, "backend": backend, "notes": [], "measurements": [m.as_json() for m in measured]}}}))

    for kind in ("openvino", "int8"):
        folder = backends.artifact_dir(kind, identity)
        folder.mkdir(parents=True)
        (folder / "model.xml").write_text("<net/>")
    cached("openvino-int8", 0.00002)
    start = backends.cached_openvino(identity, shape, threads, variant=False)
    assert start is not None and start.choice.cached and start.choice.backend == "openvino-int8"
    assert start.graph == backends.artifact_dir("int8", identity) / "model.xml"
    assert start.reference == backends.artifact_dir("openvino", identity) / "model.xml"
    with_variant = backends.cached_openvino(identity, shape, threads, variant=True)
    assert with_variant is not None and with_variant.graph is None  # the bundle's own variant runs
    assert backends.cached_openvino(identity, shape, threads + 1, variant=False) is None  # another key
    assert backends.cached_openvino(identity, (4, 512, 512), threads, variant=False) is None
    cached("openvino-int8", 0.001)  # OpenVINO fp32 too far from torch fp32 to stand in for it
    assert backends.cached_openvino(identity, shape, threads, variant=False) is None
    cached("torch-bf16", 0.00002)
    assert backends.cached_openvino(identity, shape, threads, variant=False) is None
    cached("openvino-int8", 0.00002)
    (backends.artifact_dir("int8", identity) / "model.xml").unlink()
    assert backends.cached_openvino(identity, shape, threads, variant=False) is None
