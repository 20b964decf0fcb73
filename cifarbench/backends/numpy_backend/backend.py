"""NumpyBackend (CPU) and CupyBackend (NVIDIA GPU): one code path over the array module xp."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cifarbench.backends.base import Backend, EpochStats, OptimConfig, TrainOptions
from cifarbench.backends.numpy_backend.arrays import blas_threads, to_numpy
from cifarbench.backends.numpy_backend.augment import make_batch, normalise
from cifarbench.backends.numpy_backend.loss import cross_entropy
from cifarbench.backends.numpy_backend.network import Net
from cifarbench.backends.numpy_backend.optim import Optimizer
from cifarbench.errors import CheckpointError, UsageError
from cifarbench.models import spec as S

DTYPE = np.float32


class NumpyBackend(Backend):
    """The from-scratch engine: forward and backward written out by hand (see the modules)."""

    name = "numpy"
    devices = ("cpu",)
    supported_precisions = ("fp32",)

    @classmethod
    def probe(cls) -> dict[str, str | None]:
        return {"cpu": None}

    def _array_module(self):
        return np

    def __init__(self, device: str, options: TrainOptions, seed: int = 0):
        super().__init__(device, options, seed)
        if options.precision not in self.supported_precisions:
            raise UsageError(f"backend '{self.name}' supports only fp32, not {options.precision}")
        self.xp = self._array_module()
        if "threads" in options.extra and self.xp is np:  # BLAS threads (default: OpenBLAS's own)
            blas_threads(int(options.extra["threads"]))
        self.net: Net | None = None
        self.opt: Optimizer | None = None
        self.data: dict[str, tuple[object, object]] = {}
        self._mean = self.xp.asarray(np.asarray(options.mean, DTYPE))
        self._std = self.xp.asarray(np.asarray(options.std, DTYPE))
        self._epoch = None

    # ----- model -----------------------------------------------------------------------
    def build(self, spec: S.ModelSpec, state: dict[str, np.ndarray]) -> None:
        self.net = Net(spec, self.xp, DTYPE)
        # Conv weights are kept OHWI inside (im2col's column order); canonical is OIHW.
        self._conv = {f"{c.name}.weight" for c in spec.param_layers() if isinstance(c, S.Conv)}
        self._shapes = {**spec.param_shapes(), **spec.buffer_shapes()}
        self.load_state_dict(state)

    def _to_internal(self, name: str, a: np.ndarray):
        a = np.asarray(a, DTYPE)
        if self._param_of(name) in self._conv:
            a = a.transpose(0, 2, 3, 1)
        # Always a copy: updates happen in place and must not reach the caller's arrays.
        return self.xp.asarray(np.array(a, DTYPE, order="C", copy=True))

    def _to_canonical(self, name: str, a) -> np.ndarray:
        a = to_numpy(a)
        if self._param_of(name) in self._conv:
            a = np.ascontiguousarray(a.transpose(0, 3, 1, 2))
        return a.astype(DTYPE, copy=False)

    def _param_of(self, key: str) -> str:
        """'conv1.weight' -> itself; optimizer keys 'conv1.weight.exp_avg' -> 'conv1.weight'."""
        return key if key in self._shapes else key.rsplit(".", 1)[0]

    def state_dict(self) -> dict[str, np.ndarray]:
        net = self._need_net()
        out = {k: self._to_canonical(k, v) for k, v in net.params.items()}
        out.update({k: self._to_canonical(k, v) for k, v in net.buffers.items()})  # frozen conv weights: OHWI
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        net = self._need_net()
        missing = sorted(set(self._shapes) - set(state))
        extra = sorted(set(state) - set(self._shapes))
        if missing or extra:
            raise CheckpointError(f"state does not fit model '{net.spec.name}': missing {missing[:3]}, unexpected {extra[:3]}")
        for k, shape in self._shapes.items():
            if tuple(np.shape(state[k])) != tuple(shape):
                raise CheckpointError(f"{k}: shape {tuple(np.shape(state[k]))}, model wants {tuple(shape)}")
        params = net.spec.param_shapes()
        net.params = {k: self._to_internal(k, state[k]) for k in params}
        net.buffers = {k: self._to_internal(k, state[k]) for k in net.spec.buffer_shapes()}

    def _need_net(self) -> Net:
        if self.net is None:
            raise UsageError("build() the model first")
        return self.net

    def forward(
        self, x: np.ndarray, train: bool = False, capture: Sequence[str] = (), dropout: bool = True
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        net = self._need_net()
        xin = self.xp.asarray(np.ascontiguousarray(np.asarray(x, DTYPE).transpose(0, 2, 3, 1)))
        logits = net.forward(xin, train=train, dropout=dropout, capture=capture)
        caps = {}
        for k, v in net.captures.items():
            v = to_numpy(v)
            caps[k] = np.ascontiguousarray(v.transpose(0, 3, 1, 2)) if v.ndim == 4 else v
        return to_numpy(logits), caps

    # ----- optimizer -------------------------------------------------------------------
    def configure_optimizer(self, opt: OptimConfig) -> None:
        if opt.name not in ("sgd", "adam", "adamw"):
            raise UsageError(f"unknown optimizer '{opt.name}'; valid: adam, adamw, sgd")
        self.opt = Optimizer(opt.name, opt.nesterov, opt.weight_decay, opt.betas[1], opt.eps, opt.scales)

    def _need_opt(self) -> Optimizer:
        if self.opt is None:
            raise UsageError("configure_optimizer() first")
        return self.opt

    def optimizer_state(self) -> dict[str, np.ndarray]:
        opt = self._need_opt()
        out = {k: self._to_canonical(k, v) for k, v in opt.state.items()}
        out["step"] = np.array(float(opt.step_count), DTYPE)
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        opt = self._need_opt()
        params = self._need_net().params
        new = {}
        for k, v in state.items():
            if k == "step":
                continue
            p = self._param_of(k)
            if p not in params or tuple(np.shape(v)) != tuple(self._shapes[p]):
                raise CheckpointError(f"optimizer state '{k}' does not fit this model")
            new[k] = self._to_internal(k, v)
        opt.state = new
        opt.step_count = int(np.asarray(state.get("step", 0)))

    # ----- data and steps --------------------------------------------------------------
    def set_data(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        self.data[split] = (self.xp.asarray(np.ascontiguousarray(x, np.uint8)), self.xp.asarray(np.asarray(y, np.int64)))

    def begin_epoch(self, order: np.ndarray, offsets: np.ndarray | None, flips: np.ndarray | None, seed: int) -> None:
        xp = self.xp
        self._order = xp.asarray(np.asarray(order, np.int64))
        self._offsets = None if offsets is None else xp.asarray(np.asarray(offsets, np.int64))
        self._flips = None if flips is None else xp.asarray(np.asarray(flips, bool))
        self._need_net().rng = xp.random.default_rng(seed)
        self._epoch = {"loss": xp.zeros((), np.float64), "correct": xp.zeros((), np.int64), "count": 0}

    def train_step(self, start: int, stop: int, lr: float, momentum: float) -> None:
        net, opt = self._need_net(), self._need_opt()
        if self._epoch is None or "train" not in self.data:
            raise UsageError("set_data('train', ...) and begin_epoch() before train_step()")
        x, y = self.data["train"]
        idx = self._order[start:stop]
        offs = None if self._offsets is None else self._offsets[start:stop]
        flips = None if self._flips is None else self._flips[start:stop]
        pad = self.options.crop_pad if offs is not None else 0
        xb = make_batch(x, idx, offs, flips, pad, self._mean, self._std, DTYPE)
        logits = net.forward(xb, train=True)
        per_sample, dlogits, correct = cross_entropy(logits, y[idx], self.options.label_smoothing)
        net.backward(dlogits)
        opt.step(net.params, net.grads, lr, momentum)
        self._epoch["loss"] += per_sample.sum(dtype=np.float64)
        self._epoch["correct"] += correct
        self._epoch["count"] += int(stop - start)

    def end_epoch(self) -> EpochStats:
        self.synchronize()
        e = self._epoch or {"loss": 0.0, "correct": 0, "count": 0}
        return EpochStats(float(e["loss"]), int(e["correct"]), int(e["count"]))

    def predict(self, split: str, batch_size: int) -> np.ndarray:
        net = self._need_net()
        if split not in self.data:
            raise UsageError(f"no data for split '{split}': call set_data first")
        x, _ = self.data[split]
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = normalise(x[i : i + batch_size], self._mean, self._std, DTYPE)
            out.append(to_numpy(net.forward(xb, train=False)))
        return np.concatenate(out) if out else np.zeros((0, net.spec.num_classes), DTYPE)

    def synchronize(self) -> None:
        pass

    def describe(self) -> str:
        return f"numpy cpu (NumPy {np.__version__}, float32 im2col + BLAS GEMM)"


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
