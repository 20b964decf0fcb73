"""Feature maps of one test image at each capture point its model declares (after mike7seven's
visualize_activations, generalised to every model, backend, data set and class count)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from cifarbench.errors import UsageError


def _test_image(meta: dict, data_dir: Optional[str], index: Optional[int], seed: int) -> tuple[np.ndarray, int, int]:
    """(uint8 HWC image, its label, its index) from the checkpoint's data set."""
    from cifarbench.data import load_dataset

    ds = load_dataset(meta["dataset"], data_dir)
    n = len(ds.y_test)
    if n == 0:
        raise UsageError(f"data set {meta['dataset']} has no test images")
    if index is None:
        index = int(np.random.default_rng(seed).integers(n))
    if not 0 <= index < n:
        raise UsageError(f"--image-index {index} is out of range: the test set has {n} images (0..{n - 1})")
    return ds.x_test[index], int(ds.y_test[index]), index


def render_activations(checkpoint: str | Path, backend_name: Optional[str], device: Optional[str],
                       image_index: Optional[int], seed: int, data_dir: Optional[str], out_dir: str | Path,
                       channels: int = 16, threads: Optional[int] = None) -> list[Path]:
    from cifarbench.backends import resolve
    from cifarbench.checkpoint import check_compatible, load_checkpoint
    from cifarbench.data.augment import normalize
    from cifarbench.engine.session import eval_backend
    from cifarbench.models import create_spec
    from cifarbench.models.registry import check_runs_on
    from cifarbench.report.plots import feature_grid, input_image

    if channels < 1:
        raise UsageError("--channels must be at least 1")
    ck = load_checkpoint(checkpoint)
    meta = ck.meta
    backend_name = backend_name or meta.get("backend", "torch")
    check_runs_on(meta["model"], resolve(backend_name, device)[0])  # e.g. tv: models are torch-only
    spec = create_spec(meta["model"], int(meta["in_channels"]), int(meta["image_size"]), int(meta["num_classes"]))
    check_compatible(ck.state, spec, str(checkpoint))
    if len(spec.capture_points) == 0:
        raise UsageError(f"model '{spec.name}' declares no capture points")
    mean, std = tuple(meta["mean"]), tuple(meta["std"])
    backend = eval_backend(backend_name, device, spec, ck.state, mean, std, seed, threads=threads)
    img, label, index = _test_image(meta, data_dir, image_index, seed)
    x = normalize(img[None], mean, std)
    if meta.get("resize"):  # trained on batches resized on the device (--image-size): show what it saw
        from cifarbench.backends.resize import resize_nchw

        x = resize_nchw(x, *(int(v) for v in meta["resize"]))
    logits, caps = backend.forward(x, capture=list(spec.capture_points))
    names = list(meta.get("class_names") or [str(i) for i in range(spec.num_classes)])
    pred = int(np.argmax(logits[0]))
    out = Path(out_dir)
    paths = [input_image(img, f"#{index} ground truth: {names[label]} | predicted: {names[pred]}", out / "original.png")]
    where = backend.describe()
    for name in spec.capture_points:
        act = caps[name][0]
        shape = "x".join(str(s) for s in act.shape[1:]) or "1"
        title = f"{name} activations ({act.shape[0]} channels, {shape}) — {where}"
        paths.append(feature_grid(act, title, out / f"{name}.png", channels))
    return paths
