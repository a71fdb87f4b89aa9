"""The train/validation split is by area: no pixel on both sides, whatever the seed, region or sampling."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.training.augment import augment
from pipeline.training.chips import sample_chips, split_blocks
from pipeline.training.labels import IGNORE
from tiles.grid import PixelWindow


def _paint(shape: tuple[int, int], windows) -> np.ndarray:
    count = np.zeros(shape, dtype=np.int32)
    for w in windows:
        count[w.row_off : w.row_end, w.col_off : w.col_end] += 1
    return count


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("height", "width", "region"), [(900, 900, None), (500, 700, PixelWindow(13, 40, 400, 333))])
def test_split_blocks_tile_the_area_once_and_chips_never_touch_validation(seed, height, width, region):
    split = split_blocks(height, width, 128, 0.25, seed, region=region)
    area = region or PixelWindow(0, 0, height, width)
    blocks = [b.window for b in split.train + split.validation]
    cover = _paint((height, width), blocks)
    rs, cs = area.relative_to(PixelWindow(0, 0, height, width))
    assert (cover[rs, cs] == 1).all() and cover.sum() == area.size  # each pixel of the area in one block
    assert 0 < len(split.validation) < len(blocks)

    rng = np.random.default_rng(seed)
    labels = [np.where(rng.random((b.window.height, b.window.width)) < 0.05, 1, 0).astype(np.uint8)
              for b in split.train]
    for method in ("balanced", "random"):
        chips = sample_chips(split.train, labels, 200, 64, 2, np.random.default_rng(seed), method)
        train_pixels = _paint((height, width), [c.window for c in chips]) > 0
        val_pixels = _paint((height, width), [b.window for b in split.validation]) > 0
        assert not (train_pixels & val_pixels).any()
        # Every chip lies inside one training block (so inside the training area).
        for chip in chips:
            assert any(chip.window.intersection(b.window) == chip.window for b in split.train)


def test_split_is_seeded():
    a, b = split_blocks(600, 600, 100, 0.3, 7), split_blocks(600, 600, 100, 0.3, 7)
    assert a == b and a != split_blocks(600, 600, 100, 0.3, 8)


def test_balanced_sampling_sees_the_rare_class_and_skips_unlabelled_areas():
    split = split_blocks(256, 256, 128, 0.0, 0)
    labels = []
    for b in split.train:
        lab = np.zeros((b.window.height, b.window.width), dtype=np.uint8)
        lab[:, :64] = IGNORE  # left half of every block unlabelled (nodata)
        if b.window.row_off == 0 and b.window.col_off == 0:
            lab[100:104, 100:104] = 1  # 16 rare pixels in one block
        labels.append(lab)
    rng = np.random.default_rng(0)
    balanced = sample_chips(split.train, labels, 100, 32, 2, rng, "balanced")
    rare_hits = sum(c.window.intersection(PixelWindow(100, 100, 4, 4)) is not None for c in balanced)
    assert rare_hits > 30  # about half the chips are drawn for class 1
    for chip in balanced + sample_chips(split.train, labels, 100, 32, 2, rng, "random"):
        b = next(i for i, b in enumerate(split.train) if chip.window.intersection(b.window) == chip.window)
        rs, cs = chip.window.relative_to(split.train[b].window)
        assert np.mean(labels[b][rs, cs] != IGNORE) >= 0.5


def test_augment_moves_image_and_labels_together():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(16, 16)).astype(np.uint8)
    image = np.stack([labels.astype(np.float32), labels.astype(np.float32) * 2])
    seen = set()
    for _ in range(64):
        img, lab = augment(image, labels, rng, jitter=0.0)
        np.testing.assert_array_equal(img[0], lab)
        np.testing.assert_array_equal(img[1], lab * 2)
        seen.add(lab.tobytes())
    assert len(seen) == 8  # all eight symmetries of the square occur
    img, lab = augment(image, labels, rng, jitter=0.1)
    ratio = img[1][lab > 0] / (2.0 * lab[lab > 0])
    unjittered = augment(image, labels, np.random.default_rng(1), 0.0)[0]
    assert not np.allclose(ratio, 1.0) and np.all(np.abs(img - unjittered) < 10)
