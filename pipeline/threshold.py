"""Adaptive thresholds: Otsu's threshold on a fixed-bin histogram of an index, with a bimodality test and a
fall back to the model's fixed default.

Method (``threshold=auto`` on every spectral model, ``flood-sar`` and the flood change they make):

1. **Histogram.** The index over valid pixels, counted in :data:`BINS` fixed bins over the index's bounded
   range (-1..1 for a normalized difference, -40..+10 dB for radar backscatter); values outside are
   clipped into the end bins. Fixed bins are what make the scene-wide histogram a sum of per-tile histograms
   (:func:`index_histogram` in each Dask worker, summed in the client: ``workflows.threshold``), so a scene
   is never loaded whole; 512 bins resolve 0.004 of a normalized index, finer than any threshold matters.
2. **Otsu (1979).** The bin edge that maximises the between-class variance of the two sides
   (:func:`otsu`).
3. **Is it a water/land split?** The threshold is kept only if both tests hold (:func:`choose_threshold`),
   otherwise the model's fixed default is used, logged and recorded as a fallback:

   * *bimodal*: Ashman's D = sqrt(2) |mu1 - mu2| / sqrt(s1² + s2²) > 2 between the two classes Otsu made
     (Ashman, Bird & Zepf 1994: D > 2 is needed for a clean separation of a two-component mixture);
   * *the right two modes*: the fixed default lies between the two class means. The default is the index's
     physical boundary (0 for a water index: water reflects more red than SWIR; -18 dB for VV backscatter),
     so this says that one mode is target-like and the other is not. Without it, a chip with no water
     splits vegetation from bare soil (France: NDVI-like modes at a water index of -0.45) and calls a third
     of the land flooded; with it, Otsu only moves the boundary between water and land to where *this*
     scene's histogram has its valley.

**Radar (``flood-sar``) uses a stricter test instead** (``test="mixture"``): Ashman's D of a two-Gaussian mixture
fitted to the histogram by EM (started from Otsu's split; :func:`mixture_d`), D > 2, and no mode-side test.
Ashman et al. define D on the components of a fitted mixture; on Otsu's truncated classes it is inflated (a
single Gaussian gives 2.65), so it passes unimodal chips. The mixture's D is near 0 for one mode and drops
below 2 when two modes merge, so it alone can tell a chip with water from a dry one. Radar needs it because
its 8-bit renderings (OMBRIA's S1 chips) are min-max stretched per chip and per date (the darkest pixel is 0,
the brightest 255, one pixel each), so the default's absolute -18 dB means a different backscatter in every
chip and the mode-side test fell back on every Albania chip (water there renders at -15 dB with the
-25..0 dB reading). The low mode of backscatter is water by physics (specular reflection), so no side test is
needed.

Neither test has a constant read from the labelled events: D > 2 is Ashman's, the default is the model's
documented one. Alternatives measured on OMBRIA (docs/accuracy.md, ``python -m bench.accuracy``) and not
kept: Kittler & Illingworth's minimum-error threshold (1986) on the same histogram (France S2 0.275, Albania
0.546 against 0.649 fixed: its Gaussian fit breaks on skewed land modes), Otsu on the pair's pooled histogram
(0.643 / 0.260), Otsu on the index difference (0.618 / 0.090), and Otsu without the mode test (France 0.137).

References: N. Otsu, "A threshold selection method from gray-level histograms", IEEE Trans. SMC 9(1), 1979;
K. Ashman, C. Bird, S. Zepf, "Detecting bimodality in astronomical datasets", AJ 108, 1994; J. Kittler,
J. Illingworth, "Minimum error thresholding", Pattern Recognition 19(1), 1986.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BINS", "ASHMAN_D_MIN", "IndexRange", "ThresholdChoice", "index_histogram", "otsu", "ashman_d",
           "mixture_d", "choose_threshold", "auto_threshold", "is_auto"]

BINS = 512
ASHMAN_D_MIN = 2.0  # Ashman et al. 1994: a clean separation of two modes needs D > 2


def is_auto(threshold: object) -> bool:
    """Whether a threshold option asks for the adaptive threshold (the string ``auto``)."""
    return isinstance(threshold, str) and threshold.strip().lower() == "auto"


@dataclass(frozen=True, slots=True)
class IndexRange:
    """The bounded range of an index and its histogram bins (``low`` .. ``high``, ``bins`` equal bins)."""

    low: float = -1.0
    high: float = 1.0
    bins: int = BINS

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.low, self.high, self.bins + 1)

    @property
    def centres(self) -> np.ndarray:
        edges = self.edges
        return (edges[:-1] + edges[1:]) / 2


@dataclass(frozen=True, slots=True)
class ThresholdChoice:
    """The threshold used and why: ``source`` is ``auto`` (Otsu's, accepted), ``fallback`` (the fixed
    default, because the histogram was not a target/other split) or ``fixed`` (given as a number)."""

    value: float
    source: str
    detail: str = ""

    def describe(self) -> str:
        """One line for tags and logs, e.g. ``0.1133 auto (Otsu; Ashman D 5.4)``."""
        text = f"{self.value:.4g} {self.source}"
        return f"{text} ({self.detail})" if self.detail else text


def index_histogram(values: np.ndarray, rng: IndexRange = IndexRange()) -> np.ndarray:
    """int64 counts of the finite ``values`` in ``rng``'s bins (values outside clipped into the end bins)."""
    values = np.asarray(values, dtype=np.float32).ravel()
    values = values[np.isfinite(values)]
    # bin index by arithmetic: what np.histogram does for equal bins, without its float64 copy
    scaled = (values - np.float32(rng.low)) * np.float32(rng.bins / (rng.high - rng.low))
    idx = np.clip(scaled, 0, rng.bins - 1).astype(np.intp)
    return np.bincount(idx, minlength=rng.bins).astype(np.int64)


def _moments(counts: np.ndarray, centres: np.ndarray) -> tuple[float, float, float]:
    n = float(counts.sum())
    if n == 0:
        return 0.0, math.nan, math.nan
    mean = float((counts * centres).sum() / n)
    return n, mean, float((counts * (centres - mean) ** 2).sum() / n)


def otsu(hist: np.ndarray, rng: IndexRange = IndexRange()) -> float | None:
    """Otsu's threshold (a bin edge) of a histogram in ``rng``'s bins; None for an empty or one-valued one."""
    counts = np.asarray(hist, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    p = counts / total
    centres = rng.centres
    w0 = np.cumsum(p)[:-1]
    m0 = np.cumsum(p * centres)[:-1]
    mt = float((p * centres).sum())
    w1 = 1.0 - w0
    ok = (w0 > 0) & (w1 > 1e-12)
    if not ok.any():
        return None
    between = np.zeros_like(w0)
    between[ok] = (mt * w0[ok] - m0[ok]) ** 2 / (w0[ok] * w1[ok])
    # Empty bins between two modes make a plateau of equal variance: take its middle, not its first edge
    # (two pixels at -0.6 and 0.6 split at 0, not just above -0.6).
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(rng.edges[int(best[len(best) // 2]) + 1])


def ashman_d(hist: np.ndarray, threshold: float, rng: IndexRange = IndexRange()) -> tuple[float, float, float]:
    """Ashman's D of the two classes a threshold makes, and the two class means (low side, high side)."""
    counts = np.asarray(hist, dtype=np.float64)
    centres = rng.centres
    low = centres < threshold
    n0, mu0, v0 = _moments(counts[low], centres[low])
    n1, mu1, v1 = _moments(counts[~low], centres[~low])
    if n0 == 0 or n1 == 0:
        return 0.0, mu0, mu1
    spread = math.sqrt(v0 + v1)
    return (math.inf if spread == 0 else math.sqrt(2) * abs(mu1 - mu0) / spread), mu0, mu1


def mixture_d(hist: np.ndarray, threshold: float, rng: IndexRange = IndexRange(), iterations: int = 200) -> float:
    """Ashman's D of a two-Gaussian mixture fitted to ``hist`` by EM, started from the two classes ``threshold``
    makes (Otsu's); 0 where one component empties. Deterministic (no random start), on the 512 bins only."""
    counts = np.asarray(hist, dtype=np.float64)
    c = rng.centres
    total = counts.sum()
    low = c < threshold
    parts = [(counts[low], c[low]), (counts[~low], c[~low])]
    if total <= 0 or any(n.sum() == 0 for n, _ in parts):
        return 0.0
    floor = ((rng.high - rng.low) / rng.bins) ** 2 / 12  # a bin's own variance: no component narrower
    w = np.array([n.sum() / total for n, _ in parts])
    mu = np.array([(n * x).sum() / n.sum() for n, x in parts])
    var = np.array([max((n * (x - m) ** 2).sum() / n.sum(), floor) for (n, x), m in zip(parts, mu, strict=True)])
    for _ in range(iterations):
        density = w[:, None] / np.sqrt(2 * np.pi * var[:, None]) * np.exp(-(c[None] - mu[:, None]) ** 2
                                                                           / (2 * var[:, None]))
        norm = density.sum(axis=0)
        norm[norm == 0] = np.inf  # a bin neither component reaches (far tails) weighs nothing
        resp = density / norm * counts[None]
        nk = resp.sum(axis=1)
        if not (nk > 0).all():
            return 0.0
        new_mu = (resp * c).sum(axis=1) / nk
        var = np.maximum((resp * (c[None] - new_mu[:, None]) ** 2).sum(axis=1) / nk, floor)
        w = nk / total
        done = float(np.abs(new_mu - mu).max()) < 1e-6 * (rng.high - rng.low)
        mu = new_mu
        if done:
            break
    return float(math.sqrt(2) * abs(mu[1] - mu[0]) / math.sqrt(var.sum()))


def choose_threshold(hist: np.ndarray, default: float, rng: IndexRange = IndexRange(),
                     test: str = "classes") -> ThresholdChoice:
    """Otsu's threshold of ``hist`` if it splits a bimodal histogram into a mode on each side of the fixed
    ``default`` (module docstring), else ``default`` as a fallback; the reason is in ``detail``.

    ``test="mixture"`` (radar): kept where Ashman's D of a fitted two-Gaussian mixture exceeds 2
    (:func:`mixture_d`), with no mode-side test."""
    n = int(np.asarray(hist).sum())
    if n == 0:
        return ThresholdChoice(default, "fallback", "no valid pixels")
    value = otsu(hist, rng)
    if value is None:
        return ThresholdChoice(default, "fallback", "one value only")
    if test == "mixture":
        d = mixture_d(hist, value, rng)
        if not d > ASHMAN_D_MIN:
            return ThresholdChoice(default, "fallback", f"not bimodal: Ashman D {d:.2f} <= {ASHMAN_D_MIN:g} "
                                                        f"(two-Gaussian fit), Otsu would give {value:.4g}")
        return ThresholdChoice(value, "auto", f"Otsu; Ashman D {d:.1f}, two-Gaussian fit")
    d, mu0, mu1 = ashman_d(hist, value, rng)
    if not d > ASHMAN_D_MIN:
        return ThresholdChoice(default, "fallback", f"not bimodal: Ashman D {d:.2f} <= {ASHMAN_D_MIN:g}, "
                                                    f"Otsu would give {value:.4g}")
    if not mu0 < default < mu1:
        return ThresholdChoice(default, "fallback", f"Otsu's {value:.4g} splits two modes on one side of the "
                                                    f"default {default:g} (means {mu0:.3g}, {mu1:.3g})")
    return ThresholdChoice(value, "auto", f"Otsu; Ashman D {d:.1f}")


def auto_threshold(values: np.ndarray, default: float, rng: IndexRange = IndexRange(),
                   test: str = "classes") -> ThresholdChoice:
    """:func:`choose_threshold` of an in-memory array of index values (NaN = invalid)."""
    return choose_threshold(index_histogram(values, rng), default, rng, test)
