"""Built-in spectral models: a normalized-difference index and a threshold, no weights.

Each is a two-class :class:`~pipeline.models.contract.SegmentationModel`, so tiling, stitching, vectorizing and change
treat it exactly like a network: ``p(target) = sigmoid(±(index - threshold) / softness)``. With the default
softness of 0.05 an index 0.1 past the threshold gives p = 0.88, 0.2 past gives 0.98: the class map is the
plain threshold test, and the probability is a usable confidence near the threshold.

=============  =======================================  ================  ================================
name           index (bands, STAC eo common names)      target class      default threshold
=============  =======================================  ================  ================================
vegetation     NDVI  = (nir - red) / (nir + red)        NDVI > 0.3        moderate to dense green cover
water          NDWI  = (green - nir) / (green + nir)    NDWI > 0.0        McFeeters 1996
water-mndwi    MNDWI = (green - swir16)/(green+swir16)  MNDWI > 0.0       Xu 2006; better in built-up areas
water-swir     (red - swir16) / (red + swir16)          > 0.0             Rogers & Kearney 2004; no green
burn           NBR   = (nir - swir22) / (nir + swir22)  NBR < 0.1         burned/bare, single date
bare           NDMI  = (nir - swir16) / (nir + swir16)  NDMI < 0.25       cleared land / bare soil vs canopy
=============  =======================================  ================  ================================

Every threshold and the softness are options: ``ModelRef.of("water", threshold=0.1)`` or on the command line
``--model-option threshold=0.1``. ``threshold=auto`` computes the threshold from the image itself: Otsu's
threshold on the histogram of the index over valid pixels, kept only where the histogram is bimodal with a
mode on each side of the fixed default, else the default (:mod:`pipeline.threshold`, docs/accuracy.md). A
scene gets one threshold from a histogram summed over its tiles on Dask (``workflows.threshold``), recorded
in the ``SCENEWATCH_THRESHOLD`` tag; an array (``predict_array``, ``compare_arrays``) gets its own. ``auto``
is the default of the three water models: on the OMBRIA flood events it holds the fixed threshold's score on
the event that threshold was read from (Albania) and beats it on the one it was not (France). The land
models keep their fixed default (docs/accuracy.md says why).

The indexes are ratios, so they work on digital numbers, reflectance or
scaled reflectance alike, as long as the bands share a scale (true of NAIP, WorldView and Sentinel-2 L1C/L2A
without offsets; Sentinel-2 L2A from processing baseline 04.00 carries a -1000 offset to remove first).

MNDWI has its own name rather than being an optional band of ``water``: a model's bands are fixed and checked
against the scene before any pixel is read, so a scene without SWIR fails clearly instead of silently
getting a different index, and the product's model tag says which index made it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ModelError
from pipeline.models.contract import ModelInfo, builtin_model
from pipeline.threshold import IndexRange, ThresholdChoice, choose_threshold, index_histogram, is_auto

__all__ = ["SpectralIndexModel", "normalized_difference", "SPECTRAL_DEFAULTS", "AUTO_BY_DEFAULT"]


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)``, 0 where both are 0."""
    a = np.asarray(a, dtype=np.float32)
    num = np.subtract(a, b, dtype=np.float32)
    den = np.add(a, b, dtype=np.float32)
    zero = den == 0
    np.divide(num, den, out=num, where=~zero)
    num[zero] = 0.0
    return num


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function of a float32 array, computed in place (the array is consumed)."""
    # Clipped so a tiny softness saturates to 0/1 instead of overflowing exp (warnings are errors here).
    np.clip(x, -60.0, 60.0, out=x)
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1.0
    return np.reciprocal(x, out=x)


@dataclass(frozen=True, slots=True)
class SpectralIndexModel:
    """A two-class model from a spectral index: ``p(class 1) = sigmoid((index - threshold) / softness)``,
    or ``sigmoid((threshold - index) / softness)`` when ``above`` is False (the target is *below*).

    ``index`` takes the bands in ``info.bands`` order as ``(N, H, W)`` arrays. With ``auto``, ``threshold``
    is the fixed default and each image of a batch gets its own threshold from its valid pixels (not every
    band zero): :meth:`choose` (a scene is resolved to one number before its tiles run, so tiles agree).
    ``index_range`` bounds the index for the histogram.
    """

    info: ModelInfo
    index: Callable[..., np.ndarray]
    threshold: float
    softness: float = 0.05
    above: bool = True
    auto: bool = False
    index_range: IndexRange = IndexRange()
    threshold_test: str = "classes"  # pipeline.threshold.choose_threshold's test; "mixture" for radar

    def index_values(self, batch: np.ndarray) -> np.ndarray:
        """The index of an ``(N, bands, H, W)`` batch as ``(N, H, W)`` float32."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != len(self.info.bands):
            raise ModelError(
                f"model {self.info.name}: expects (N, {len(self.info.bands)}, H, W) input, got {batch.shape}"
            )
        return np.asarray(self.index(*(batch[:, i] for i in range(batch.shape[1]))), dtype=np.float32)

    def histogram(self, batch: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Histogram (:mod:`pipeline.threshold` bins) of the index over the valid pixels of a batch;
        ``valid`` ``(N, H, W)`` defaults to "not every band zero"."""
        batch = np.asarray(batch, dtype=np.float32)
        keep = np.asarray(batch.any(axis=1) if valid is None else valid, dtype=bool)
        return index_histogram(self.index_values(batch)[keep], self.index_range)

    def choose(self, hist: np.ndarray) -> ThresholdChoice:
        """The threshold a histogram of this model's index gives (the fixed default where it is not bimodal)."""
        return choose_threshold(hist, self.threshold, self.index_range, self.threshold_test)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        value = self.index_values(batch)
        thresholds = np.full((batch.shape[0], 1, 1), self.threshold, dtype=np.float32)
        if self.auto:
            valid = np.asarray(batch.any(axis=1), dtype=bool)
            for i in range(batch.shape[0]):
                hist = index_histogram(value[i][valid[i]], self.index_range)
                thresholds[i] = self.choose(hist).value
        # margin / softness, computed in place in a fresh array (the index function may return a view)
        scale = np.float32(1.0 / max(self.softness, 1e-6))
        margin = np.subtract(value, thresholds, dtype=np.float32)
        if not self.above:
            np.negative(margin, out=margin)
        margin *= scale
        out = np.empty((batch.shape[0], 2, *batch.shape[2:]), dtype=np.float32)
        out[:, 1] = _sigmoid(margin)
        np.subtract(np.float32(1.0), out[:, 1], out=out[:, 0])
        return out


# name -> (threshold, target above the threshold?); the documented defaults of the table above (the fixed
# threshold, and the fallback of ``threshold=auto``).
SPECTRAL_DEFAULTS: dict[str, tuple[float, bool]] = {
    "vegetation": (0.3, True),
    "water": (0.0, True),
    "water-mndwi": (0.0, True),
    "water-swir": (0.0, True),
    "burn": (0.1, False),
    "bare": (0.25, False),
}


# Models whose threshold is ``auto`` unless given (module docstring; docs/accuracy.md).
AUTO_BY_DEFAULT = frozenset({"water", "water-mndwi", "water-swir"})


def _ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    return normalized_difference(nir, red)


def _spectral(name: str, bands: tuple[str, str], classes: tuple[str, str], colours: tuple[str, str],
              description: str, threshold: float | str | None, softness: float | str,
              index: Callable[..., np.ndarray] = normalized_difference) -> SpectralIndexModel:
    default, above = SPECTRAL_DEFAULTS[name]
    if threshold is None and name in AUTO_BY_DEFAULT:
        threshold = "auto"
    auto = is_auto(threshold)
    try:
        value = default if threshold is None or auto else float(threshold)
        soft = float(softness)
    except (TypeError, ValueError) as err:
        raise ModelError(f"model {name}: threshold must be a number or auto, and softness a number; got "
                         f"threshold={threshold!r}, softness={softness!r}") from err
    if not -1.0 <= value <= 1.0:
        raise ModelError(f"model {name}: threshold {value} is outside the index range -1..1")
    if soft <= 0:
        raise ModelError(f"model {name}: softness must be positive, got {soft}")
    shown = f"auto (Otsu, else {value:g})" if auto else f"{value:g}"
    info = ModelInfo(name=name, version="1.0", bands=bands, class_names=classes, class_colors=colours,
                     tile_size=1024, halo=0, description=description.format(t=shown), licence="Apache-2.0")
    return SpectralIndexModel(info, index, value, soft, above, auto)


@builtin_model("vegetation")
def vegetation_model(threshold: float | str | None = None, softness: float = 0.05) -> SpectralIndexModel:
    """NDVI = (nir - red) / (nir + red); vegetation where NDVI > threshold (default 0.3)."""
    return _spectral("vegetation", ("red", "nir"), ("other", "vegetation"), ("#d9d0b4", "#1a9641"),
                     "NDVI threshold: vegetation where (nir - red) / (nir + red) > {t}", threshold, softness,
                     _ndvi)


@builtin_model("water")
def water_model(threshold: float | str | None = None, softness: float = 0.05) -> SpectralIndexModel:
    """NDWI (McFeeters) = (green - nir) / (green + nir); water where NDWI > threshold (default
    auto, falling back to 0)."""
    return _spectral("water", ("green", "nir"), ("other", "water"), ("#d9d0b4", "#2b83ba"),
                     "NDWI threshold: water where (green - nir) / (green + nir) > {t}", threshold, softness)


@builtin_model("water-mndwi")
def water_mndwi_model(threshold: float | str | None = None, softness: float = 0.05) -> SpectralIndexModel:
    """MNDWI (Xu) = (green - swir16) / (green + swir16); water where MNDWI > threshold
    (default auto, falling back to 0)."""
    return _spectral("water-mndwi", ("green", "swir16"), ("other", "water"), ("#d9d0b4", "#2b83ba"),
                     "MNDWI threshold: water where (green - swir16) / (green + swir16) > {t}", threshold,
                     softness)


@builtin_model("water-swir")
def water_swir_model(threshold: float | str | None = None, softness: float = 0.05) -> SpectralIndexModel:
    """Red/SWIR water index (Rogers & Kearney 2004) = (red - swir16) / (red + swir16); water where > threshold
    (default auto, falling back to 0).

    Water absorbs short-wave infrared almost completely while still reflecting some red light; soil and
    vegetation reflect more SWIR than red. It needs no green band, so it runs on the common SWIR/NIR/red
    false-colour composites (Landsat timelapses, the OMBRIA Sentinel-2 chips: docs/benchmarks.md).
    """
    return _spectral("water-swir", ("red", "swir16"), ("other", "water"), ("#d9d0b4", "#2b83ba"),
                     "red/SWIR water index: water where (red - swir16) / (red + swir16) > {t}", threshold,
                     softness)


@builtin_model("burn")
def burn_model(threshold: float | str | None = None, softness: float = 0.05) -> SpectralIndexModel:
    """NBR = (nir - swir22) / (nir + swir22); burned where NBR < threshold (default 0.1)."""
    return _spectral("burn", ("nir", "swir22"), ("unburned", "burned"), ("#1a9641", "#d7191c"),
                     "NBR threshold: burned where (nir - swir22) / (nir + swir22) < {t}", threshold, softness)


@builtin_model("bare")
def bare_model(threshold: float | str | None = None, softness: float = 0.05) -> SpectralIndexModel:
    """NDMI = (nir - swir16) / (nir + swir16); bare or cleared where NDMI < threshold (default 0.25).

    Closed canopy holds water and keeps NDMI high (tropical forest 0.3-0.4); soil, clear-cuts and dry
    pasture fall below. It needs no red or blue band, so it runs on NIR/SWIR-only stacks such as B8A+B11.
    """
    return _spectral("bare", ("nir", "swir16"), ("canopy", "bare"), ("#1a9641", "#a6611a"),
                     "NDMI threshold: bare or cleared where (nir - swir16) / (nir + swir16) < {t}", threshold,
                     softness)
