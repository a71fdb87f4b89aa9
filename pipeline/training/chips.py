"""Training chips: a split of the scene by area, then chips sampled inside one side of it.

**The split is by blocks of the scene, never by pixel or chip.** Each scene (or the part of it given as
``region``) is cut into a grid of blocks of about ``block_size`` pixels; a seeded draw sends a
``val_fraction`` of them to validation. A training chip lies entirely inside one training block and a
validation chip is a whole validation block, so no pixel is ever seen on both sides and validation scores
are not inflated by overlapping chips (neighbouring pixels are strongly correlated in imagery).

**Sampling** draws ``n`` chip windows from the training blocks with a seeded generator:

- ``random``: a block with probability proportional to its labelled pixels, a uniform position in it;
- ``balanced``: a class uniformly among the classes present, a block with probability proportional to that
  class's pixels in it, one of those pixels uniformly, and the chip centred on it (clamped inside the
  block), so rare classes (buildings are a few percent of a scene) are seen as often as common ones.

Either way a chip with less than ``min_labelled`` of its pixels labelled (nodata, outside the labels) is
drawn again. The block labels (uint8, one byte per training pixel) are the only scene-sized data held;
pixels are read chip by chip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.errors import ConfigError
from pipeline.training.labels import IGNORE
from tiles.grid import PixelWindow

__all__ = ["Block", "Chip", "Split", "split_blocks", "sample_chips", "SamplingMethod"]

SamplingMethod = Literal["random", "balanced"]


@dataclass(frozen=True, slots=True)
class Block:
    """One block of the split: scene number (in the order given) and its pixel window."""

    scene: int
    window: PixelWindow


@dataclass(frozen=True, slots=True)
class Chip:
    scene: int
    window: PixelWindow


@dataclass(frozen=True, slots=True)
class Split:
    train: tuple[Block, ...]
    validation: tuple[Block, ...]


def _edges(start: int, length: int, block: int) -> list[int]:
    """Block edges over ``length`` pixels: ``length // block`` blocks (at least one) of equal size, so no
    thin sliver is left at the scene's edge."""
    n = max(1, length // block)
    return [start + round(i * length / n) for i in range(n + 1)]


def split_blocks(height: int, width: int, block_size: int, val_fraction: float, seed: int, *, scene: int = 0,
                 region: PixelWindow | None = None) -> Split:
    """Cut ``region`` (default: the whole ``height`` x ``width`` scene) into blocks and send a seeded
    ``val_fraction`` of them to validation (at least one when the fraction is positive and there are two
    blocks or more)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction {val_fraction}: must be in [0, 1)")
    area = region or PixelWindow(0, 0, height, width)
    rows, cols = _edges(area.row_off, area.height, block_size), _edges(area.col_off, area.width, block_size)
    blocks = [Block(scene, PixelWindow(r0, c0, r1 - r0, c1 - c0))
              for r0, r1 in zip(rows[:-1], rows[1:], strict=True) for c0, c1 in zip(cols[:-1], cols[1:], strict=True)]
    n_val = round(len(blocks) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(blocks) >= 2:
        n_val = 1
    rng = np.random.default_rng([seed, scene])
    chosen = set(rng.choice(len(blocks), size=n_val, replace=False).tolist()) if n_val else set()
    return Split(train=tuple(b for i, b in enumerate(blocks) if i not in chosen),
                 validation=tuple(b for i, b in enumerate(blocks) if i in chosen))


def _place(centre: int, size: int, start: int, length: int) -> int:
    """Offset of a ``size`` span centred on ``centre``, clamped inside ``[start, start + length)``."""
    return int(min(max(centre - size // 2, start), start + length - size))


def sample_chips(blocks: Sequence[Block], block_labels: Sequence[np.ndarray], n: int, chip_size: int,
                 num_classes: int, rng: np.random.Generator, method: SamplingMethod = "balanced",
                 min_labelled: float = 0.5, max_tries: int = 50) -> list[Chip]:
    """``n`` chip windows inside the training ``blocks`` (see the module docstring). ``block_labels[i]`` is
    block i's label array (uint8, 255 = unknown). Blocks smaller than the chip are skipped."""
    usable = [i for i, b in enumerate(blocks) if b.window.height >= chip_size and b.window.width >= chip_size]
    if not usable:
        raise ConfigError(f"no training block holds a {chip_size} px chip; lower `chip_size` or raise "
                          f"`block_size`")
    counts = np.array([np.bincount(block_labels[i].ravel(), minlength=256)[:num_classes] for i in usable],
                      dtype=np.float64)
    if counts.sum() == 0:
        raise ConfigError("the training area has no labelled pixel; check the labels' extent and CRS")
    present = [c for c in range(num_classes) if counts[:, c].sum() > 0]
    chips: list[Chip] = []
    for _ in range(n):
        for _attempt in range(max_tries):
            if method == "balanced":
                cls = present[int(rng.integers(len(present)))]
                k = int(rng.choice(len(usable), p=counts[:, cls] / counts[:, cls].sum()))
                block, labels = blocks[usable[k]], block_labels[usable[k]]
                rows, cols = np.nonzero(labels == cls)
                j = int(rng.integers(len(rows)))
                w = block.window
                r = _place(w.row_off + int(rows[j]), chip_size, w.row_off, w.height)
                c = _place(w.col_off + int(cols[j]), chip_size, w.col_off, w.width)
            else:
                totals = counts.sum(axis=1)
                k = int(rng.choice(len(usable), p=totals / totals.sum()))
                block, labels = blocks[usable[k]], block_labels[usable[k]]
                w = block.window
                r = w.row_off + int(rng.integers(w.height - chip_size + 1))
                c = w.col_off + int(rng.integers(w.width - chip_size + 1))
            window = PixelWindow(r, c, chip_size, chip_size)
            rs, cs = window.relative_to(block.window)
            if np.mean(labels[rs, cs] != IGNORE) >= min_labelled:
                chips.append(Chip(block.scene, window))
                break
        else:
            raise ConfigError(f"no chip with at least {min_labelled:.0%} labelled pixels found in {max_tries} "
                              f"draws; the training area is mostly nodata or unlabelled")
    return chips
