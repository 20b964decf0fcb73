"""The mlx-data loader path: a new, seeded order every epoch; crops and flips of the real images."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("mlx.data")

from cifarbench.backends.base import OptimConfig, TrainOptions  # noqa: E402
from cifarbench.backends.mlx_backend import MLXBackend  # noqa: E402
from cifarbench.backends.mlx_backend.data import MLXDataLoader  # noqa: E402
from cifarbench.models import create_spec, init_params  # noqa: E402


def dataset(n=24, size=8):
    # Image i is filled with the value i + 1 (and a marked corner), so a batch reveals its samples.
    x = np.zeros((n, size, size, 3), np.uint8)
    x[:] = (np.arange(n) + 1)[:, None, None, None]
    return x, np.arange(n, dtype=np.int64)


def epoch_labels(loader, order, seed, bs=8):
    loader.begin_epoch(order, seed)
    out = []
    for start in range(0, len(order), bs):
        images, labels = loader.next_batch(start, min(start + bs, len(order)))
        assert images.dtype == np.uint8 and images.shape[1:] == (8, 8, 3)
        # every crop holds only the sample's own pixels or the zero padding
        for img, lab in zip(images, labels):
            assert set(np.unique(img)) <= {0, lab + 1} and (img == lab + 1).sum() >= 4 * 4 * 3
        out.extend(labels.tolist())
    return out


def test_each_epoch_sees_a_new_seeded_order():
    x, y = dataset()
    loader = MLXDataLoader(x, y, pad=2, flip=True, prefetch=4, threads=2)
    orders = [np.random.default_rng(s).permutation(len(x)) for s in (0, 1)]
    e0 = epoch_labels(loader, orders[0], seed=10)
    e1 = epoch_labels(loader, orders[1], seed=11)
    again = epoch_labels(loader, orders[0], seed=10)
    # The engine's order is what the epoch sees (a shuffle-once Buffer would replay e0 forever).
    assert e0 == orders[0].tolist() and e1 == orders[1].tolist() and e0 != e1
    assert again == e0
    assert sorted(e0) == list(range(len(x)))


def test_resume_mid_epoch_and_short_last_batch():
    x, y = dataset(20)
    loader = MLXDataLoader(x, y, pad=0, flip=False)
    order = np.random.default_rng(3).permutation(20)
    loader.begin_epoch(order, 0)
    _, labels = loader.next_batch(8, 16)  # jump in (a resumed run starts mid-epoch)
    assert labels.tolist() == order[8:16].tolist()
    _, labels = loader.next_batch(16, 20)
    assert labels.tolist() == order[16:20].tolist()
    img, _ = loader.next_batch(0, 8)  # no padding: images come back untouched
    np.testing.assert_array_equal(img, x[order[:8]])


def test_backend_trains_through_mlx_data():
    spec = create_spec("cnn", image_size=8)
    opts = TrainOptions(mean=(0.5,) * 3, std=(0.25,) * 3, crop_pad=2, flip=True, extra={"loader": "mlx-data", "compile": False})
    b = MLXBackend("cpu", opts)
    b.build(spec, init_params(spec, 0))
    b.configure_optimizer(OptimConfig("sgd"))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 24)
    b.set_data("train", x, y)
    b.begin_epoch(rng.permutation(24), None, None, seed=0)
    for start in range(0, 24, 8):
        b.train_step(start, start + 8, lr=0.05, momentum=0.9)
    stats = b.end_epoch()
    assert stats.count == 24 and np.isfinite(stats.loss_sum)
