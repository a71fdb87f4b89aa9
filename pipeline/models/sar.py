"""Built-in radar flood model ``flood-sar``: open water is the low mode of Sentinel-1 backscatter.

Calm open water reflects the radar pulse away from the sensor (specular reflection), so its backscatter is
far below that of land: VV sigma0 of open water is typically below -18 dB, land -12..-5 dB; VH is about
6 dB lower on both. The model thresholds backscatter in dB (water *below* the threshold) after a boxcar
speckle filter, and is a two-class :class:`~pipeline.models.spectral.SpectralIndexModel` (``other``,
``water``), so tiling, ``predict``, ``change``, ``timeline`` and ``compare_arrays`` treat it like the optical
water models. A before/after pair gives new water (``other->water``, step 2 below)::

    ds = compare_arrays(before, after, "flood-sar", bands={"vv": 0})
    flooded = ds.change == ds.attrs["class_names"].index("other->water")

Method (docs/accuracy.md has the measurements and the alternatives that lost):

1. **Water on each date**: backscatter in dB after a boxcar speckle filter, below a threshold chosen per
   image (``threshold=auto``, the default): Otsu's threshold on the dB histogram, kept where Ashman's D of a
   two-Gaussian mixture fitted to that histogram exceeds 2 (:func:`pipeline.threshold.mixture_d`), else the
   fixed -18 dB. Unlike the optical water models there is no test of the modes against the fixed -18 dB:
   8-bit renderings such as OMBRIA's S1 chips are min-max stretched *per chip and per date* (one pixel at
   0, one at 255 in every chip), so an absolute dB value means a different backscatter in every chip, and
   the low mode of backscatter is water by physics anyway. The mixture's D is what tells a chip with water
   (two modes) from a dry one (one mode, D near 0).
2. **New water** (change, ``other->water``): water after that was not water before, **or** water on both
   dates that is darker after than the pair's no-change level, the median log-ratio ``after - before`` (dB)
   of the pixels that are land on both dates (:func:`pipeline.change.transitions.darkened_water_codes`).
   The before image only removes *permanent* water: water on both dates that did not get darker. Land's
   median ratio is 0 dB for calibrated sigma0 and the offset between the two stretches for per-image
   8-bit renderings (a pseudo-invariant normalisation, no constant).

Why step 2: in OMBRIA Albania the flooded fields are already dark in the BEFORE chip (wet soil, or the
before acquisition already partly flooded: median 117 of 255 against 138 for dry land), so "water after
and not water before" missed them (IoU 0.072, below the trivial 0.229); water after alone counts lakes and
rivers as flood. With both steps: Albania 0.502, France 0.673 (trivial 0.229 / 0.074).

This follows UN-SPIDER's Recommended Practice "Flood mapping and damage assessment using Sentinel-1 SAR
data" (UN-SPIDER Knowledge Portal, 2019): calibrated sigma0, speckle filtering (a focal mean), change
between a before and an after image (their ratio), permanent water removed; with the automatic per-image
threshold of the S1 flood services (Martinis, Twele & Voigt 2009; Twele et al. 2016) in place of their
fixed ratio threshold, which has no meaning on stretched 8-bit renderings. ``scenewatch change`` and
``compare_arrays`` apply the same two steps (the change raster's description records the no-change level);
``change`` given two class rasters instead of scenes, and ``timeline``, have no backscatter of both dates at
hand and apply step 1 only.

Options (``--model-option KEY=VALUE``, ``ModelRef.of("flood-sar", KEY=VALUE)``):

* ``units``: what the pixels hold. ``db`` (10 log10 sigma0), ``linear`` (sigma0), ``uint8`` (an 8-bit
  rendering such as OMBRIA's S1 chips, read as a linear stretch of ``db_min``..``db_max`` dB over 0..255), or
  ``auto`` (default): per image, any negative value means dB, values all within 0..2 mean linear sigma0,
  whole numbers up to 255 mean an 8-bit rendering, anything else dB. Give ``units`` on scenes: a tile
  all of one kind could be read differently from its neighbours.
* ``db_min``, ``db_max`` (default -25, 0): the dB range an 8-bit rendering stretches over. OMBRIA does
  not document its stretch, and it is a per-chip min-max stretch, so this reading only places the fixed
  -18 dB fallback; the automatic threshold and the change rule do not depend on it.
* ``polarisations``: ``vv`` (default; band ``vv``), ``vh`` (band ``vh``) or ``vv,vh`` (bands ``vv`` and
  ``vh``; the index is their mean in dB and the default threshold the mean of theirs).
* ``threshold``: ``auto`` (default) or a number in dB; the fixed default (and fallback) is -18 dB for
  VV, -24 dB for VH.
* ``speckle``: radius in pixels of the boxcar mean (in dB) that damps speckle before thresholding (default
  2, a 5x5 window: the smallest common multilook window; 0 turns it off). The model's halo covers it, so
  tiled results equal whole-image ones.
* ``softness``: dB over which the probability goes from 0.27 to 0.73 around the threshold (default 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

import numpy as np

from pipeline.errors import ModelError
from pipeline.models.contract import ModelInfo, builtin_model
from pipeline.models.spectral import SpectralIndexModel
from pipeline.threshold import IndexRange, is_auto

__all__ = ["SAR_DEFAULTS", "SAR_RANGE", "Backscatter", "flood_sar_model", "is_backscatter", "to_db"]

SAR_DEFAULTS = {"vv": -18.0, "vh": -24.0}  # dB; open water below (fixed default and fallback of auto)
SAR_RANGE = IndexRange(-40.0, 10.0)  # dB: the histogram's bounds (sigma0 of 1e-4 .. 10)
UNITS = ("auto", "db", "linear", "uint8")


def detect_units(values: np.ndarray) -> str:
    """``db``, ``linear`` or ``uint8`` from the values of one image (zeros, the nodata of every kind, aside)."""
    v = values[values != 0]
    if v.size == 0:
        return "db"
    low, high = float(v.min()), float(v.max())
    if low < 0:
        return "db"
    if high <= 2.0:
        return "linear"
    if high <= 255 and bool(np.all(v == np.round(v))):
        return "uint8"
    return "db"


def to_db(values: np.ndarray, units: str, db_min: float = -25.0, db_max: float = 0.0) -> np.ndarray:
    """Backscatter in dB from ``db``, ``linear`` sigma0 or an ``uint8`` rendering of ``db_min``..``db_max``."""
    values = np.asarray(values, dtype=np.float32)
    if units == "db":
        return values.copy()
    if units == "linear":
        return (10.0 * np.log10(np.maximum(values, np.float32(1e-6)))).astype(np.float32)
    if units == "uint8":
        return (np.float32(db_min) + values * np.float32((db_max - db_min) / 255.0)).astype(np.float32)
    raise ModelError(f"model flood-sar: `units` {units!r}: choose one of {', '.join(UNITS)}")


@dataclass(frozen=True, slots=True)
class Backscatter:
    """The index of ``flood-sar``: mean backscatter in dB of the given polarisations, boxcar-filtered."""

    units: str = "auto"
    db_min: float = -25.0
    db_max: float = 0.0
    speckle: int = 2

    def __call__(self, *bands: np.ndarray) -> np.ndarray:
        out = np.zeros(bands[0].shape, dtype=np.float32)
        for band in bands:  # (N, H, W) each
            band = np.asarray(band, dtype=np.float32)
            for i in range(band.shape[0]):
                units = detect_units(band[i]) if self.units == "auto" else self.units
                out[i] += to_db(band[i], units, self.db_min, self.db_max)
        out /= len(bands)
        if self.speckle > 0:
            from scipy.ndimage import uniform_filter

            size = 2 * self.speckle + 1
            out = uniform_filter(out, size=(1, size, size), mode="nearest").astype(np.float32)
        return out


@builtin_model("flood-sar")
def flood_sar_model(threshold: float | str | None = None, units: str = "auto", polarisations: str = "vv",
                    speckle: int | str = 2, db_min: float | str = -25.0, db_max: float | str = 0.0,
                    softness: float | str = 1.0) -> SpectralIndexModel:
    """Sentinel-1 open water: backscatter (dB) below ``threshold`` (default auto, falling back to -18 dB VV /
    -24 dB VH); bands ``vv`` and/or ``vh`` (``polarisations``), in dB, linear sigma0 or 8-bit (``units``)."""
    pols = tuple(p.strip().lower() for p in str(polarisations).split(",") if p.strip())
    if not pols or any(p not in SAR_DEFAULTS for p in pols) or len(set(pols)) != len(pols):
        raise ModelError(f"model flood-sar: `polarisations` {polarisations!r}: write vv, vh or vv,vh")
    if str(units).lower() not in UNITS:
        raise ModelError(f"model flood-sar: `units` {units!r}: choose one of {', '.join(UNITS)}")
    auto = threshold is None or is_auto(threshold)
    default = float(np.mean([SAR_DEFAULTS[p] for p in pols]))
    try:
        value = default if auto else float(threshold)  # type: ignore[arg-type]
        radius, low, high, soft = int(speckle), float(db_min), float(db_max), float(softness)
    except (TypeError, ValueError) as err:
        raise ModelError(f"model flood-sar: threshold must be a number (dB) or auto, speckle a whole number of "
                         f"pixels, db_min/db_max/softness numbers; got threshold={threshold!r}, speckle={speckle!r}, "
                         f"db_min={db_min!r}, db_max={db_max!r}, softness={softness!r}") from err
    if not SAR_RANGE.low <= value <= SAR_RANGE.high:
        raise ModelError(f"model flood-sar: threshold {value} dB is outside {SAR_RANGE.low:g}..{SAR_RANGE.high:g} dB")
    if radius < 0 or soft <= 0 or not low < high:
        raise ModelError(f"model flood-sar: need speckle >= 0, softness > 0 and db_min < db_max; got speckle={radius}, "
                         f"softness={soft}, db_min={low}, db_max={high}")
    shown = f"auto (Otsu, else {value:g} dB)" if auto else f"{value:g} dB"
    info = ModelInfo(name="flood-sar", version="1.0", bands=pols, class_names=("other", "water"),
                     class_colors=("#d9d0b4", "#2b83ba"), tile_size=1024, halo=radius,
                     description=f"Sentinel-1 open water: {'+'.join(pols)} backscatter below {shown}, "
                                 f"{2 * radius + 1}x{2 * radius + 1} boxcar", licence="Apache-2.0")
    index = Backscatter(str(units).lower(), low, high, radius)
    return SpectralIndexModel(info, index, value, soft, False, auto, SAR_RANGE, "mixture")


def is_backscatter(model: object) -> TypeGuard[SpectralIndexModel]:
    """Whether ``model`` is ``flood-sar`` (a two-class model on :class:`Backscatter`): its change takes water
    on both dates that got darker as new water (:func:`pipeline.change.transitions.darkened_water_codes`)."""
    return isinstance(model, SpectralIndexModel) and isinstance(model.index, Backscatter)
