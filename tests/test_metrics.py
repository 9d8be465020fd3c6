"""Metrics against hand-computed values."""

import math

import numpy as np
import pytest

from vocfleet.model.metrics import average_precision, average_precision_11pt, binary_report, choose_threshold, roc_auc


def test_perfect_ranking():
    probs, labels = [0.9, 0.8, 0.2, 0.1], [1, 1, -1, -1]
    assert average_precision(probs, labels) == 1.0
    assert average_precision_11pt(probs, labels) == 1.0
    assert roc_auc(probs, labels) == 1.0


def test_ap_by_hand():
    # ranks: +, -, +  -> precision 1 at recall .5, 2/3 at recall 1
    probs, labels = [0.9, 0.8, 0.7], [1, 0, 1]
    assert average_precision(probs, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # 11-point: recall <= .5 -> 1 (6 points), > .5 -> 2/3 (5 points)
    assert average_precision_11pt(probs, labels) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_random_scores_ap_near_positive_rate():
    rng = np.random.default_rng(0)
    labels = (rng.random(20000) < 0.15).astype(int)
    assert average_precision(rng.random(20000), labels) == pytest.approx(0.15, abs=0.02)


def test_baseline_accuracy_is_always_absent():
    labels = np.array([1] * 14 + [0] * 86)
    rep = binary_report(np.zeros(100), labels, threshold=0.5)
    assert rep["accuracy"] == rep["baseline_accuracy"] == 0.86
    assert rep["recall"] == 0 and rep["f1"] == 0


def test_threshold_maximises_f1():
    probs = np.array([0.95, 0.9, 0.6, 0.55, 0.3, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0])
    t = choose_threshold(probs, labels)
    assert 0.55 < t <= 0.6
    assert binary_report(probs, labels, t)["f1"] == 1.0


def test_auc_undefined_without_both_classes():
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
