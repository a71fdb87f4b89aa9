"""Accuracy that cannot flatter a model: pixel metrics from a confusion matrix, and object matching.

**Pixels.** The confusion matrix ``C[t, p]`` counts pixels of true class ``t`` predicted as ``p``; pixels
whose truth is unknown (255) or whose prediction is nodata (255) are left out and counted apart, so a model
cannot gain by predicting nothing. For class ``k``: ``TP = C[k, k]``, ``FP = sum(C[:, k]) - TP``,
``FN = sum(C[k, :]) - TP``; precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``, F1 their harmonic mean,
IoU ``TP / (TP + FP + FN)``. A ratio with a zero denominator is reported as None (undefined), never as 0 or 1.
Matrices add, so a scene is scored window by window.

**Objects** (buildings, fields: countable things). Predicted and true polygons are matched one to one,
as the SpaceNet challenge scores building footprints: a pair counts when its intersection over union is at
least 0.5; pairs are taken greedily by decreasing IoU (with IoU >= 0.5 a polygon can overlap at most one
other that well, so greedy and optimal matching agree except in pathological overlaps). Matched pairs are
true positives, unmatched predictions false positives, unmatched truths false negatives; precision, recall
and F1 follow. Candidate pairs come from a shapely STRtree, so the cost grows with overlaps, not with the
product of the counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.products import IGNORE

__all__ = ["confusion_matrix", "ClassMetrics", "PixelMetrics", "pixel_metrics", "ObjectMetrics", "match_objects",
           "IGNORE"]



def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts of (true, predicted) pairs, leaving out 255 (unknown/nodata) on either side.
    Values >= K on either side other than 255 are an error (a bug upstream, not something to hide)."""
    t = np.asarray(truth).ravel().astype(np.int64)
    p = np.asarray(predicted).ravel().astype(np.int64)
    keep = (t != IGNORE) & (p != IGNORE)
    t, p = t[keep], p[keep]
    if t.size and (t.max() >= num_classes or p.max() >= num_classes or t.min() < 0 or p.min() < 0):
        raise ValueError(f"class values outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


@dataclass(frozen=True, slots=True)
class ClassMetrics:
    name: str
    iou: float | None
    f1: float | None
    precision: float | None
    recall: float | None
    support: int  # true pixels of this class


@dataclass(frozen=True, slots=True)
class PixelMetrics:
    classes: tuple[ClassMetrics, ...]
    confusion: tuple[tuple[int, ...], ...]  # [true][predicted]
    accuracy: float | None
    pixels: int

    def by_name(self, name: str) -> ClassMetrics:
        return next(c for c in self.classes if c.name == name)

    @property
    def mean_iou(self) -> float | None:
        values = [c.iou for c in self.classes if c.iou is not None]
        return float(np.mean(values)) if values else None


def pixel_metrics(confusion: np.ndarray, class_names: Sequence[str]) -> PixelMetrics:
    """Per-class IoU, F1, precision and recall, and overall accuracy, from a confusion matrix."""
    c = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(c)
    fp = c.sum(axis=0) - tp
    fn = c.sum(axis=1) - tp
    out = []
    for k, name in enumerate(class_names):
        out.append(ClassMetrics(name=name, iou=_ratio(tp[k], tp[k] + fp[k] + fn[k]),
                                f1=_ratio(2 * tp[k], 2 * tp[k] + fp[k] + fn[k]),
                                precision=_ratio(tp[k], tp[k] + fp[k]), recall=_ratio(tp[k], tp[k] + fn[k]),
                                support=int(c[k].sum())))
    total = int(c.sum())
    return PixelMetrics(classes=tuple(out), confusion=tuple(tuple(int(v) for v in row) for row in c),
                        accuracy=_ratio(float(tp.sum()), total), pixels=total)


@dataclass(frozen=True, slots=True)
class ObjectMetrics:
    name: str
    true_positives: int
    false_positives: int
    false_negatives: int
    iou_threshold: float

    @property
    def precision(self) -> float | None:
        return _ratio(self.true_positives, self.true_positives + self.false_positives)

    @property
    def recall(self) -> float | None:
        return _ratio(self.true_positives, self.true_positives + self.false_negatives)

    @property
    def f1(self) -> float | None:
        return _ratio(2 * self.true_positives, 2 * self.true_positives + self.false_positives + self.false_negatives)


def match_objects(truth: Sequence[Any], predicted: Sequence[Any], *, name: str = "objects",
                  iou_threshold: float = 0.5) -> ObjectMetrics:
    """One-to-one matching of ``predicted`` to ``truth`` polygons at IoU >= ``iou_threshold`` (see module
    docstring). Both in the same CRS; invalid polygons are repaired with ``make_valid`` first."""
    import shapely
    from shapely import STRtree

    t = [shapely.make_valid(g) for g in truth]
    p = [shapely.make_valid(g) for g in predicted]
    pairs: list[tuple[float, int, int]] = []
    if t and p:
        tree = STRtree(t)
        pred_idx, true_idx = tree.query(p, predicate="intersects")
        for i, j in zip(pred_idx.tolist(), true_idx.tolist(), strict=True):
            inter = p[i].intersection(t[j]).area
            union = p[i].area + t[j].area - inter
            iou = inter / union if union > 0 else 0.0
            if iou >= iou_threshold:
                pairs.append((iou, i, j))
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))
    used_p: set[int] = set()
    used_t: set[int] = set()
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    tp = len(used_p)
    return ObjectMetrics(name=name, true_positives=tp, false_positives=len(p) - tp, false_negatives=len(t) - tp,
                         iou_threshold=iou_threshold)
