"""Change between dates: pure array functions, no file I/O.

Three products, all on arrays already brought onto one grid (:mod:`pipeline.change.align`):

* **Transitions** between two class maps of ``K`` classes (:func:`transition_codes`). Code 0 is "no change",
  codes ``1 .. K*(K-1)`` are the ordered pairs ``from -> to`` with ``from != to`` in row-major order, and
  :data:`CHANGE_NODATA` (255) marks a pixel that is nodata on either date: "no data" is never "no change",
  and never change either. Names come from :func:`transition_names` (``"no change"``, ``"forest->cleared"``),
  so the change raster is a class raster like any other (the vectorizer reads the names from its tags).
* **Index differences** (:data:`DIFFERENCE_MODELS`): dNDVI for vegetation loss and dNBR for burn severity,
  ``index(before) - index(after)`` binned by documented thresholds (:class:`IndexDifference`).
* **Alerts** over a dated stack (:func:`accumulate_alerts`), in the style of the operational products (Global
  Forest Watch integrated alerts, NASA OPERA DIST-ALERT): per pixel, the first date a watched transition was
  seen, the number of observations confirming it, a confidence level and the last valid observation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError
from pipeline.models.spectral import normalized_difference
from pipeline.threshold import IndexRange, ThresholdChoice, choose_threshold, index_histogram

__all__ = [
    "CHANGE_NODATA",
    "NO_CHANGE",
    "MAX_CLASSES",
    "transition_names",
    "transition_code",
    "transition_codes",
    "swap_codes",
    "watch_matrix",
    "pair_confidence",
    "IndexDifference",
    "DIFFERENCE_MODELS",
    "difference_model",
    "ALERT_NONE",
    "ALERT_LOW",
    "ALERT_HIGH",
    "ALERT_NODATA",
    "AlertLayers",
    "accumulate_alerts",
    "flood_change",
    "RATIO_RANGE",
    "ratio_histogram",
    "no_change_level",
    "darkened_water_codes",
    "iou",
]

CHANGE_NODATA = 255
NO_CHANGE = 0
MAX_CLASSES = 16  # 1 + 16 * 15 = 241 codes fit in uint8 below the nodata value


# ---------------------------------------------------------------------------------------------- transitions


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_CLASSES:
        raise ConfigError(f"change: {k} classes; transitions are coded for 1 to {MAX_CLASSES} classes")


def transition_code(from_class: int, to_class: int, k: int) -> int:
    """The code of ``from_class -> to_class`` among ``k`` classes (0 when they are equal)."""
    if from_class == to_class:
        return NO_CHANGE
    return 1 + from_class * (k - 1) + (to_class if to_class < from_class else to_class - 1)


def transition_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """Names of every code: ``("no change", "a->b", ...)``, indexed by code."""
    k = len(class_names)
    _check_k(k)
    names = ["no change"]
    for i, a in enumerate(class_names):
        names.extend(f"{a}->{b}" for j, b in enumerate(class_names) if j != i)
    return tuple(names)


def _code_table(k: int) -> np.ndarray:
    table = np.zeros((k, k), dtype=np.uint8)
    for i in range(k):
        for j in range(k):
            table[i, j] = transition_code(i, j, k)
    return table


def transition_codes(before: np.ndarray, after: np.ndarray, k: int, nodata: int = 255) -> np.ndarray:
    """uint8 transition code per pixel of two class maps (``nodata`` marks invalid pixels in the inputs).

    A pixel that is ``nodata`` (or not a valid class index) on either date is :data:`CHANGE_NODATA`.
    """
    _check_k(k)
    before = np.asarray(before)
    after = np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"class maps differ in shape: {before.shape} vs {after.shape}")
    valid = (before != nodata) & (after != nodata) & (before < k) & (after < k)
    out = np.full(before.shape, CHANGE_NODATA, dtype=np.uint8)
    out[valid] = _code_table(k)[before[valid].astype(np.intp), after[valid].astype(np.intp)]
    return out


def swap_codes(codes: np.ndarray, k: int) -> np.ndarray:
    """The codes the same pixels get with the dates swapped (``a->b`` becomes ``b->a``)."""
    table = _code_table(k)
    lookup = np.arange(256, dtype=np.uint8)
    for i in range(k):
        for j in range(k):
            lookup[table[i, j]] = table[j, i]
    return lookup[np.asarray(codes, dtype=np.uint8)]


def watch_matrix(class_names: Sequence[str], watch: str | Sequence[str] | None = None) -> np.ndarray:
    """``(K, K)`` bool: which ``from -> to`` transitions raise an alert.

    ``watch`` is None (every change), or transitions such as ``"vegetation->other"`` (several comma
    separated or as a list); ``*`` stands for any class on either side (``"vegetation->*"``).
    """
    k = len(class_names)
    if watch is None or watch == "" or watch == "*":
        return ~np.eye(k, dtype=bool)
    items = watch.split(",") if isinstance(watch, str) else list(watch)
    index = {name: i for i, name in enumerate(class_names)}
    out = np.zeros((k, k), dtype=bool)
    for item in items:
        a, sep, b = item.strip().partition("->")
        a, b = a.strip(), b.strip()
        bad = [x for x in (a, b) if x != "*" and x not in index]
        if not sep or bad:
            raise ConfigError(
                f"watched transition {item.strip()!r}: write FROM->TO with class names "
                f"({', '.join(class_names)}) or *, e.g. {class_names[-1]}->{class_names[0]}"
            )
        rows = range(k) if a == "*" else [index[a]]
        cols = range(k) if b == "*" else [index[b]]
        for i in rows:
            for j in cols:
                out[i, j] = i != j
    return out


def pair_confidence(p_before: np.ndarray, p_after: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float32 confidence of a transition: ``p_before(from) * p_after(to)``, the probability that both
    classifications are right if their errors are independent; NaN where invalid. Inputs are the
    probabilities of each date's winning class."""
    out = np.full(p_before.shape, np.nan, dtype=np.float32)
    out[valid] = (p_before[valid] * p_after[valid]).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------- index differences


def _nbr(nir: np.ndarray, swir22: np.ndarray) -> np.ndarray:
    return normalized_difference(nir, swir22)


def _ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    return normalized_difference(nir, red)


@dataclass(frozen=True, slots=True)
class IndexDifference:
    """A change model from a spectral index: ``d = index(before) - index(after)``, binned by ``edges``.

    ``classes[i]`` names the bin ``edges[i-1] <= d < edges[i]`` (``len(classes) == len(edges) + 1``);
    ``stable`` is the bin that means "no change" and becomes code 0 in the change raster. Confidence is how
    far ``d`` lies from the nearest edge, ``0.5 + 0.5 * tanh(distance / scale)``: 0.5 on an edge, near 1
    well inside a bin.
    """

    name: str
    version: str
    bands: tuple[str, ...]
    index: Callable[..., np.ndarray]
    edges: tuple[float, ...]
    classes: tuple[str, ...]
    stable: int
    scale: float = 0.1
    description: str = ""
    auto: bool = False  # threshold=auto: the edges (-t, t) come from the pair (:meth:`resolved`)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in code order: the stable bin first ("no change"), then the others in bin order."""
        return ("no change",) + tuple(c for i, c in enumerate(self.classes) if i != self.stable)

    def difference(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """``index(before) - index(after)`` for ``(bands, H, W)`` arrays in ``self.bands`` order."""
        return (self.index(*before) - self.index(*after)).astype(np.float32)

    @property
    def symmetric(self) -> bool:
        """Two edges ``(-t, t)``: a threshold ``t`` (or ``auto``) applies; published class edges take none."""
        return len(self.edges) == 2 and self.edges[0] == -self.edges[1]

    def magnitude_histogram(self, diff: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Histogram of ``|difference|`` over valid pixels in :data:`DIFFERENCE_RANGE` bins: summed over the
        windows of a pair, it gives the pair's threshold (:meth:`resolved`)."""
        return index_histogram(np.abs(diff[valid]), DIFFERENCE_RANGE)

    def resolved(self, hist: np.ndarray) -> tuple[IndexDifference, ThresholdChoice]:
        """The model with edges ``(-t, t)`` from Otsu's threshold on the histogram of ``|difference|`` over the
        pair (stable pixels near 0, changed ones far from it), kept only where it splits a bimodal histogram
        with the fixed ``t`` between its class means (:func:`pipeline.threshold.choose_threshold`), else the
        fixed edges; and the choice, for the logs and the ``SCENEWATCH_THRESHOLD`` tag."""
        from dataclasses import replace

        choice = choose_threshold(hist, self.edges[1], DIFFERENCE_RANGE)
        t = choice.value
        described = f"{self.description.split(';')[0]}; loss > {t:.4g}, gain < {-t:.4g} ({choice.source})"
        return replace(self, edges=(-t, t), description=described, auto=False), choice

    def classify(self, diff: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 codes (0 = stable bin, :data:`CHANGE_NODATA` where invalid) and float32 confidence."""
        bins = np.digitize(diff, np.asarray(self.edges, dtype=np.float32)).astype(np.intp)
        order = [self.stable] + [i for i in range(len(self.classes)) if i != self.stable]
        lookup = np.zeros(len(self.classes), dtype=np.uint8)
        for code, b in enumerate(order):
            lookup[b] = code
        codes = lookup[bins]
        codes[~valid] = CHANGE_NODATA
        dist = np.min(np.abs(diff[None] - np.asarray(self.edges, np.float32)[:, None, None]), axis=0)
        conf = (0.5 + 0.5 * np.tanh(dist / self.scale)).astype(np.float32)
        conf[~valid] = np.nan
        return codes, conf


DIFFERENCE_RANGE = IndexRange(0.0, 2.0)  # |difference| of two indexes in -1..1

DIFFERENCE_MODELS: dict[str, IndexDifference] = {
    # dNDVI = NDVI(before) - NDVI(after); a drop of more than 0.2 is vegetation loss, a rise of more than 0.2
    # a gain. 0.2 is about twice the year-to-year NDVI noise of stable cover in Landsat/Sentinel-2 time series,
    # the usual order of magnitude for clearing detection by thresholded dNDVI.
    "dndvi": IndexDifference(
        name="dndvi", version="1.0", bands=("red", "nir"), index=_ndvi, edges=(-0.2, 0.2),
        classes=("vegetation gain", "no change", "vegetation loss"), stable=1,
        description="dNDVI = NDVI(before) - NDVI(after); loss > 0.2, gain < -0.2",
    ),
    # dNBR = NBR(before) - NBR(after), NBR = (nir - swir22) / (nir + swir22), with the USGS FIREMON burn
    # severity classes of Key & Benson (2006) on unscaled dNBR: < -0.25 high regrowth, -0.25..-0.1 low
    # regrowth, -0.1..0.1 unburned, 0.1..0.27 low, 0.27..0.44 moderate-low, 0.44..0.66 moderate-high,
    # >= 0.66 high severity.
    "dnbr": IndexDifference(
        name="dnbr", version="1.0", bands=("nir", "swir22"), index=_nbr,
        edges=(-0.25, -0.1, 0.1, 0.27, 0.44, 0.66),
        classes=("enhanced regrowth high", "enhanced regrowth low", "unburned", "low severity",
                 "moderate-low severity", "moderate-high severity", "high severity"), stable=2,
        description="dNBR = NBR(before) - NBR(after), USGS/Key & Benson (2006) severity classes",
    ),
}


def difference_model(name: str) -> IndexDifference | None:
    """The index-difference model called ``name`` (case-insensitive), or None for a segmentation model."""
    return DIFFERENCE_MODELS.get(str(name).lower())


# ------------------------------------------------------------------------------------------------- alerts

ALERT_NONE = 0  # valid observations, no alert
ALERT_LOW = 1  # a watched change seen, fewer than ``confirm`` observations so far (provisional)
ALERT_HIGH = 2  # confirmed by at least ``confirm`` observations
ALERT_NODATA = 65535  # never a valid observation


@dataclass(frozen=True, slots=True)
class AlertLayers:
    """Alert state per pixel after the last date, all uint16 ``(H, W)``; :data:`ALERT_NODATA` where no date
    had a valid observation.

    ``first_day``: day (days since 1970-01-01) of the first observation of the alerting change, 0 = no alert.
    ``count``: observations confirming it (including the first). ``confidence``: :data:`ALERT_NONE`,
    :data:`ALERT_LOW` or :data:`ALERT_HIGH`. ``last_day``: day of the last valid observation.
    ``first_index``: index (1-based) of the date of first detection, 0 = no alert (for the events layer).
    """

    first_day: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    last_day: np.ndarray
    first_index: np.ndarray


def accumulate_alerts(stack: np.ndarray, days: Sequence[int], watch: np.ndarray, *, confirm: int = 2,
                      nodata: int = 255) -> AlertLayers:
    """Run the per-pixel alert state machine over a dated stack of class maps ``(T, H, W)`` (dates ascending).

    Each pixel keeps a *reference class*: its class at its first valid observation, updated by later valid
    observations while no alert is open. At a date where the pixel is valid and ``watch[reference, class]``
    holds, an alert opens (first detection) or gains a confirming observation. A provisional alert whose
    pixel is seen in its reference class again is withdrawn (a one-date false alarm, such as an unmasked
    cloud); once ``confirm`` observations agree the alert is confirmed and stays. Nodata observations
    (clouds, gaps, an empty date) are skipped: they neither confirm nor withdraw anything, so an empty date
    can never raise an alert.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3 or stack.shape[0] != len(days):
        raise ValueError(f"stack of shape {stack.shape} does not match {len(days)} dates")
    if list(days) != sorted(days):
        raise ValueError("dates must be in ascending order")
    k = watch.shape[0]
    shape = stack.shape[1:]
    ref = np.full(shape, nodata, dtype=np.intp)
    first_day = np.zeros(shape, dtype=np.uint16)
    first_index = np.zeros(shape, dtype=np.uint16)
    count = np.zeros(shape, dtype=np.uint16)
    last_day = np.zeros(shape, dtype=np.uint16)
    seen = np.zeros(shape, dtype=bool)
    padded = np.zeros((k + 1, k + 1), dtype=bool)
    padded[:k, :k] = watch
    for t, (classes, day) in enumerate(zip(stack, days, strict=True)):
        valid = (classes != nodata) & (classes < k)
        cls = np.where(valid, classes, k).astype(np.intp)
        last_day[valid] = day
        has_ref = valid & seen
        alerting = has_ref & padded[np.where(has_ref, ref, k), cls]
        open_ = count > 0
        confirmed = count >= confirm
        new = alerting & ~open_
        first_day[new] = day
        first_index[new] = t + 1
        count[alerting] += 1
        back = has_ref & ~alerting & open_ & ~confirmed & (cls == ref)
        count[back] = 0
        first_day[back] = 0
        first_index[back] = 0
        # the reference follows the pixel while no alert is open (unwatched changes move it too)
        follow = valid & ~(count > 0)
        ref[follow] = cls[follow]
        seen |= valid
    confidence = np.where(count >= confirm, ALERT_HIGH, np.where(count > 0, ALERT_LOW, ALERT_NONE))
    layers = [first_day, count, confidence.astype(np.uint16), last_day, first_index]
    for layer in layers:
        layer[~seen] = ALERT_NODATA
    return AlertLayers(*layers)


# ------------------------------------------------------------------------------------------------- floods


def flood_change(water_before: np.ndarray, water_after: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 flood map: 1 where water appears (not water before, water after), 0 elsewhere, 255 invalid."""
    out = (np.asarray(water_after, bool) & ~np.asarray(water_before, bool)).astype(np.uint8)
    out[~valid] = CHANGE_NODATA
    return out


# Radar: water on both dates that got darker is new flood water (flood-sar, pipeline.models.sar's docstring).
RATIO_RANGE = IndexRange(-25.0, 25.0)  # dB of after - before (the log-ratio), 0.1 dB bins


def ratio_histogram(db_before: np.ndarray, db_after: np.ndarray, land: np.ndarray) -> np.ndarray:
    """Histogram (:data:`RATIO_RANGE` bins) of the log-ratio ``after - before`` (dB) over ``land``: the pixels
    that are valid and not water on either date. Summed over windows, it gives the pair's no-change level."""
    land = np.asarray(land, bool)
    return index_histogram(np.asarray(db_after, np.float32)[land] - np.asarray(db_before, np.float32)[land],
                           RATIO_RANGE)


def no_change_level(hist: np.ndarray) -> float:
    """The median log-ratio (dB) of land on both dates: what "unchanged" looks like in this pair (0 for
    calibrated sigma0; the offset between the two stretches for per-image 8-bit renderings). 0 with no land."""
    counts = np.asarray(hist, dtype=np.float64)
    if counts.sum() <= 0:
        return 0.0
    median_bin = int(np.searchsorted(np.cumsum(counts), counts.sum() / 2))
    return float(RATIO_RANGE.centres[median_bin])


def darkened_water_codes(codes: np.ndarray, db_before: np.ndarray, db_after: np.ndarray,
                         classes_before: np.ndarray, classes_after: np.ndarray, level: float) -> np.ndarray:
    """Two-class (``other``, ``water``) transition codes where water on both dates that is darker after than
    the pair's no-change ``level`` becomes ``other->water`` (new flood water); permanent water (water on both
    dates, not darker) stays "no change". ``classes_*`` are class indices (1 = water)."""
    both = (np.asarray(classes_before) == 1) & (np.asarray(classes_after) == 1) & (codes != CHANGE_NODATA)
    darker = both & ((np.asarray(db_after, np.float32) - np.asarray(db_before, np.float32)) < np.float32(level))
    out = np.array(codes, dtype=np.uint8, copy=True)
    out[darker] = transition_code(0, 1, 2)
    return out


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    union = np.count_nonzero(predicted | truth)
    return 1.0 if union == 0 else np.count_nonzero(predicted & truth) / union
