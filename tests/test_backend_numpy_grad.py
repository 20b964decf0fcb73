"""Gradient checks of every NumPy-backend primitive against central finite differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from cifarbench.backends.numpy_backend import conv, layers, loss, norm
from cifarbench.backends.numpy_backend.arrays import Workspace
from cifarbench.backends.numpy_backend.network import Net
from cifarbench.models import spec as S

from gradcheck import numgrad


def close(analytic, numeric, tol=1e-6):
    err = np.linalg.norm(analytic - numeric) / max(np.linalg.norm(numeric), 1e-12)
    assert err < tol, f"relative error {err:.2e}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# stride 1 with pad <= k - 1 takes the transposed-convolution path, the others col2im
@pytest.mark.parametrize("k,stride,pad,bias", [(3, 1, 1, True), (3, 2, 1, False), (1, 2, 0, False), (1, 1, 0, True), (3, 1, 0, True),
                                           (3, 1, 2, False), (2, 1, 1, True), (1, 1, 1, False), (3, 3, 1, True)])
@pytest.mark.parametrize("chunk_bytes", [None, 1])  # the whole batch at once; one image per chunk
@pytest.mark.parametrize("gemm_pieces", [False, True])  # every GEMM in stacked row pieces, with a remainder
def test_conv2d_gradients(rng, monkeypatch, k, stride, pad, bias, chunk_bytes, gemm_pieces):
    if gemm_pieces:
        from cifarbench.backends.numpy_backend import arrays

        # 2-20 rows a piece for these shapes (K x N from 12 to 108): a 30-row chunk is several pieces
        monkeypatch.setattr(arrays, "GEMM_CELLS", 250)
        monkeypatch.setattr(arrays, "GEMM_MIN_ROWS", 1)
    x = rng.standard_normal((2, 5, 6, 3))
    w = rng.standard_normal((4, k, k, 3))
    b = rng.standard_normal(4) if bias else None
    ws = Workspace(chunk_bytes)
    g = rng.standard_normal(conv.conv2d_forward(x, w, b, stride, pad, ws).shape)

    def f():
        return float((conv.conv2d_forward(x, w, b, stride, pad, Workspace(chunk_bytes)) * g).sum())

    dx, dw, db = conv.conv2d_backward(g, x, w, stride, pad, ws, need_dx=True, has_bias=bias)
    close(dx, numgrad(f, x))
    close(dw, numgrad(f, w))
    if bias:
        close(db, numgrad(f, b))


def test_conv2d_matches_direct_sum(rng):
    """The im2col result equals the definition y[n,p,q,o] = sum x[n,sp+i,sq+j,c] w[o,i,j,c]."""
    x = rng.standard_normal((1, 5, 5, 2))
    w = rng.standard_normal((3, 3, 3, 2))
    y = conv.conv2d_forward(x, w, None, 2, 1, Workspace())
    xpad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.zeros((1, 3, 3, 3))
    for p in range(3):
        for q in range(3):
            ref[0, p, q] = np.tensordot(w, xpad[0, 2 * p : 2 * p + 3, 2 * q : 2 * q + 3], axes=([1, 2, 3], [0, 1, 2]))
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_batchnorm_gradients(rng):
    x = rng.standard_normal((3, 2, 2, 4)) * 2 + 1
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    y, cache, _, _ = norm.batchnorm_train_forward(x, gamma, beta, 1e-5)
    g = rng.standard_normal(y.shape)

    def f():
        return float((norm.batchnorm_train_forward(x, gamma, beta, 1e-5)[0] * g).sum())

    dx, dgamma, dbeta = norm.batchnorm_backward(g, cache, gamma)
    close(dx, numgrad(f, x))
    close(dgamma, numgrad(f, gamma))
    close(dbeta, numgrad(f, beta))


@pytest.fixture
def pieces(monkeypatch):
    """A workspace whose row passes cut a small array into several pieces over 4 lanes and 2
    threads, tiled 2 rows at a time, with a 1-row remainder piece (the untiled path)."""
    from cifarbench.backends.numpy_backend import arrays

    monkeypatch.setattr(arrays, "INNER", 8)  # G = 2 rows for C = 4 channels
    monkeypatch.setattr(arrays, "ROW_BYTES", 192)  # 6 float64 rows of 4 channels a piece
    return Workspace(chunk_bytes=1, threads=2)


def test_row_pieces_cover_every_row_once_in_order(pieces):
    got = pieces.rows(45, 32, lambda r0, r1, ws: (r0, r1), align=2)
    assert got[0][0] == 0 and got[-1][1] == 45
    assert all(a[1] == b[0] for a, b in zip(got, got[1:]))
    assert len(got) > 4 and any((r1 - r0) % 2 for r0, r1 in got)  # several pieces, a remainder among them


@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_gradients_in_pieces(rng, pieces, relu):
    """BatchNorm (and the ReLU fused after it) cut into pieces and lanes: statistics combined
    piece by piece, gradients summed piece by piece, still the exact function's gradient."""
    x = rng.standard_normal((3, 3, 5, 4)) * 2 + 1  # 45 rows of 4 channels
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    mean, var = x.reshape(-1, 4).mean(axis=0), x.reshape(-1, 4).var(axis=0)

    def f(x=x):
        y = norm.batchnorm_train_forward(x.copy(), gamma, beta, 1e-5, True, pieces, relu)[0]
        return float((y * g).sum())

    y, cache, m, v = norm.batchnorm_train_forward(x.copy(), gamma, beta, 1e-5, True, pieces, relu)
    # float64: each combined statistic is a few dozen roundings of values of size ~1 from exact
    np.testing.assert_allclose(m, mean, rtol=0, atol=1e-13)
    np.testing.assert_allclose(v, var, rtol=0, atol=1e-13)
    ref = (x - mean) / np.sqrt(var + 1e-5) * gamma + beta
    np.testing.assert_allclose(y, np.maximum(ref, 0) if relu else ref, rtol=0, atol=1e-12)
    g = rng.standard_normal(y.shape)
    dx, dgamma, dbeta = norm.batchnorm_backward(g, cache, gamma, pieces)
    close(dx, numgrad(f, x))
    close(dgamma, numgrad(f, gamma))
    close(dbeta, numgrad(f, beta))
    ye = norm.batchnorm_eval_forward(x, gamma, beta, mean, var, 1e-5, pieces, relu)
    np.testing.assert_allclose(ye, np.maximum(ref, 0) if relu else ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu_gradients_in_pieces(rng, pieces, slope):
    x = rng.standard_normal((3, 3, 5, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    g = rng.standard_normal(x.shape)
    y, mask = layers.relu_forward(x, slope, False, pieces)
    np.testing.assert_array_equal(y, np.where(x > 0, x, slope * x))
    close(layers.relu_backward(g, mask, slope, pieces),
          numgrad(lambda: float((layers.relu_forward(x, slope)[0] * g).sum()), x))


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu_gradients(rng, slope):
    x = rng.standard_normal((2, 3, 3, 2))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    g = rng.standard_normal(x.shape)
    _, mask = layers.relu_forward(x, slope)
    close(layers.relu_backward(g, mask, slope), numgrad(lambda: float((layers.relu_forward(x, slope)[0] * g).sum()), x))


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 1)])
def test_pool_gradients(rng, k, s):
    x = rng.permutation(2 * 6 * 7 * 3).reshape(2, 6, 7, 3) / 10.0  # distinct values: no ties
    y, cache = layers.maxpool_forward(x, k, s)
    g = rng.standard_normal(y.shape)
    fmax = lambda: float((layers.maxpool_forward(x, k, s)[0] * g).sum())  # noqa: E731
    close(layers.maxpool_backward(g, cache, k, s), numgrad(fmax, x))
    favg = lambda: float((layers.avgpool_forward(x, k, s) * g).sum())  # noqa: E731
    close(layers.avgpool_backward(g, x.shape, k, s), numgrad(favg, x))


def test_maxpool_ties_go_to_first_tap():
    x = np.zeros((1, 2, 2, 1))
    _, cache = layers.maxpool_forward(x, 2, 2)
    dx = layers.maxpool_backward(np.ones((1, 1, 1, 1)), cache, 2, 2)
    assert dx[0, :, :, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]  # PyTorch's rule


def test_global_pool_linear_flatten_gradients(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    g = rng.standard_normal((2, 5))
    close(layers.global_avgpool_backward(g, x.shape), numgrad(lambda: float((layers.global_avgpool_forward(x) * g).sum()), x))
    gf = rng.standard_normal((2, 60))
    close(layers.flatten_backward(gf, x.shape), numgrad(lambda: float((layers.flatten_forward(x) * gf).sum()), x))
    # C, H, W order: element (c, h, w) of image n sits at c*H*W + h*W + w
    assert layers.flatten_forward(x)[1, 2 * 12 + 1 * 4 + 3] == x[1, 1, 3, 2]
    a, w, b = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    gl = rng.standard_normal((3, 5))
    f = lambda: float((layers.linear_forward(a, w, b) * gl).sum())  # noqa: E731
    dx, dw, db = layers.linear_backward(gl, a, w)
    close(dx, numgrad(f, a))
    close(dw, numgrad(f, w))
    close(db, numgrad(f, b))


def test_dropout_gradient_and_scale(rng):
    x = rng.standard_normal((4, 3, 3, 2))
    y, mask = layers.dropout_forward(x, 0.5, np.random.default_rng(1))
    g = rng.standard_normal(x.shape)
    f = lambda: float((layers.dropout_forward(x, 0.5, np.random.default_rng(1))[0] * g).sum())  # noqa: E731
    close(layers.dropout_backward(g, mask), numgrad(f, x))
    assert set(np.unique(mask)) <= {0.0, 2.0} and 0 < (mask == 0).sum() < mask.size


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_gradient(rng, eps):
    z = rng.standard_normal((4, 5))
    y = np.array([0, 3, 4, 1])
    per, grad, correct = loss.cross_entropy(z, y, eps)
    close(grad, numgrad(lambda: float(loss.cross_entropy(z, y, eps)[0].mean()), z))
    assert int(correct) == int((z.argmax(1) == y).sum())
    lp = z - np.log(np.exp(z).sum(1, keepdims=True))
    ref = (1 - eps) * -lp[np.arange(4), y] + eps * -lp.mean(1)
    np.testing.assert_allclose(per, ref, rtol=1e-12)


def test_network_gradients_residual_float64(rng):
    """End to end through residual adds (with and without shortcut), BN, pooling, flatten."""
    spec = S.ModelSpec(
        "tiny",
        (
            S.Conv("c1", 2, 3, 3, pad=1),
            S.BatchNorm("b1", 3),
            S.ReLU(0.1),
            S.Residual("r1", body=(S.Conv("c2", 3, 3, 3, pad=1, bias=False), S.BatchNorm("b2", 3)), relu_after=True),
            S.Residual("r2", body=(S.Conv("c3", 3, 4, 3, stride=2, pad=1),), shortcut=(S.Conv("s3", 3, 4, 1, stride=2),), relu_after=False),
            S.AvgPool(2, 1),
            S.Flatten(),
            S.Linear("fc", 4, 3),
        ),
        2,
        4,
        3,
    )
    net = Net(spec, np, np.float64)
    for k, shape in spec.param_shapes().items():
        internal = (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else shape
        net.params[k] = rng.standard_normal(internal) * 0.5 + (1.0 if k.startswith("b") and k.endswith("weight") else 0)
    for k, shape in spec.buffer_shapes().items():
        net.buffers[k] = np.ones(shape)
    x = rng.standard_normal((3, 4, 4, 2))
    y = np.array([0, 2, 1])

    def f():
        return float(loss.cross_entropy(net.forward(x, train=True), y)[0].mean())

    _, dz, _ = loss.cross_entropy(net.forward(x, train=True), y)
    net.backward(dz)
    grads = dict(net.grads)
    for name in ("c1.weight", "b1.weight", "c2.weight", "b2.bias", "c3.bias", "s3.weight", "fc.weight"):
        close(grads[name], numgrad(f, net.params[name]), tol=1e-5)


@pytest.mark.parametrize("k,s,pad", [(2, 2, 0), (3, 2, 1), (3, 3, 0)])
def test_maxpool_in_lanes_gives_each_window_to_its_first_max(k, s, pad):
    """Max-pool over 4 lanes on 2 threads, on data full of ties (small integers, as after a
    ReLU): each window's gradient goes to its first maximal tap in row-major order (torch's
    rule), exactly as a per-window reference loop says, and the same as without lanes."""
    x = np.random.default_rng(3).integers(0, 3, (5, 7, 7, 2)).astype(np.float64)
    ws = Workspace(chunk_bytes=1, threads=2)
    y, cache = layers.maxpool_forward(x, k, s, pad, ws)
    dy = np.random.default_rng(4).standard_normal(y.shape)
    dx = layers.maxpool_backward(dy, cache, k, s, pad, ws)
    xp_ = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
    ref_y, ref_dx = np.empty_like(y), np.zeros(xp_.shape)
    for n, p, q, c in np.ndindex(*y.shape):
        win = xp_[n, p * s : p * s + k, q * s : q * s + k, c]
        i, j = np.unravel_index(np.argmax(win), win.shape)  # argmax: the first maximum
        ref_y[n, p, q, c] = win[i, j]
        ref_dx[n, p * s + i, q * s + j, c] += dy[n, p, q, c]
    np.testing.assert_array_equal(y, ref_y)
    # overlapping windows add up to ceil(k/s)^2 gradients per pixel, in another order than the loop
    np.testing.assert_allclose(dx, ref_dx[:, pad : pad + 7, pad : pad + 7], rtol=0, atol=4 * 2.3e-16 * np.abs(dy).max())
    y1, c1 = layers.maxpool_forward(x, k, s, pad)
    np.testing.assert_array_equal(y1, y)
    np.testing.assert_array_equal(layers.maxpool_backward(dy, c1, k, s, pad), dx)
