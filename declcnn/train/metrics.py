"""Accuracy, confusion matrices and intersection over union from class predictions."""

from __future__ import annotations

import math

import numpy as np

from .._kernels import training as _kernels


def correct_predictions(scores: np.ndarray, target: np.ndarray,
                        ignore_index: int) -> tuple[int, int]:
    """``(correct, counted)``: the targets (per sample, or per pixel of ``(N, C, H, W)`` scores)
    not equal to ``ignore_index``, and how many of them are the argmax of their scores."""
    n, classes = scores.shape[:2]
    positions = math.prod(scores.shape[2:])
    return _kernels.correct_predictions(
        np.ascontiguousarray(scores).reshape(n, classes, positions),
        np.ascontiguousarray(target, dtype=np.int64).reshape(n, positions), ignore_index)


def confusion_matrix(predicted: np.ndarray, target: np.ndarray, classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """``M[t, p]``: how many samples (or pixels) of true class ``t`` were predicted ``p``;
    targets equal to ``ignore_index`` (or outside ``0..classes−1``) are left out."""
    predicted, target = predicted.ravel(), target.ravel()
    keep = (target >= 0) & (target < classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    flat = target[keep].astype(np.int64) * classes + predicted[keep]
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def summarise(matrix: np.ndarray, class_names, segmentation: bool) -> dict:
    """Accuracy (``trace/total``), per-class accuracy (recall), the matrix; with segmentation,
    pixel accuracy, per-class IoU ``TP/(TP+FP+FN)`` and their mean over classes present in the
    targets or predictions."""
    total = int(matrix.sum())
    correct = np.diag(matrix)
    per_class_total = matrix.sum(axis=1)
    accuracy = float(correct.sum() / total) if total else 0.0
    recall = np.divide(correct, per_class_total, out=np.full(len(matrix), np.nan),
                       where=per_class_total > 0)
    names = [str(n) for n in class_names]
    result = {
        "accuracy": accuracy,
        "samples": total,
        "per_class_accuracy": dict(zip(names, map(_number, recall), strict=True)),
        "confusion_matrix": matrix.tolist(),
        "classes": names,
    }
    if segmentation:
        union = per_class_total + matrix.sum(axis=0) - correct
        iou = np.divide(correct, union, out=np.full(len(matrix), np.nan), where=union > 0)
        result["pixel_accuracy"] = accuracy
        result["per_class_iou"] = dict(zip(names, map(_number, iou), strict=True))
        result["mean_iou"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0
    return result


def _number(value) -> float | None:
    return None if np.isnan(value) else float(value)
