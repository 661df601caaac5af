"""Confusion-matrix metrics and boundary IoU against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protoseg.metrics import ConfusionMatrix, MetricsError, boundary_iou, confusion_matrix

TARGET = np.array([[0, 0, 1, 1], [0, 0, 1, 2], [2, 2, 255, 2]])
PRED = np.array([[0, 1, 1, 1], [0, 0, 2, 2], [2, 1, 0, 2]])
# rows = target, columns = prediction, counted by hand from the 11 non-ignored pixels
HAND_CM = np.array([[3, 1, 0], [0, 2, 1], [0, 1, 3]])


def test_confusion_matrix_by_hand_numpy_and_torch():
    np.testing.assert_array_equal(confusion_matrix(PRED, TARGET, 3), HAND_CM)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(PRED), torch.from_numpy(TARGET), 3), HAND_CM)
    # without an ignore index the 255 is an out-of-range target
    with pytest.raises(MetricsError, match="outside 0..2"):
        confusion_matrix(PRED, TARGET, 3, ignore_index=None)
    with pytest.raises(MetricsError, match="shape"):
        confusion_matrix(PRED[:2], TARGET, 3)


def test_metrics_values_by_hand():
    cm = ConfusionMatrix(3, background_index=2, class_names=["A", "B", "bg"]).update(PRED, TARGET)
    m = cm.compute()
    np.testing.assert_allclose(m.iou, [3 / 4, 2 / 5, 3 / 5])
    np.testing.assert_allclose(m.dice, [6 / 7, 4 / 7, 6 / 8])
    np.testing.assert_allclose(m.class_accuracy, [3 / 4, 2 / 3, 3 / 4])
    assert m.miou == pytest.approx((3 / 4 + 2 / 5) / 2)
    assert m.fwiou == pytest.approx((4 * 3 / 4 + 3 * 2 / 5) / 7)
    assert m.mean_dice == pytest.approx((6 / 7 + 4 / 7) / 2)
    assert m.pixel_accuracy == pytest.approx(8 / 11)
    mb = cm.compute(include_background=True)
    assert mb.miou == pytest.approx((3 / 4 + 2 / 5 + 3 / 5) / 3)
    assert mb.fwiou == pytest.approx((4 * 3 / 4 + 3 * 2 / 5 + 4 * 3 / 5) / 11)
    assert m.as_dict()["iou"] == {"A": 0.75, "B": 0.4, "bg": 0.6}


def test_absent_class_is_nan_and_excluded_from_mean():
    m = ConfusionMatrix(4).update(PRED, TARGET).compute()
    assert math.isnan(m.iou[3]) and math.isnan(m.dice[3])
    assert m.miou == pytest.approx((3 / 4 + 2 / 5 + 3 / 5) / 3)
    # a class only predicted (never in the target) scores 0, not NaN
    m2 = ConfusionMatrix(2).update(np.array([0, 1]), np.array([0, 0])).compute()
    assert m2.iou.tolist() == [0.5, 0.0] and m2.miou == 0.25


def test_accumulate_merge_and_state():
    whole = ConfusionMatrix(3).update(PRED, TARGET)
    parts = ConfusionMatrix(3).update(PRED[:1], TARGET[:1]).update(PRED[1:], TARGET[1:])
    np.testing.assert_array_equal(parts.matrix, whole.matrix)
    a, b = ConfusionMatrix(3).update(PRED[:2], TARGET[:2]), ConfusionMatrix(3).update(PRED[2:], TARGET[2:])
    np.testing.assert_array_equal(a.merge(b).matrix, HAND_CM)
    c = ConfusionMatrix(3).load_state(torch.from_numpy(a.state()))
    np.testing.assert_array_equal(c.matrix, HAND_CM)
    with pytest.raises(MetricsError):
        a.merge(ConfusionMatrix(4))


def _reference_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Cheng et al.'s mask_to_boundary: pad with one zero pixel, erode d times with a 3x3 square,
    crop, and keep the mask pixels the erosion removed."""
    from scipy import ndimage

    padded = np.pad(mask, 1, constant_values=False)
    eroded = ndimage.binary_erosion(padded, structure=np.ones((3, 3), bool), iterations=d)[1:-1, 1:-1]
    return mask & ~eroded


def test_boundary_iou_shifted_square_against_brute_force():
    target = np.zeros((20, 20), int)
    target[5:15, 5:15] = 1
    pred = np.zeros((20, 20), int)
    pred[5:15, 7:17] = 1
    ratio = 0.1
    d = round(ratio * math.hypot(20, 20))  # 3 px
    expected = []
    for c in (0, 1):
        g, p = _reference_boundary(target == c, d), _reference_boundary(pred == c, d)
        expected.append((g & p).sum() / (g | p).sum())
    got = boundary_iou(pred, target, 2, dilation_ratio=ratio)
    np.testing.assert_allclose(got, expected)
    assert got[1] < 0.6  # the shift hurts the boundary much more than the area IoU (~0.67)
    cm = ConfusionMatrix(2, boundary_dilation_ratio=ratio)
    cm.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    np.testing.assert_allclose(cm.compute(include_background=True).boundary_iou, expected)
    np.testing.assert_allclose(boundary_iou(target, target, 3), [1.0, 1.0, np.nan])


def test_boundary_iou_small_hand_case():
    # 1-pixel boundary (d = 1): the 4x4 square's ring of 12 pixels; prediction = top-left 3x3 square
    target = np.zeros((6, 6), int)
    target[1:5, 1:5] = 1
    pred = np.zeros((6, 6), int)
    pred[1:4, 1:4] = 1
    got = boundary_iou(pred, target, 2, dilation_ratio=0.01)[1]
    # pred ring = 8 pixels (3x3 minus centre); shared ring pixels: row 1 cols 1-3, col 1 rows 2-3 -> 5
    assert got == pytest.approx(5 / (12 + 8 - 5))


def test_unlabelled_predictions_count_as_misses_and_lower_coverage():
    target = np.array([[0, 0, 1, 1], [0, 0, 1, 2]])
    pred = np.array([[0, 255, 1, 1], [0, 0, 255, 2]])
    cm = ConfusionMatrix(3, background_index=2).update(pred, target)
    m = cm.compute()
    # class 0: 3 TP, 1 unlabelled -> 3/4; class 1: 2 TP, 1 unlabelled -> 2/3
    np.testing.assert_allclose(m.iou[:2], [0.75, 2 / 3])
    assert m.coverage == pytest.approx(6 / 8)
    np.testing.assert_array_equal(cm.unlabelled, [1, 1, 0])
    back = ConfusionMatrix(3, background_index=2).load_state(cm.state())
    np.testing.assert_array_equal(back.unlabelled, cm.unlabelled)
    with pytest.raises(MetricsError):
        ConfusionMatrix(3).update(np.array([7]), np.array([0]))  # other out-of-range values stay errors


def test_tissue_protocol_excludes_ground_truth_background():
    from protoseg.metrics import Protocol, apply_protocol

    target = np.array([[0, 0, 2, 2], [1, 1, 2, 2]])  # 2 = background
    pred = np.array([[0, 2, 0, 2], [1, 1, 2, 1]])
    pbip = ConfusionMatrix(3, background_index=2).update(pred, target).compute()
    tissue = ConfusionMatrix(3, background_index=2).update(pred, apply_protocol(target, Protocol.TISSUE, 2)).compute()
    # PBIP: tissue predicted on GT background is a false positive; the tissue protocol does not count it
    np.testing.assert_allclose(pbip.iou[:2], [1 / 3, 2 / 3])
    np.testing.assert_allclose(tissue.iou[:2], [1 / 2, 1.0])
    assert apply_protocol(target, Protocol.PBIP, 2) is target
