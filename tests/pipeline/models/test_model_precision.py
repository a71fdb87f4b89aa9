"""Precision: ``auto`` stays within 0.01 mean absolute probability of fp32, and guards itself."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.models.contract import ModelInfo
from pipeline.models.network import AUTO_DRIFT_LIMIT, TorchSegmentationModel, resolve_precision

torch = pytest.importorskip("torch")
smp = pytest.importorskip("segmentation_models_pytorch")

BF16 = resolve_precision("auto", "cpu") == "bf16"
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has no native bf16 kernels; auto is fp32 here")
INFO = ModelInfo("unet", "0", ("red", "green", "blue", "nir"), ("other", "vegetation"))


def _unet(seed: int = 0):
    torch.manual_seed(seed)
    return smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None, in_channels=4, classes=2).eval()


def _fit(network, data, mean, std, steps: int = 8):
    """A few Adam steps towards the NDVI > 0.3 mask: peaked, data-driven logits, like a trained network."""
    data = data[:, :, 16:112, 16:112]  # fit on 96 px crops: cheap, and still enough to peak the logits
    red, nir = data[:, 0], data[:, 3]
    target = torch.from_numpy(((nir - red) / np.maximum(nir + red, 1e-6) > 0.3).astype(np.int64))
    x = torch.from_numpy((data - mean[None, :, None, None]) / std[None, :, None, None]).float()
    network.train()
    opt = torch.optim.Adam(network.parameters(), lr=3e-3)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: a loaded CI machine stalls multi-threaded backward passes badly
    try:
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(network(x), target).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return network.eval()


def _drift(network, data, mean, std) -> tuple[float, TorchSegmentationModel]:
    import copy

    fp32 = TorchSegmentationModel(copy.deepcopy(network), INFO, mean=mean, std=std, precision="fp32",
                                  device="cpu")
    auto = TorchSegmentationModel(copy.deepcopy(network), INFO, mean=mean, std=std, precision="auto",
                                  device="cpu")
    return float(np.abs(auto.predict(data) - fp32.predict(data)).mean()), auto


@needs_bf16
def test_auto_is_bf16_within_limit_on_random_init_unet_and_real_imagery(naip):
    drift, auto = _drift(_unet(), *naip)
    assert auto.auto_drift is not None  # the first-tile check ran
    # what runs is what the measurement kept: within the limit on the first tiles (bf16 drifts 0.004-0.005)
    assert auto.auto_drift <= AUTO_DRIFT_LIMIT and auto.backend in auto.choice.ranking
    assert drift <= 0.01


@pytest.mark.slow
@needs_bf16
def test_auto_is_within_limit_on_a_fitted_unet(naip):
    data, mean, std = naip
    network = _fit(_unet(), data, mean, std)
    fp32 = TorchSegmentationModel(network, INFO, mean=mean, std=std, precision="fp32", device="cpu").predict(data)
    assert np.abs(fp32[:, 1] - 0.5).mean() > 0.2  # the fit worked: the network is confident, not degenerate
    drift, auto = _drift(network, data, mean, std)
    bf16 = next(m for m in auto.choice.measurements if m.name == "torch-bf16")
    assert not bf16.refused and drift <= 0.01  # measured: about 0.001 on fitted networks


class _Amplifier(torch.nn.Module):
    """A 1x1 convolution with huge weights: bf16's 8-bit mantissa turns into large logit errors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 2, 1, bias=False)
        with torch.no_grad():
            weight = torch.tensor([[300.0, -300.0, 1.0, 0.0], [-300.0, 300.0, 0.0, 1.0]])
            self.conv.weight.copy_(weight[..., None, None])

    def forward(self, x):
        return self.conv(x)


@needs_bf16
def test_auto_falls_back_to_fp32_when_bf16_drifts(caplog):
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 1, (1, 4, 64, 64)).astype(np.float32)
    batch[:, 1] = batch[:, 0] + rng.normal(0, 0.01, (1, 64, 64))  # logits near zero, where errors matter
    auto = TorchSegmentationModel(_Amplifier(), INFO, precision="auto", device="cpu")
    bf16 = TorchSegmentationModel(_Amplifier(), INFO, precision="bf16", device="cpu")
    fp32 = TorchSegmentationModel(_Amplifier(), INFO, precision="fp32", device="cpu")
    assert np.abs(bf16.predict(batch) - fp32.predict(batch)).mean() > 0.01  # bf16 really is too coarse here
    with caplog.at_level("INFO", logger="scenewatch"):
        out = auto.predict(batch)
    assert auto.precision == "fp32" and auto.auto_drift <= AUTO_DRIFT_LIMIT
    np.testing.assert_allclose(out, fp32.predict(batch), rtol=0, atol=1e-4)  # torch or OpenVINO fp32
    assert "torch-bf16 refused (drifts" in caplog.text


def test_explicit_precision_is_obeyed_and_checked():
    assert TorchSegmentationModel(_Amplifier(), INFO, precision="fp32").precision == "fp32"
    assert resolve_precision("auto", "cuda:0") == "fp16"
    with pytest.raises(ModelError, match="`precision` 'fp64': choose one of auto, fp32, bf16, fp16"):
        resolve_precision("fp64", "cpu")


def test_odd_tile_sizes_are_padded_and_cropped(naip):
    data = naip[0][:, :, :77, :120]
    model = TorchSegmentationModel(_unet(), INFO, mean=naip[1], std=naip[2], precision="fp32")
    probs = model.predict(data)
    assert probs.shape == (2, 2, 77, 120)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_compiled_model_matches_eager():
    """torch.compile on a tiny network (compiling a U-Net takes tens of seconds; see bench/models.py)."""
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 1, (1, 4, 32, 32)).astype(np.float32)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    eager = TorchSegmentationModel(net, INFO, precision="fp32")
    compiled = TorchSegmentationModel(net, INFO, precision="fp32", compile=True)
    assert compiled.compiled
    np.testing.assert_allclose(compiled.predict(batch), eager.predict(batch), atol=1e-5)
