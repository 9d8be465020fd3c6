"""Detector metrics: VOC AP (all-point and 11-point), ROC AUC, and thresholded scores with the trivial baseline."""

from __future__ import annotations

import numpy as np


def precision_recall(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every rank, highest score first (the VOC devkit's construction)."""
    order = np.argsort(-probs, kind="stable")
    tp = np.cumsum(labels[order] == 1)
    fp = np.cumsum(labels[order] != 1)
    npos = max(int((labels == 1).sum()), 1)
    return tp / np.maximum(tp + fp, np.finfo(np.float64).eps), tp / npos


def average_precision(probs, labels) -> float:
    """All-point interpolated AP (VOC2010+ devkit): area under the monotone precision envelope.

    Args:
        probs: scores, higher means present.
        labels: 1 present, anything else absent.
    Returns:
        AP in [0, 1]; 0.0 when there are no positives.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if (labels == 1).sum() == 0:
        return 0.0
    prec, rec = precision_recall(probs, labels)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def average_precision_11pt(probs, labels) -> float:
    """VOC2007 11-point AP: mean of the best precision at recall >= 0, 0.1, ..., 1."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if (labels == 1).sum() == 0:
        return 0.0
    prec, rec = precision_recall(probs, labels)
    return float(np.mean([prec[rec >= t].max() if (rec >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]))


def roc_auc(probs, labels) -> float:
    from sklearn.metrics import roc_auc_score  # a dependency; imported here so scoring never pays its ~1 s import

    labels = np.asarray(labels) == 1
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(probs, np.float64)))


def choose_threshold(probs, labels) -> float:
    """The probability threshold that maximises F1 (chosen on validation, never on the evaluation split)."""
    from sklearn.metrics import precision_recall_curve

    probs, labels = np.asarray(probs, np.float64), np.asarray(labels) == 1
    if not labels.any():
        return 0.5
    prec, rec, thr = precision_recall_curve(labels, probs)
    f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-12)
    return float(thr[int(np.argmax(f1))])


def binary_report(probs, labels, threshold: float) -> dict[str, float]:
    """Every number we show for a detector on one split.

    Returns:
        ``ap``, ``ap11``, ``auc``, and at ``threshold``: ``accuracy``, ``precision``, ``recall``,
        ``f1``; ``baseline_accuracy`` is the accuracy of answering "absent" for every image, shown
        beside ``accuracy`` because on a rare class it is already high. ``positives``/``images``
        give the positive rate.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels) == 1
    pred = probs >= threshold
    tp = int((pred & labels).sum())
    fp = int((pred & ~labels).sum())
    fn = int((~pred & labels).sum())
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "ap": average_precision(probs, labels.astype(int)),
        "ap11": average_precision_11pt(probs, labels.astype(int)),
        "auc": roc_auc(probs, labels.astype(int)),
        "threshold": float(threshold),
        "accuracy": float((pred == labels).mean()) if n else 0.0,
        "baseline_accuracy": float((~labels).mean()) if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "positives": int(labels.sum()),
        "images": n,
    }
