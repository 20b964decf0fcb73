"""MLXBackend: the Backend contract (cifarbench/backends/base.py) on Apple MLX."""

from __future__ import annotations

from functools import partial
from typing import Sequence

import mlx.core as mx
import numpy as np

from cifarbench.backends import base
from cifarbench.backends.base import EpochStats, OptimConfig, TrainOptions
from cifarbench.backends.mlx_backend import optim
from cifarbench.backends.mlx_backend.data import DeviceSplit, MLXDataLoader, gather_batch, normalise
from cifarbench.backends.mlx_backend.model import Ctx, conv_weight_names, cross_entropy, run_layers, to_canonical, to_mlx
from cifarbench.errors import CheckpointError, UsageError
from cifarbench.models.spec import Group, ModelSpec, Residual, iter_layers

# PyTorch state dicts carry BN step counters that no cifarbench backend uses.
IGNORED_SUFFIXES = (".num_batches_tracked",)
DTYPES = {"fp32": mx.float32, "bf16": mx.bfloat16, "fp16": mx.float16}


def _gpu_reason() -> str | None:
    try:
        if mx.metal.is_available():
            return None
    except Exception:  # older/odd builds: fall through to the other checks
        pass
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and hasattr(cuda, "is_available"):
        return None if cuda.is_available() else "this MLX build has neither Metal nor CUDA (e.g. mlx[cpu])"
    try:
        mx.eval(mx.add(mx.array(1.0), 1.0, stream=mx.gpu))
        return None
    except Exception as exc:
        return f"no MLX GPU: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


class MLXBackend(base.Backend):
    name = "mlx"
    devices = ("gpu", "cpu")
    supported_precisions = ("fp32", "bf16")

    @classmethod
    def probe(cls) -> dict[str, str | None]:
        return {"gpu": _gpu_reason(), "cpu": None}

    def __init__(self, device: str, options: TrainOptions, seed: int = 0):
        super().__init__(device, options, seed)
        if device not in self.devices:
            raise UsageError(f"MLX has no device '{device}'; valid: {', '.join(self.devices)}")
        if options.precision not in self.supported_precisions:
            raise UsageError(f"MLX backend supports --precision {', '.join(self.supported_precisions)}")
        mx.set_default_device(mx.gpu if device == "gpu" else mx.cpu)
        limit = options.extra.get("memory_limit_gb")
        if limit:
            mx.set_memory_limit(int(float(limit) * 2**30))
        mx.random.seed(seed)
        self.dtype = DTYPES[options.precision]
        nchan = len(options.mean)
        self.mean = mx.array(np.asarray(options.mean, np.float32).reshape(1, 1, 1, nchan))
        self.std = mx.array(np.asarray(options.std, np.float32).reshape(1, 1, 1, nchan))
        self.loader_kind = options.extra.get("loader", "memory")
        if self.loader_kind not in ("memory", "mlx-data"):
            raise UsageError(f"unknown MLX loader '{self.loader_kind}'; valid: memory, mlx-data")
        self.spec: ModelSpec | None = None
        self.params: dict = {}
        self.buffers: dict = {}
        self.opt: OptimConfig | None = None
        self.opt_state: dict = {}
        self.acc = {"loss": mx.array(0.0), "correct": mx.array(0), "count": mx.array(0)}
        self.splits: dict[str, DeviceSplit] = {}
        self.loader: MLXDataLoader | None = None
        self.epoch: dict = {}
        self._compiled: dict = {}

    def describe(self) -> str:
        try:
            info = mx.device_info() if self.device == "gpu" else {}
        except Exception:
            info = {}
        name = info.get("device_name") or info.get("architecture")
        return f"mlx {self.device}" + (f" ({name})" if name else "")

    # ----- model -----------------------------------------------------------------------
    def build(self, spec: ModelSpec, state: dict[str, np.ndarray]) -> None:
        self.spec = spec
        self._conv = conv_weight_names(spec)
        self.params, self.buffers = {}, {}
        self.load_state_dict(state)
        self.opt, self.opt_state = None, {}
        self._compiled = {}

    def _check_keys(self, state: dict, expected: dict, what: str, optional: bool = False) -> None:
        """Shapes must match; unknown keys are refused; missing ones too unless ``optional``."""
        unexpected = sorted(k for k in state if k not in expected and k != "step" and not k.endswith(IGNORED_SUFFIXES))
        missing = [] if optional else [k for k in expected if k not in state]
        if missing or unexpected:
            what_ = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
            raise CheckpointError(
                f"{what} does not fit model '{self.spec.name}': {what_} ({len(missing)} missing, {len(unexpected)} unexpected)"
            )
        for k, shape in expected.items():
            if k in state and tuple(np.shape(state[k])) != tuple(shape):
                raise CheckpointError(f"{what}: '{k}' has shape {np.shape(state[k])}, model expects {tuple(shape)}")

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {k: to_canonical(k, v, self._conv) for k, v in self.params.items()}
        out.update({k: to_canonical(k, v, self._conv) for k, v in self.buffers.items()})
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        pshapes, bshapes = self.spec.param_shapes(), self.spec.buffer_shapes()
        self._check_keys(state, {**pshapes, **bshapes}, "state dict")
        # Update the dicts in place: compiled steps hold references to these exact containers.
        self.params.update({k: to_mlx(k, state[k], self._conv) for k in pshapes})
        self.buffers.update({k: to_mlx(k, state[k], self._conv) for k in bshapes})
        mx.eval(self.params, self.buffers)

    def _forward(self, x: mx.array, train: bool, dropout: bool = True, capture: Sequence[str] = ()):
        ctx = Ctx(self.params, self.buffers, train, dropout, self.dtype, tuple(capture))
        logits = run_layers(self.spec.layers, x.astype(self.dtype), ctx).astype(mx.float32)
        return logits, ctx

    def capture_points(self) -> list[str]:
        return [l.name for l in iter_layers(self.spec.layers) if isinstance(l, (Group, Residual))]

    def forward(self, x, train=False, capture=(), dropout=True):
        unknown = [c for c in capture if c not in self.capture_points()]
        if unknown:
            raise UsageError(f"unknown capture point '{unknown[0]}'; valid: {', '.join(self.capture_points())}")
        xm = mx.array(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1)))
        logits, ctx = self._forward(xm, train, dropout, capture)
        if train:
            self.buffers.update(ctx.new_buffers)
        caps = {k: v.transpose(0, 3, 1, 2) if v.ndim == 4 else v for k, v in ctx.captured.items()}
        mx.eval(logits, caps, self.buffers)
        return np.array(logits), {k: np.array(v.astype(mx.float32)) for k, v in caps.items()}

    # ----- optimizer -------------------------------------------------------------------
    def configure_optimizer(self, opt: OptimConfig) -> None:
        if opt.name not in optim.SLOTS:
            raise UsageError(f"MLX backend: unknown optimizer '{opt.name}'; valid: {', '.join(optim.SLOTS)}")
        self.opt = opt
        self.opt_state = optim.init_state(opt, self.params)
        self._compiled = {}
        mx.eval(self.opt_state)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        out = {"step": np.array(self.opt_state["step"], dtype=np.float32)}
        for slot in optim.SLOTS[self.opt.name]:
            for k, v in self.opt_state[slot].items():
                out[f"{k}.{slot}"] = to_canonical(k, v, self._conv)
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        if self.opt is None:
            raise UsageError("configure_optimizer must be called before load_optimizer_state")
        slots = optim.SLOTS[self.opt.name]
        shapes = self.spec.param_shapes()
        # torch omits a parameter's slots until its first step; absent slots stay zero, which
        # is what torch's lazily created state amounts to.
        self._check_keys(state, {f"{k}.{s}": shapes[k] for s in slots for k in shapes}, "optimizer state", optional=True)
        for slot in slots:
            for k in shapes:
                key = f"{k}.{slot}"
                value = to_mlx(k, state[key], self._conv) if key in state else mx.zeros_like(self.params[k])
                self.opt_state[slot][k] = value
        self.opt_state["step"] = mx.array(float(np.asarray(state.get("step", 0.0))))
        mx.eval(self.opt_state)

    # ----- compiled steps --------------------------------------------------------------
    def _state_tree(self) -> list:
        return [self.params, self.buffers, self.opt_state, self.acc, mx.random.state]

    def _train_on(self, x_uint8: mx.array, y: mx.array) -> None:
        """Forward, backward, optimizer update and epoch sums; traced inside mx.compile."""
        x = normalise(x_uint8, self.mean, self.std)
        eps = self.options.label_smoothing

        def loss_fn(params):
            ctx = Ctx(params, self.buffers, True, True, self.dtype)
            logits = run_layers(self.spec.layers, x.astype(self.dtype), ctx).astype(mx.float32)
            per_sample = cross_entropy(logits, y, eps)
            return per_sample.mean(), per_sample, logits, ctx.new_buffers

        (_, per_sample, logits, new_buffers), grads = mx.value_and_grad(loss_fn)(self.params)
        self.buffers.update(new_buffers)
        self.params.update(optim.apply(self.opt, self.params, grads, self.opt_state))
        self.acc["loss"] = self.acc["loss"] + per_sample.sum()
        self.acc["correct"] = self.acc["correct"] + (logits.argmax(axis=1) == y).sum()
        self.acc["count"] = self.acc["count"] + y.shape[0]

    def _step_fn(self, kind: str):
        if kind not in self._compiled:
            state = self._state_tree()
            if kind == "memory":

                def fn(flat_owner_idx, offsets, flips):
                    split = self.splits["train"]
                    self._train_on(gather_batch(split, flat_owner_idx, offsets, flips), split.labels[flat_owner_idx])

            else:

                def fn(x_uint8, y):
                    self._train_on(x_uint8, y)

            compile_on = self.options.extra.get("compile", True)
            self._compiled[kind] = partial(mx.compile, inputs=state, outputs=state)(fn) if compile_on else fn
        return self._compiled[kind]

    # ----- data and steps --------------------------------------------------------------
    def set_data(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        pad = self.options.crop_pad if split == "train" else 0
        if split == "train" and self.loader_kind == "mlx-data":
            opts = self.options.extra
            self.loader = MLXDataLoader(
                x, y, pad, self.options.flip, opts.get("prefetch", 4), opts.get("loader_threads", 2)
            )
        else:
            self.splits[split] = DeviceSplit(x, y, pad)
        self._compiled = {}  # compiled steps captured the previous arrays as constants

    def begin_epoch(self, order, offsets, flips, seed) -> None:
        mx.random.seed(int(seed))
        order = np.asarray(order)
        self.epoch = {
            "order": mx.array(order.astype(np.int32)),
            "offsets": None if offsets is None else mx.array(np.asarray(offsets, np.int32)),
            "flips": None if flips is None else mx.array(np.asarray(flips, bool)),
        }
        if self.loader is not None:
            self.loader.begin_epoch(order, seed)
        self.acc.update({"loss": mx.array(0.0), "correct": mx.array(0), "count": mx.array(0)})

    def train_step(self, start: int, stop: int, lr: float, momentum: float) -> None:
        if self.opt is None:
            raise UsageError("configure_optimizer must be called before train_step")
        self.opt_state["lr"] = mx.array(float(lr))
        self.opt_state["momentum"] = mx.array(float(momentum))
        if self.loader is not None:
            xb, yb = self.loader.next_batch(start, stop)
            self._step_fn("mlx-data")(mx.array(xb), mx.array(yb.astype(np.int32)))
        else:
            ep = self.epoch
            offsets = None if ep["offsets"] is None else ep["offsets"][start:stop]
            flips = None if ep["flips"] is None else ep["flips"][start:stop]
            self._step_fn("memory")(ep["order"][start:stop], offsets, flips)
        # Schedule the step now (the graph stays one step deep) without blocking the host.
        mx.async_eval(self._state_tree())

    def end_epoch(self) -> EpochStats:
        mx.eval(self.acc)
        return EpochStats(float(self.acc["loss"].item()), int(self.acc["correct"].item()), int(self.acc["count"].item()))

    def predict(self, split: str, batch_size: int) -> np.ndarray:
        if split not in self.splits:
            raise UsageError(f"split '{split}' was not given to set_data")
        data = self.splits[split]
        fn = mx.compile(lambda idx: self._forward(normalise(gather_batch(data, idx, None, None), self.mean, self.std), False)[0])
        outs = []
        for start in range(0, data.n, batch_size):
            outs.append(fn(mx.arange(start, min(start + batch_size, data.n))))
            mx.async_eval(outs[-1])
        logits = mx.concatenate(outs) if outs else mx.zeros((0, self.spec.num_classes))
        return np.array(logits)

    def synchronize(self) -> None:
        mx.synchronize()
