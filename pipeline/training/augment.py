"""Augmentations that fit overhead imagery: the eight flips/90-degree rotations, and mild radiometric jitter.

Seen from above, a scene has no "up": every flip and quarter turn of a chip is as plausible as the chip
itself, so each chip is drawn as one of the eight symmetries of the square (the dihedral group D4), with
its labels moved the same way. Radiometric jitter multiplies each band by ``1 + g`` and adds ``o`` (in
normalized units, so a standard deviation), ``g, o ~ U(-jitter, jitter)`` per chip and band: illumination
and sensor calibration differ between scenes by about that much. Nothing here resamples, so labels stay
exact.
"""

from __future__ import annotations

import numpy as np

__all__ = ["augment"]


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            jitter: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A random D4 symmetry of ``image`` (bands, rows, cols; normalized) and ``labels`` (rows, cols), and
    per-band gain/offset jitter of the image. Returns new contiguous arrays."""
    turns = int(rng.integers(4))
    image, labels = np.rot90(image, turns, axes=(1, 2)), np.rot90(labels, turns)
    if rng.integers(2):
        image, labels = image[:, :, ::-1], labels[:, ::-1]
    if jitter > 0:
        bands = image.shape[0]
        gain = 1.0 + rng.uniform(-jitter, jitter, size=(bands, 1, 1))
        offset = rng.uniform(-jitter, jitter, size=(bands, 1, 1))
        image = image * gain.astype(np.float32) + offset.astype(np.float32)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(labels)
