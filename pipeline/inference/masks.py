"""Quality masks: pixels a quality band marks unusable (cloud, shadow, snow, fill) become nodata.

A :class:`QualityMask` is parsed once at the edge (``--mask`` flags, a job file's ``mask:``) from one text per
band, and travels inward as a value (it pickles to Dask workers). :func:`pipeline.inference.read.read_window`
reads the mask's bands beside the model's (never as model input) and turns the unusable pixels invalid, so
they are nodata in every product: no class, no change, no alert, no confirmation.

Grammar of one ``--mask`` (repeatable, one band each)::

    NAME=VALUES     VALUES: pixel values and inclusive ranges, comma separated: clm=1   clm=1,2,8-11
    scl             Sentinel-2 L2A scene classification, every class of SCL_CLASSES
    scl=cloud,shadow            only these classes (names of SCL_CLASSES); numbers are raw values
    qa_pixel        Landsat Collection 2 QA_PIXEL bit flags, every flag of QA_PIXEL_BITS
    qa_pixel=cloud,shadow       only these flags (names of QA_PIXEL_BITS); numbers are raw values

NAME is a band of the band map (``--bands red=1,nir=2,clm=3``; the ``sentinel2-l2a`` preset names ``scl``
13th, the Landsat presets ``qa_pixel`` last). ``mask_dilate`` grows every unusable patch by N pixels (8-
connected, a square of 2N+1): cloud edges and thin shadows that the quality band misses. The mask band is
read over the tile's window plus N pixels on each side, so a dilated patch is the same whichever tile reads
it: tiles stitch without seams whatever the halo.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError

__all__ = [
    "QA_PIXEL_BITS",
    "SCL_CLASSES",
    "BoundMask",
    "MaskRule",
    "QualityMask",
    "bind_mask",
    "dilate",
    "model_band_names",
    "parse_quality_mask",
    "unusable_pixels",
]

SCL_CLASSES: dict[str, tuple[int, ...]] = {
    "nodata": (0,),
    "saturated": (1,),
    "shadow": (3,),
    "cloud": (8, 9),
    "cloud_medium": (8,),
    "cloud_high": (9,),
    "cirrus": (10,),
    "snow": (11,),
}
"""Sentinel-2 L2A Scene Classification (SCL) values per class name (ESA, Sentinel-2 L2A product
specification): 0 no data, 1 saturated or defective, 3 cloud shadow, 8 cloud medium probability, 9 cloud
high probability, 10 thin cirrus, 11 snow or ice. ``scl`` alone masks all of them."""

_SCL_DEFAULT = ("nodata", "saturated", "shadow", "cloud", "cirrus", "snow")

QA_PIXEL_BITS: dict[str, int] = {
    "fill": 0,
    "dilated": 1,
    "cirrus": 2,
    "cloud": 3,
    "shadow": 4,
    "snow": 5,
}
"""Landsat Collection 2 QA_PIXEL bits per flag name (USGS, Landsat 8-9 Collection 2 Level-2 Science Product
Guide): bit 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow, 5 snow. A pixel is unusable when any
chosen bit is set (e.g. 21824 clear land, 22280 cloud, 23888 cloud shadow, 1 fill). ``qa_pixel`` alone
masks all six."""

PRESETS = ("scl", "qa_pixel")
"""The quality bands the presets read; never a model's input."""


@dataclass(frozen=True, slots=True)
class MaskRule:
    """One band's rule: a pixel is unusable where the band's value lies in one of ``ranges`` (inclusive
    ``(low, high)`` pairs) or has one of ``bits`` set. ``text`` is how the user wrote it, normalised."""

    band: str
    ranges: tuple[tuple[int, int], ...] = ()
    bits: tuple[int, ...] = ()
    text: str = ""


@dataclass(frozen=True, slots=True)
class QualityMask:
    """Every rule, one per band (a pixel is unusable when any rule says so)."""

    rules: tuple[MaskRule, ...]

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(rule.band for rule in self.rules)

    @property
    def texts(self) -> tuple[str, ...]:
        """The rules as ``--mask`` values, the form configs, tags and job files write."""
        return tuple(rule.text for rule in self.rules)

    def __str__(self) -> str:
        return " ".join(self.texts)


@dataclass(frozen=True, slots=True)
class BoundMask:
    """A :class:`QualityMask` bound to one scene: the 1-based index of each rule's band, and the dilation
    in pixels. What :func:`pipeline.inference.read.read_window` takes."""

    mask: QualityMask
    indexes: tuple[int, ...]
    dilate: int = 0


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_EXAMPLE = "write NAME=VALUES (clm=1, clm=1,2, clm=8-11) or a preset: scl, scl=cloud,shadow, qa_pixel, " \
           "qa_pixel=cloud,shadow"


def _rule(text: str) -> MaskRule:
    """One rule from ``clm=1,2``, ``scl``, ``scl=cloud,shadow``, ``qa_pixel=cloud``."""
    raw = text.strip()
    name, sep, values = raw.partition("=")
    name = name.strip().lower()
    where = f"`mask` {text!r}"
    if not _NAME.match(name):
        raise ConfigError(f"{where}: {_EXAMPLE}")
    items = [v.strip().lower() for v in values.split(",")] if sep else []
    if sep and (not items or "" in items):
        raise ConfigError(f"{where}: a value is empty; {_EXAMPLE}")
    if not items:
        if name not in PRESETS:
            raise ConfigError(f"{where}: no values; name the values that mark unusable pixels (clm=1) or use a "
                              f"preset ({', '.join(PRESETS)})")
        items = list(_SCL_DEFAULT if name == "scl" else QA_PIXEL_BITS)
    ranges: list[tuple[int, int]] = []
    bits: list[int] = []
    for item in items:
        match = _RANGE.match(item)
        if match is not None:
            low, high = int(match.group(1)), int(match.group(2) or match.group(1))
            if high < low:
                raise ConfigError(f"{where}: range {item} runs backwards; write it low-high")
            ranges.append((low, high))
        elif name == "scl" and item in SCL_CLASSES:
            ranges += [(v, v) for v in SCL_CLASSES[item]]
        elif name == "qa_pixel" and item in QA_PIXEL_BITS:
            bits.append(QA_PIXEL_BITS[item])
        elif name in PRESETS:
            known = SCL_CLASSES if name == "scl" else QA_PIXEL_BITS
            raise ConfigError(f"{where}: {item!r} is not a {name} class; choose from {', '.join(known)} "
                              "(or give pixel values)")
        else:
            raise ConfigError(f"{where}: {item!r} is not a value or range; {_EXAMPLE}")
    normal = f"{name}={','.join(items)}" if sep else name
    return MaskRule(name, tuple(sorted(set(ranges))), tuple(sorted(set(bits))), normal)


def parse_quality_mask(value: str | Iterable[str] | QualityMask | None) -> QualityMask | None:
    """A :class:`QualityMask` from ``--mask`` values (one text, or several: one band each); None for none.
    Raises :class:`~pipeline.errors.ConfigError` naming ``mask`` and what cannot be read."""
    if value is None or isinstance(value, QualityMask):
        return value
    texts = [value] if isinstance(value, str) else [str(v) for v in value]
    texts = [t for t in texts if t.strip()]
    if not texts:
        return None
    rules = [_rule(t) for t in texts]
    bands = [r.band for r in rules]
    twice = sorted({b for b in bands if bands.count(b) > 1})
    if twice:
        raise ConfigError(f"`mask`: band {twice[0]} given twice; list all its values in one rule "
                          f"({twice[0]}=1,2)")
    return QualityMask(tuple(rules))


def bind_mask(mask: QualityMask, band_indexes: Mapping[str, int], dilate_px: int = 0,
              where: str = "scene") -> BoundMask:
    """``mask`` with each rule's band located in a scene's band map (``name -> 1-based index``)."""
    missing = [b for b in mask.bands if b not in band_indexes]
    if missing:
        have = ",".join(f"{k}={v}" for k, v in band_indexes.items()) or "no named bands"
        raise ConfigError(f"{where}: `mask` needs band {missing[0]} but the band map has {have}; name it in "
                          f"`bands` (e.g. red=1,nir=2,{missing[0]}=3, or the sentinel2-l2a / landsat8 presets "
                          "for scl / qa_pixel)")
    return BoundMask(mask, tuple(band_indexes[b] for b in mask.bands), int(dilate_px))


def unusable_pixels(mask: QualityMask, bands: np.ndarray) -> np.ndarray:
    """``(rows, cols)`` bool, True where any rule marks the pixel unusable; ``bands`` is ``(len(rules),
    rows, cols)``, each rule's band in rule order (integers, or floats holding integers)."""
    out = np.zeros(bands.shape[1:], dtype=bool)
    for rule, band in zip(mask.rules, bands, strict=True):
        finite = np.isfinite(band) if band.dtype.kind == "f" else np.ones(band.shape, dtype=bool)
        values = np.where(finite, band, -1).astype(np.int64)
        for low, high in rule.ranges:
            out |= (values >= low) & (values <= high)
        if rule.bits:
            flags = sum(1 << bit for bit in rule.bits)
            out |= (values >= 0) & ((values & flags) != 0)
    return out


def dilate(unusable: np.ndarray, pixels: int) -> np.ndarray:
    """``unusable`` grown by ``pixels`` in every direction (a square structuring element, 8-connected)."""
    if pixels <= 0 or not unusable.any():
        return unusable
    from scipy.ndimage import binary_dilation

    return binary_dilation(unusable, structure=np.ones((2 * pixels + 1, 2 * pixels + 1), dtype=bool))


def model_band_names(band_indexes: Mapping[str, int], mask: QualityMask | None = None) -> tuple[str, ...]:
    """The bands of a band map a model takes as input: all but the quality bands (``scl``, ``qa_pixel``, and
    any band ``mask`` reads), in the map's order."""
    skip = set(PRESETS) | set(mask.bands if mask is not None else ())
    return tuple(name for name in band_indexes if name not in skip)
