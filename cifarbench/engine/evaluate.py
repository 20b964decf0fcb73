"""Evaluate a checkpoint on any backend: accuracy, loss, per-class table and confusion matrix."""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from cifarbench.checkpoint import check_compatible, load_checkpoint
from cifarbench.engine.metrics import evaluate_logits
from cifarbench.engine.session import eval_backend
from cifarbench.errors import UsageError
from cifarbench.models import create_spec


def evaluate_checkpoint(checkpoint: str, dataset: Optional[str], data_dir: Optional[str], backend: str,
                        device: Optional[str], batch_size: int, threads: Optional[int] = None,
                        warn: Callable[[str], None] = lambda _msg: None, limit: Optional[int] = None,
                        seed: int = 0) -> dict:
    """Load a checkpoint on any backend and evaluate it on its (or another) data set's test split
    (``limit``: a seeded, class-stratified subset of that many images)."""
    return evaluate_with_data(checkpoint, dataset, data_dir, backend, device, batch_size, threads, warn, limit, seed)[0]


def evaluate_with_data(checkpoint: str, dataset: Optional[str], data_dir: Optional[str], backend: str,
                       device: Optional[str], batch_size: int, threads: Optional[int] = None,
                       warn: Callable[[str], None] = lambda _msg: None, limit: Optional[int] = None,
                       seed: int = 0):
    """``evaluate_checkpoint``'s result, and the images, labels and logits it evaluated (for plots)."""
    from cifarbench.backends import resolve
    from cifarbench.data import load_dataset, stratified_subset
    from cifarbench.models.registry import check_runs_on

    ck = load_checkpoint(checkpoint)  # a run directory gives its newest complete generation
    for note in ck.notes:
        warn(note)
    bad = sum(int(v.size - np.isfinite(v).sum()) for v in ck.state.values())
    if bad:
        warn(f"checkpoint {checkpoint} has {bad} non-finite weight values (NaN/inf): the run diverged; "
             "these results mean nothing")
    meta = ck.meta
    check_runs_on(meta["model"], resolve(backend, device)[0])  # before the data set loads
    ds_name = dataset or meta.get("dataset", "cifar10")
    ds = load_dataset(ds_name, data_dir)
    for w in getattr(ds, "warnings", []) or []:
        warn(w)
    if len(ds.y_test) == 0:
        raise UsageError(f"the test split of {ds_name} is empty: nothing to evaluate on")
    resize = meta.get("resize")  # trained on batches resized on the device (--image-size): evaluate alike
    spec = create_spec(meta["model"], ds.channels, int(resize[1]) if resize else ds.image_size, ds.num_classes)
    check_compatible(ck.state, spec, f"checkpoint {checkpoint} (model {meta['model']}, {meta['num_classes']} classes)")
    be = eval_backend(backend, device, spec, ck.state, meta.get("mean", ds.mean()), meta.get("std", ds.std()),
                      threads=threads, resize=resize)
    x_test, y_test = stratified_subset(ds.x_test, ds.y_test, limit, seed)
    be.set_data("test", x_test, y_test)
    t0 = time.perf_counter()
    logits = be.predict("test", batch_size)
    seconds = time.perf_counter() - t0
    result = evaluate_logits(logits, y_test, ds.class_names)
    result.update(
        checkpoint=str(checkpoint), model=meta["model"], dataset=ds_name, backend=be.name, device=be.device,
        device_name=be.describe(), class_names=list(ds.class_names), test_time_s=seconds,
        trained_on=meta.get("backend"), total_parameters=spec.num_params(), limit_eval=limit,
    )
    return result, x_test, y_test, logits
