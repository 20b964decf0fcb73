"""Metrics from logits, computed once on the host for every backend (exact, sample-weighted)."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy (no label smoothing: the loss people compare)."""
    if len(labels) == 0:
        return float("nan")
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return np.bincount(labels * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    pred = logits.argmax(axis=1)
    labels = np.asarray(labels, dtype=np.int64)
    cm = confusion_matrix(pred, labels, len(class_names))
    support = cm.sum(axis=1)
    per_class = {
        name: (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "loss": cross_entropy(logits, labels),
        "correct": int((pred == labels).sum()),
        "total": int(len(labels)),
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
    }


def summarize(values: Sequence[float]) -> dict:
    """min/median/max and mean ± sample std of repeated measurements."""
    vals = [float(v) for v in values]
    if not vals:
        return {"n": 0, "min": math.nan, "median": math.nan, "max": math.nan, "mean": math.nan, "std": math.nan}
    return {
        "n": len(vals),
        "min": min(vals),
        "median": statistics.median(vals),
        "max": max(vals),
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
    }
