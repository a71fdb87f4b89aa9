"""``auto`` never settles on a precision over NaN: a network whose fp32 output is not finite is an error, and a
reduced precision that is not finite is stepped down from with a line that says why (issue 15)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from pipeline.errors import ModelError
from pipeline.models.contract import ModelInfo
from pipeline.models.network import TorchSegmentationModel

INFO = ModelInfo(name="probe", version="1", bands=("red", "nir"), class_names=("other", "thing"))


class _Net(torch.nn.Module):
    """Two logits from two bands; ``nan`` makes every logit NaN."""

    def __init__(self, nan: bool) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 1)
        self.nan = nan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * float("nan") if self.nan else y


def _batch() -> np.ndarray:
    return np.random.default_rng(0).random((1, 2, 64, 64), dtype=np.float32)


def test_auto_refuses_a_network_whose_fp32_output_is_nan() -> None:
    torch.manual_seed(0)
    net = _Net(nan=True)
    model = TorchSegmentationModel(net, INFO, precision="auto", device="cpu", int8=lambda x: net(x))
    assert model.precision == "int8"  # what auto would run, with a variant at hand
    with pytest.raises(ModelError, match="model probe: gives non-finite probabilities .* in fp32"):
        model.predict(_batch())


def test_auto_steps_down_from_a_reduced_precision_that_gives_nan(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    net = _Net(nan=False)
    model = TorchSegmentationModel(net, INFO, precision="auto", device="cpu",
                                   int8=lambda x: net(x) * float("nan"))
    with caplog.at_level(logging.INFO, logger="scenewatch"):
        proba = model.predict(_batch())
    assert np.isfinite(proba).all() and model.precision in ("bf16", "fp16", "fp32")
    assert "openvino-int8 refused (non-finite probabilities)" in caplog.text
