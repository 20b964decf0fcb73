"""NumpyBackend (CPU) and CupyBackend (NVIDIA GPU): one code path over the array module xp."""

from __future__ import annotations

import os

import numpy as np

from cifarbench.backends.base import Backend, EpochStats, OptimConfig, TrainOptions
from cifarbench.backends.muon import muon_params
from cifarbench.backends.numpy_backend.arrays import LANES, blas_threads, idle_threads, to_numpy
from cifarbench.backends.numpy_backend.augment import make_batch, normalise, resized
from cifarbench.backends.numpy_backend.loss import cross_entropy
from cifarbench.backends.numpy_backend.network import Net
from cifarbench.backends.numpy_backend.optim import Grouped, Optimizer
from cifarbench.errors import UsageError
from cifarbench.models import spec as S

DTYPE = np.float32


class NumpyBackend(Backend):
    """The from-scratch engine: forward and backward written out by hand (see the modules)."""

    name = "numpy"
    devices = ("cpu",)
    supported_precisions = ("fp32",)
    weight_layout = "OHWI"  # im2col's column order
    image_layout = "NHWC"

    @classmethod
    def probe(cls) -> dict[str, str | None]:
        return {"cpu": None}

    def _array_module(self):
        return np

    def __init__(self, device: str, options: TrainOptions, seed: int = 0):
        super().__init__(device, options, seed)
        self.xp = self._array_module()
        self.conv_threads = 1
        if self.xp is np:  # threads: as asked, else the CPUs the load average leaves idle
            asked = options.extra.get("threads")
            want = int(asked) if asked else idle_threads()
            if want > 1 and os.environ.get("CIFARBENCH_NUMPY_THREADING", "lanes") == "lanes":
                # convolutions run their lanes on `want` threads, each GEMM on one BLAS thread:
                # measured faster than a 2-thread BLAS on the small GEMMs of CIFAR nets
                self.conv_threads = min(want, LANES)
                blas_threads(max(1, want // self.conv_threads))
                self.threads = want
            else:
                self.threads = blas_threads(want)
        self.net: Net | None = None
        self.optim: Optimizer | None = None
        self.data: dict[str, tuple[object, object]] = {}
        self._mean = self.xp.asarray(np.asarray(options.mean, DTYPE))
        self._std = self.xp.asarray(np.asarray(options.std, DTYPE))
        self._epoch = None

    # ----- model -----------------------------------------------------------------------
    def _build(self, spec: S.ModelSpec) -> None:
        self.net = Net(spec, self.xp, DTYPE)
        self.net.ws.set_threads(self.conv_threads)

    def _respec(self, spec: S.ModelSpec, rate: float) -> None:
        self.net.dropout_rate = rate

    def _get_tensors(self) -> dict[str, np.ndarray]:
        return {k: to_numpy(v) for k, v in {**self.net.params, **self.net.buffers}.items()}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        # fresh device arrays (the base hands over copies): updates run in place
        self.net.params = {k: self.xp.asarray(tensors[k]) for k in self.spec.param_shapes()}
        self.net.buffers = {k: self.xp.asarray(tensors[k]) for k in self.spec.buffer_shapes()}

    def _forward(self, x: np.ndarray, train: bool, capture: tuple[str, ...], dropout: bool):
        logits = self.net.forward(self.xp.asarray(x), train=train, dropout=dropout, capture=capture)
        return to_numpy(logits), {k: to_numpy(v) for k, v in self.net.captures.items()}

    # ----- optimizer -------------------------------------------------------------------
    def _configure_optimizer(self, opt: OptimConfig) -> None:
        if opt.name == "muon" or opt.frozen_after:
            self.optim = Grouped(opt, muon_params(self.spec.param_shapes()) if opt.name == "muon" else ())
        else:
            self.optim = Optimizer(opt.name, opt.nesterov, opt.weight_decay, opt.betas[1], opt.eps, opt.scales)

    def _get_optimizer_state(self) -> tuple[dict[str, np.ndarray], int]:
        return {k: to_numpy(v) for k, v in self.optim.state.items()}, self.optim.step_count

    def _set_optimizer_state(self, slots: dict[str, np.ndarray], step: int) -> None:
        self.optim.state = {k: self.xp.asarray(v) for k, v in slots.items()}
        self.optim.step_count = step

    # ----- data and steps --------------------------------------------------------------
    def set_data(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        self.data[split] = (self.xp.asarray(np.ascontiguousarray(x, np.uint8)), self.xp.asarray(np.asarray(y, np.int64)))

    def begin_epoch(self, order: np.ndarray, offsets: np.ndarray | None, flips: np.ndarray | None, seed: int) -> None:
        xp = self.xp
        self._order = xp.asarray(np.asarray(order, np.int64))
        self._offsets = None if offsets is None else xp.asarray(np.asarray(offsets, np.int64))
        self._flips = None if flips is None else xp.asarray(np.asarray(flips, bool))
        self._need_model()
        self.net.rng = xp.random.default_rng(seed)
        self._epoch = {"loss": xp.zeros((), np.float64), "correct": xp.zeros((), np.int64), "count": 0}

    def _batch(self, start: int, stop: int):
        if self._epoch is None or "train" not in self.data:
            raise UsageError("set_data('train', ...) and begin_epoch() before train_step()")
        x, y = self.data["train"]
        idx = self._order[start:stop]
        offs = None if self._offsets is None else self._offsets[start:stop]
        flips = None if self._flips is None else self._flips[start:stop]
        pad = self.options.crop_pad if offs is not None else 0
        return make_batch(x, idx, offs, flips, pad, self._mean, self._std, DTYPE, self.options.resize), y[idx]

    def train_step(self, start: int, stop: int, lr: float, momentum: float) -> None:
        self._need_optimizer()
        net, opt = self.net, self.optim
        xb, yb = self._batch(start, stop)
        logits = net.forward(xb, train=True)
        per_sample, dlogits, correct = cross_entropy(logits, yb, self.options.label_smoothing)
        net.backward(dlogits)
        opt.step(net.params, net.grads, lr, momentum)
        self._epoch["loss"] += per_sample.sum(dtype=np.float64)
        self._epoch["correct"] += correct
        self._epoch["count"] += int(stop - start)

    # phase_step's primitives (base.py): train_step's body, cut at the phase boundaries
    def _step_data(self, rows):
        batch = self._batch(*rows)
        return batch, batch

    def _step_forward(self, batch):
        xb, yb = batch
        logits = self.net.forward(xb, train=True)
        dlogits = cross_entropy(logits, yb, self.options.label_smoothing)[1]  # the loss's gradient comes with it
        return dlogits, dlogits

    def _step_backward(self, dlogits):
        self.net.backward(dlogits)
        return None, None

    def _step_update(self, _grads, lr: float, momentum: float):
        self.optim.step(self.net.params, self.net.grads, lr, momentum)
        return None, None

    def end_epoch(self) -> EpochStats:
        return self.running_stats()  # begin_epoch resets the sums

    def running_stats(self) -> EpochStats:
        self.synchronize()
        e = self._epoch or {"loss": 0.0, "correct": 0, "count": 0}
        return EpochStats(float(e["loss"]), int(e["correct"]), int(e["count"]))

    def _predict(self, split: str, batch_size: int) -> np.ndarray:
        net = self.net
        if split not in self.data:
            raise UsageError(f"no data for split '{split}': call set_data first")
        x, _ = self.data[split]
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = resized(normalise(x[i : i + batch_size], self._mean, self._std, DTYPE), self.options.resize)
            out.append(to_numpy(net.forward(xb, train=False)))
        return np.concatenate(out) if out else np.zeros((0, net.spec.num_classes), DTYPE)

    def synchronize(self) -> None:
        pass

    def describe(self) -> str:
        n = getattr(self, "threads", None)
        if n is None:
            threads = ""
        elif self.conv_threads > 1:  # the batch's lanes on n threads, one BLAS thread each
            threads = f", {self.conv_threads} threads"
        else:
            threads = ", 1 thread" if n == 1 else f", {n} BLAS threads"
        return f"numpy cpu (NumPy {np.__version__}, float32 im2col + BLAS GEMM{threads})"


class CupyBackend(NumpyBackend):
    """The same engine on an NVIDIA GPU through CuPy (imported lazily: numpy must work without it)."""

    name = "cupy"
    devices = ("cuda",)

    @classmethod
    def probe(cls) -> dict[str, str | None]:
        try:
            import cupy
        except ImportError:
            return {"cuda": "cupy is not installed (pip install 'cifarbench[cupy]')"}
        except Exception as exc:  # a broken CUDA install can fail at import
            return {"cuda": f"cupy cannot load: {type(exc).__name__}: {exc}".splitlines()[0]}
        try:
            if not cupy.cuda.is_available():
                return {"cuda": "cupy found no usable NVIDIA GPU"}
            float((cupy.arange(4, dtype=cupy.float32) * 2).sum())  # a tiny kernel + copy back
        except Exception as exc:
            return {"cuda": f"cupy cannot use the GPU: {type(exc).__name__}: {exc}".splitlines()[0]}
        return {"cuda": None}

    def _array_module(self):
        import cupy

        return cupy

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def describe(self) -> str:
        try:
            props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
            gpu = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        except Exception:
            gpu = "unknown GPU"
        return f"cupy cuda ({gpu})"
