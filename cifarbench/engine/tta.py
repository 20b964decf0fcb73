"""Test-time augmentation, backend-agnostic: extra views of a split are uploaded once as
splits of their own (``test@flip`` ...) and the engine averages the predicted logits.

Level 1: the image and its mirror, 1/2 each. Level 2 (airbench94's multi-crop): 1/2 on the
level-1 pair, and 1/2 on the level-1 pairs of the image translated by one pixel up-left and
down-right (reflect padding), i.e. weights 1/4, 1/4, 1/8 x 4.
"""

from __future__ import annotations

import numpy as np

from cifarbench.errors import UsageError


def _shift(x: np.ndarray, d: int) -> np.ndarray:
    """Translate an NHWC batch by one pixel (d = 0: towards the bottom-right, d = 2: top-left)."""
    h, w = x.shape[1], x.shape[2]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    return np.ascontiguousarray(padded[:, d : d + h, d : d + w])


def _mirror(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x[:, :, ::-1])


def views(x: np.ndarray, level: int) -> list[tuple[str, float, np.ndarray | None]]:
    """(suffix, weight, images) per view; the plain view has suffix "" and images None."""
    if level not in (0, 1, 2):
        raise UsageError(f"tta level must be 0, 1 or 2, got {level}")
    if level == 0:
        return [("", 1.0, None)]
    out = [("", 0.5, None), ("flip", 0.5, _mirror(x))]
    if level == 2:
        out = [(s, w / 2, v) for s, w, v in out]
        for name, d in (("shift-", 2), ("shift+", 0)):
            moved = _shift(x, d)
            out += [(name, 0.125, moved), (f"{name}flip", 0.125, _mirror(moved))]
    return out


def split_name(split: str, suffix: str) -> str:
    return f"{split}@{suffix}" if suffix else split


def upload(backend, split: str, x: np.ndarray, y: np.ndarray, level: int) -> list[tuple[str, float]]:
    """set_data the extra views of ``split``; returns (split name, weight) per view."""
    plan = []
    for suffix, weight, images in views(x, level):
        if images is not None:
            backend.set_data(split_name(split, suffix), images, y)
        plan.append((split_name(split, suffix), weight))
    return plan


def predict(backend, plan: list[tuple[str, float]], batch_size: int) -> np.ndarray:
    """Weighted mean of the views' logits."""
    total = None
    for name, weight in plan:
        logits = backend.predict(name, batch_size).astype(np.float64) * weight
        total = logits if total is None else total + logits
    return total.astype(np.float32)
