"""Pixel and object metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from shapely import box

from pipeline.training.metrics import confusion_matrix, match_objects, pixel_metrics


def test_confusion_matrix_and_metrics_by_hand():
    truth = np.array([[0, 0, 1, 1],
                      [0, 2, 1, 255],
                      [2, 2, 1, 0]])
    predicted = np.array([[0, 1, 1, 1],
                          [0, 2, 0, 1],
                          [2, 0, 255, 0]])
    # Pairs (t, p), leaving out the 255 on either side: (0,0) x3, (0,1), (1,1) x2, (1,0), (2,2) x2, (2,0).
    expected = np.array([[3, 1, 0],
                         [1, 2, 0],
                         [1, 0, 2]])
    c = confusion_matrix(truth, predicted, 3)
    np.testing.assert_array_equal(c, expected)
    m = pixel_metrics(c, ["a", "b", "c"])
    # class a: TP 3, FP 2, FN 1 -> IoU 3/6, precision 3/5, recall 3/4, F1 6/9
    a = m.by_name("a")
    assert (a.iou, a.precision, a.recall, a.f1, a.support) == pytest.approx((0.5, 0.6, 0.75, 2 / 3, 4))
    # class b: TP 2, FP 1, FN 1 -> IoU 2/4; class c: TP 2, FP 0, FN 1 -> IoU 2/3, precision 1
    assert m.by_name("b").iou == pytest.approx(0.5)
    assert (m.by_name("c").iou, m.by_name("c").precision) == pytest.approx((2 / 3, 1.0))
    assert m.accuracy == pytest.approx(7 / 10) and m.pixels == 10


def test_undefined_ratios_are_none_not_zero():
    m = pixel_metrics(confusion_matrix(np.zeros(5), np.zeros(5), 2), ["background", "building"])
    b = m.by_name("building")
    assert (b.iou, b.precision, b.recall, b.f1, b.support) == (None, None, None, None, 0)
    assert m.by_name("background").iou == 1.0


def test_values_outside_the_classes_are_a_bug_not_ignored():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 2)


def test_object_matching_one_to_one_at_iou_half():
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10), box(60, 0, 70, 10)]
    predicted = [
        box(1, 0, 11, 10),      # IoU 9/11 = 0.82 with truth 0: match
        box(0, 0, 10, 9),       # IoU 0.9 with truth 0 too: the better pair wins, this one matches first
        box(23, 0, 33, 10),     # IoU 7/13 = 0.54 with truth 1: match
        box(45, 0, 55, 10),     # IoU 5/15 = 0.33 with truth 2: no match
        box(100, 0, 110, 10),   # nothing there
    ]
    m = match_objects(truth, predicted, name="building")
    # TP: (p1, t0), (p2, t1); p0 lost t0 to p1 -> FP; p3, p4 FP; t2, t3 unmatched -> FN.
    assert (m.true_positives, m.false_positives, m.false_negatives) == (2, 3, 2)
    assert (m.precision, m.recall, m.f1) == pytest.approx((2 / 5, 2 / 4, 4 / 9))
    assert match_objects(truth, [], name="b").recall == 0.0 and match_objects([], [], name="b").f1 is None
