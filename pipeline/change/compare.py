"""Change computed on arrays: a window of two dates, area bookkeeping, and whole co-registered arrays.

Nothing here opens a file: :mod:`pipeline.change.rasters` reads and writes the windows, and
:mod:`workflows.change` walks the common grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.change.transitions import (
    CHANGE_NODATA,
    darkened_water_codes,
    no_change_level,
    pair_confidence,
    ratio_histogram,
    transition_codes,
    transition_names,
)
from pipeline.errors import ConfigError
from pipeline.products import CLASS_NODATA, PROBA_UINT8_NODATA, PROBA_UINT8_SCALE

if TYPE_CHECKING:  # imported lazily where used
    import pandas as pd
    import xarray as xr

__all__ = [
    "CONFIDENCE_NODATA",
    "CONFIDENCE_SCALE",
    "AreaTally",
    "class_change",
    "class_areas",
    "combine_flood",
    "compare_arrays",
    "encode_confidence",
]

# Confidence is stored as probabilities are (pipeline.products): round(c * 254), 255 = nodata.
CONFIDENCE_NODATA = PROBA_UINT8_NODATA
CONFIDENCE_SCALE = PROBA_UINT8_SCALE


def encode_confidence(conf: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float32 confidence in [0, 1] to uint8 ``round(c x 254)``, :data:`CONFIDENCE_NODATA` where invalid."""
    out = np.rint(np.nan_to_num(conf, nan=0.0) * CONFIDENCE_SCALE).astype(np.uint8)
    out[~valid | ~np.isfinite(conf)] = CONFIDENCE_NODATA
    return out


def class_change(classes_before: np.ndarray, p_before: np.ndarray, classes_after: np.ndarray,
                 p_after: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Transition codes and encoded confidence ``p_before x p_after`` of one window of two class rasters
    (``CLASS_NODATA`` where a date has no data; ``p_*`` the probability of each pixel's class)."""
    codes = transition_codes(classes_before, classes_after, k, nodata=CLASS_NODATA)
    valid = codes != CHANGE_NODATA
    conf = np.where(valid, p_before * p_after, np.nan).astype(np.float32)
    return codes, encode_confidence(conf, valid)


class AreaTally:
    """Area (m²) and pixels per code, summed window by window; ``row_areas`` is each row's pixel area."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.area = np.zeros(len(self.names))
        self.pixels = np.zeros(len(self.names), dtype=np.int64)

    def add(self, codes: np.ndarray, row_areas: np.ndarray) -> None:
        valid = codes != CHANGE_NODATA
        weights = np.broadcast_to(row_areas[:, None], codes.shape)
        n = len(self.names)
        self.area += np.bincount(codes[valid].astype(np.intp), weights=weights[valid], minlength=n)[:n]
        self.pixels += np.bincount(codes[valid].astype(np.intp), minlength=n)[:n]

    def table(self) -> pd.DataFrame:
        """code, transition, pixels, area_m2: one row per code."""
        import pandas as pd

        return pd.DataFrame([{"code": c, "transition": self.names[c], "pixels": int(self.pixels[c]),
                              "area_m2": float(self.area[c])} for c in range(len(self.names))])


def class_areas(classes: np.ndarray, row_areas: np.ndarray, k: int,
                nodata: int = CLASS_NODATA) -> tuple[np.ndarray, np.ndarray, float]:
    """Area (m²) and pixels of each of ``k`` classes in one window, and the valid area (every pixel but
    ``nodata``); ``row_areas`` is each row's pixel area."""
    weights = np.broadcast_to(row_areas[:, None], classes.shape)
    ok = classes != nodata
    values = classes[ok].astype(np.intp)
    area = np.bincount(values, weights=weights[ok], minlength=k)[:k]
    count = np.bincount(values, minlength=k)[:k]
    return area, count, float(weights[ok].sum())


def _difference_of(model: Any) -> Any:
    """The index-difference model ``model`` names (``"dndvi"``, or ``ModelRef.of("dndvi", threshold=...)`` with
    a number or ``auto``), or None for a segmentation model."""
    from dataclasses import replace

    from pipeline.change.transitions import difference_model
    from pipeline.models.contract import ModelRef
    from pipeline.threshold import is_auto

    if isinstance(model, str):
        return difference_model(model)
    if not isinstance(model, ModelRef) or not model.source:
        return None
    diff = difference_model(model.source)
    t = dict(model.options).get("threshold")
    if diff is None or t is None:
        return diff
    if not diff.symmetric:
        raise ConfigError(f"model {diff.name}: has fixed, published class edges and takes no threshold")
    if is_auto(t):
        return replace(diff, auto=True)
    return replace(diff, edges=(-float(t), float(t)))


def compare_arrays(before: np.ndarray, after: np.ndarray, model: Any = "vegetation", *,
                   bands: Mapping[str, int] | None = None, valid: np.ndarray | None = None) -> xr.Dataset:
    """Change between two co-registered ``(channels, H, W)`` arrays: chips without georeferencing, or a
    notebook's own arrays. The same products as :func:`workflows.change.detect_change`, with no files and
    no grid.

    ``bands`` maps the model's band names to 0-based channels (default: the model's bands in channel order);
    ``valid`` marks usable pixels (default: not all channels zero on both dates). Returns a Dataset with
    ``change`` (uint8 codes) and ``confidence`` (float32, NaN where invalid).

    Example (OMBRIA chips, SWIR/NIR/red composites)::

        ds = compare_arrays(before_png, after_png, "water-swir", bands={"swir16": 0, "nir": 1, "red": 2})
        flooded = ds.change == ds.attrs["class_names"].index("other->water")
    """
    import xarray as xr

    from pipeline.inference.predict import predict_array
    from pipeline.inference.stitch import classify
    from pipeline.models.contract import ModelRef
    from pipeline.models.loader import load_model
    from pipeline.models.sar import is_backscatter

    before = np.asarray(before, dtype=np.float32)
    after = np.asarray(after, dtype=np.float32)
    if before.shape != after.shape or before.ndim != 3:
        raise ConfigError(f"compare_arrays: before {before.shape} and after {after.shape} must be equal "
                          "(channels, rows, cols) arrays")
    if valid is None:
        valid = np.asarray(before.any(axis=0) & after.any(axis=0))
    diff_model = _difference_of(model)
    band_names = diff_model.bands if diff_model is not None else load_model(ModelRef.of(model)).info.bands
    mapping = dict(bands) if bands is not None else {b: i for i, b in enumerate(band_names)}
    missing = [b for b in band_names if b not in mapping]
    if missing:
        raise ConfigError(f"compare_arrays: the model needs band(s) {', '.join(missing)}; pass `bands` as "
                          f"{{{', '.join(repr(b) + ': <channel>' for b in band_names)}}}")
    pick = [mapping[b] for b in band_names]
    if diff_model is not None:
        diff = diff_model.difference(before[pick], after[pick])
        if diff_model.auto:  # the pair's own threshold, from |difference| over its valid pixels
            diff_model, _ = diff_model.resolved(diff_model.magnitude_histogram(diff, valid))
        codes, conf = diff_model.classify(diff, valid)
        names = diff_model.class_names
    else:
        seg = load_model(ModelRef.of(model))
        p_b, p_a = predict_array(seg, before[pick], valid), predict_array(seg, after[pick], valid)
        c_b, c_a = classify(p_b, valid), classify(p_a, valid)
        names = transition_names(seg.info.class_names)
        codes = transition_codes(c_b, c_a, seg.info.num_classes, nodata=CLASS_NODATA)
        if is_backscatter(seg):  # flood-sar: water on both dates that got darker is new water too
            db_b, db_a = seg.index_values(before[pick][None])[0], seg.index_values(after[pick][None])[0]
            land = (c_b == 0) & (c_a == 0)
            level = no_change_level(ratio_histogram(db_b, db_a, land))
            codes = darkened_water_codes(codes, db_b, db_a, c_b, c_a, level)
        conf = pair_confidence(np.nanmax(np.where(valid, p_b, 0), axis=0), np.nanmax(np.where(valid, p_a, 0), axis=0),
                               codes != CHANGE_NODATA)
    return xr.Dataset({"change": (("y", "x"), codes), "confidence": (("y", "x"), conf)},
                      attrs={"class_names": list(names), "model": str(model), "nodata": CHANGE_NODATA})


def combine_flood(optical: np.ndarray, radar: np.ndarray, optical_valid: np.ndarray,
                  radar_valid: np.ndarray) -> np.ndarray:
    """One flood map from an optical and a radar pair of the same place and grid: uint8, 1 = flooded, 0 = not,
    :data:`CHANGE_NODATA` where neither pair is valid.

    ``optical``/``radar`` are bool "new water" masks (``other->water`` of ``water-swir`` and ``flood-sar``
    change); a pixel is flooded if either says so where it is valid (the union: each sensor misses floods
    the other sees - clouds for optical, flooded vegetation and wind-roughened water for radar), and takes
    the radar's answer alone where the optical pair is masked (clouds) and the optical's where the radar is.
    """
    optical = np.asarray(optical, bool) & optical_valid
    radar = np.asarray(radar, bool) & radar_valid
    out = (optical | radar).astype(np.uint8)
    out[~(optical_valid | radar_valid)] = CHANGE_NODATA
    return out
