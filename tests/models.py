"""Model factories for tests, importable by Dask worker processes (referenced through ModelRef.from_factory)."""

from __future__ import annotations

from typing import Any

from pipeline.models.contract import ModelInfo
from pipeline.models.network import TorchSegmentationModel, build_smp_model

__all__ = ["small_convnet", "unet"]


def small_convnet(bands: tuple[str, ...] = ("red", "nir"), seed: int = 0, **_: Any) -> TorchSegmentationModel:
    """Two 3x3 convolutions (receptive-field radius 2 px), two classes, fp32: a model whose tiled run must
    match a whole-image run exactly when the halo covers its receptive field."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(len(bands), 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))
    info = ModelInfo("small-convnet", "0", tuple(bands), ("a", "b"), tile_size=128, halo=8)
    return TorchSegmentationModel(net, info, mean=[1000.0] * len(bands), std=[500.0] * len(bands),
                                  precision="fp32", stride=1)


def unet(bands: tuple[str, ...] = ("red", "green", "blue", "nir"), seed: int = 0, precision: str = "fp32",
         mean: float = 100.0, std: float = 50.0, **_: Any) -> TorchSegmentationModel:
    """A seeded, randomly initialised smp U-Net (resnet18 encoder, no downloaded weights)."""
    return build_smp_model("Unet", "resnet18", bands=bands, class_names=("background", "foreground"), seed=seed,
                           precision=precision, mean=[mean] * len(bands), std=[std] * len(bands))


BUILDS: dict[int, int] = {}


def counted_convnet(seed: int, **kwargs: Any) -> TorchSegmentationModel:
    """small_convnet that counts, per process, how often it was built (see ``builds``)."""
    BUILDS[seed] = BUILDS.get(seed, 0) + 1
    return small_convnet(seed=seed, **kwargs)


def builds(seed: int) -> int:
    return BUILDS.get(seed, 0)
