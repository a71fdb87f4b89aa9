"""Overviews built as a raster is written, so that the COG step only copies them.

GDAL's COG driver computes overviews after the fact: it reads the whole full-resolution raster again, writes
the levels to a temporary file and copies them, which was 80 % of the serial tail of a scene (8 of 9.5 s
for a 16384 x 16384 probability raster). Here every window is halved level by level while it is still in
memory (each level from the one above, as GDAL cascades), written to one staging file per level, and the
COG copy takes the levels as they are (``OVERVIEWS=FORCE_USE_EXISTING`` through a VRT that lists them).

Windows must start on multiples of the coarsest factor and end on one or at the raster edge, which tiles of
a block-aligned grid do; ``CogWriter`` checks that and falls back to GDAL's overviews for any other window.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.vocab import Resampling, choices

__all__ = ["overview_factors", "reduce2", "RESAMPLINGS"]

RESAMPLINGS = choices(Resampling)


def overview_factors(height: int, width: int, block: int) -> list[int]:
    """The factors GDAL's COG driver picks by default: halve until the level fits in one block."""
    factors = []
    factor = 2
    while math.ceil(max(height, width) / (factor // 2)) > block:
        factors.append(factor)
        factor *= 2
    return factors


def _invalid(a: np.ndarray, nodata: float | None) -> np.ndarray | None:
    if nodata is None:
        return None
    if isinstance(nodata, float) and math.isnan(nodata):
        return np.isnan(a) if a.dtype.kind == "f" else None
    return a == np.asarray(nodata).astype(a.dtype)


def _quarters(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return a[:, 0::2, 0::2], a[:, 0::2, 1::2], a[:, 1::2, 0::2], a[:, 1::2, 1::2]


def _contiguous_quarters(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_quarters` of an even-sized ``a`` copied into one contiguous array in one pass."""
    bands, rows, cols = a.shape
    q = np.ascontiguousarray(a.reshape(bands, rows // 2, 2, cols // 2, 2).transpose(2, 4, 0, 1, 3))
    return q[0, 0], q[0, 1], q[1, 0], q[1, 1]


def reduce2(a: np.ndarray, resampling: str, nodata: float | None) -> np.ndarray:
    """Halve ``(bands, rows, cols)`` in both directions (odd sizes round up, like GDAL's overview sizes).

    ``average`` ignores nodata pixels (a cell is nodata only if all four are), ``mode`` takes the most
    frequent valid value (first in reading order on ties), ``nearest`` the top-left pixel.
    """
    if resampling not in RESAMPLINGS:
        raise ValueError(f"overview resampling {resampling!r}: choose one of {', '.join(RESAMPLINGS)}")
    if a.shape[1] % 2 or a.shape[2] % 2:
        # repeating the last row/column leaves averages and modes of the real pixels unchanged
        a = np.pad(a, ((0, 0), (0, a.shape[1] % 2), (0, a.shape[2] % 2)), mode="edge")
    if resampling == "nearest":
        return np.ascontiguousarray(a[:, 0::2, 0::2])
    invalid = _invalid(a, nodata)
    if invalid is not None and not invalid.any():
        invalid = None
    if resampling == "average":
        return _average(a, invalid, nodata)
    return _mode(a, invalid, nodata)


def _average(a: np.ndarray, invalid: np.ndarray | None, nodata: float | None) -> np.ndarray:
    q = _quarters(a)
    if invalid is None and a.dtype == np.uint8:
        sums = q[0].astype(np.uint16)
        for part in q[1:]:
            sums += part
        sums += 2
        sums >>= 2
        return sums.astype(np.uint8)
    acc = np.float64 if a.dtype.itemsize > 2 else np.float32  # float32 holds 8- and 16-bit sums exactly
    if invalid is None:
        mean = (q[0].astype(acc) + q[1] + q[2] + q[3]) / 4
        return _cast(mean, a.dtype)
    ok = [~m for m in _quarters(invalid)]
    count = ok[0].astype(np.uint8) + ok[1] + ok[2] + ok[3]
    total = sum(np.where(m, part, 0).astype(acc) for m, part in zip(ok, q, strict=True))
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    out = _cast(mean, a.dtype)
    out[count == 0] = nodata
    return out


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        # halves round up, as the uint8 path without nodata above (and GDAL) rounds them: with np.rint
        # (halves to even) a cell's value depended on whether its window held a nodata pixel, so the
        # overviews changed with the cut of the raster into windows, and pieces made apart could not agree
        return np.clip(np.floor(values + 0.5), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _mode(a: np.ndarray, invalid: np.ndarray | None, nodata: float | None) -> np.ndarray:
    # Of the four pixels a b / c d, a value held by two or more wins, the earliest in reading order on a
    # tie (a pair a=b beats a pair c=d); four different values give the first valid one.
    if invalid is None:
        # the quarters copied out once (one pass), then every comparison on contiguous memory and the
        # winners written in place: half the time of the strided form below on a piece of classes
        b0, b1, b2, b3 = _contiguous_quarters(a)
        out = np.where(b2 == b3, b2, b0)
        pair = b1 == b2
        pair |= b1 == b3
        np.copyto(out, b1, where=pair)
        pair = np.equal(b0, b1, out=pair)
        pair |= b0 == b2
        pair |= b0 == b3
        np.copyto(out, b0, where=pair)
        return out
    a0, a1, a2, a3 = _quarters(a)
    ok = [~m for m in _quarters(invalid)]

    def same(x: np.ndarray, y: np.ndarray, i: int, j: int) -> np.ndarray:
        return (x == y) & ok[i] & ok[j]

    out = np.full_like(a0, nodata)
    for i, part in ((3, a3), (2, a2), (1, a1), (0, a0)):
        np.copyto(out, part, where=ok[i])
    out = np.where(same(a2, a3, 2, 3), a2, out)
    out = np.where(same(a1, a2, 1, 2) | same(a1, a3, 1, 3), a1, out)
    return np.where(same(a0, a1, 0, 1) | same(a0, a2, 0, 2) | same(a0, a3, 0, 3), a0, out)
