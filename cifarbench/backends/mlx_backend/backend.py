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
from cifarbench.backends.mlx_backend.model import Ctx, cross_entropy, run_layers
from cifarbench.errors import UsageError
from cifarbench.models.spec import ModelSpec

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
    weight_layout = "OHWI"
    image_layout = "NHWC"

    @classmethod
    def probe(cls) -> dict[str, str | None]:
        return {"gpu": _gpu_reason(), "cpu": None}

    def __init__(self, device: str, options: TrainOptions, seed: int = 0):
        super().__init__(device, options, seed)
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
        self.params: dict = {}
        self.buffers: dict = {}
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
    def _build(self, spec: ModelSpec) -> None:
        self.params, self.buffers = {}, {}
        self.opt_state = {}
        self._compiled = {}

    def _respec(self, spec: ModelSpec, rate: float) -> None:
        self._compiled = {}  # compiled steps traced the old rates as constants

    def _get_tensors(self) -> dict[str, np.ndarray]:
        return {k: np.array(v.astype(mx.float32)) for k, v in {**self.params, **self.buffers}.items()}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        # Update the dicts in place: compiled steps hold references to these exact containers.
        self.params.update({k: mx.array(tensors[k]) for k in self.spec.param_shapes()})
        self.buffers.update({k: mx.array(tensors[k]) for k in self.spec.buffer_shapes()})
        mx.eval(self.params, self.buffers)

    def _forward_mx(self, x: mx.array, train: bool, dropout: bool = True, capture: Sequence[str] = ()):
        ctx = Ctx(self.params, self.buffers, train, dropout, self.dtype, tuple(capture))
        logits = run_layers(self.spec.layers, x.astype(self.dtype), ctx).astype(mx.float32)
        return logits, ctx

    def _forward(self, x: np.ndarray, train: bool, capture: tuple[str, ...], dropout: bool):
        logits, ctx = self._forward_mx(mx.array(x), train, dropout, capture)
        if train:
            self.buffers.update(ctx.new_buffers)
        mx.eval(logits, ctx.captured, self.buffers)
        return np.array(logits), {k: np.array(v.astype(mx.float32)) for k, v in ctx.captured.items()}

    # ----- optimizer -------------------------------------------------------------------
    def _configure_optimizer(self, opt: OptimConfig) -> None:
        self.opt_state = optim.init_state(opt, self.params)
        self._compiled = {}
        mx.eval(self.opt_state)

    def _get_optimizer_state(self) -> tuple[dict[str, np.ndarray], int]:
        slots = {f"{k}.{slot}": np.array(v) for slot in base.OPT_SLOTS[self.opt.name]
                 for k, v in self.opt_state[slot].items()}
        return slots, int(self.opt_state["step"].item())

    def _set_optimizer_state(self, slots: dict[str, np.ndarray], step: int) -> None:
        # absent slots stay zero: what torch's lazily created state amounts to
        for slot in base.OPT_SLOTS[self.opt.name]:
            for k in self.spec.param_shapes():
                key = f"{k}.{slot}"
                self.opt_state[slot][k] = mx.array(slots[key]) if key in slots else mx.zeros_like(self.params[k])
        self.opt_state["step"] = mx.array(float(step))
        mx.eval(self.opt_state)

    # ----- compiled steps --------------------------------------------------------------
    def _state_tree(self) -> list:
        return [self.params, self.buffers, self.opt_state, self.acc, mx.random.state]

    def _train_on(self, x_uint8: mx.array, y: mx.array) -> None:
        """Forward, backward, optimizer update and epoch sums; traced inside mx.compile."""
        x = normalise(x_uint8, self.mean, self.std, self.options.resize)
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
        self._need_optimizer()
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

    # phase_step's primitives (base.py): _train_on cut at the phase boundaries, uncompiled. MLX is
    # lazy: a phase ends when mx.eval has computed its outputs, and the backward graph reuses the
    # forward values already computed.
    def _step_data(self, rows):
        start, stop = rows
        if self.loader is not None:
            xb, yb = self.loader.next_batch(start, stop)
            x_uint8, y = mx.array(xb), mx.array(yb.astype(np.int32))
        else:
            ep, split = self.epoch, self.splits["train"]
            idx = ep["order"][start:stop]
            x_uint8 = gather_batch(split, idx, None if ep["offsets"] is None else ep["offsets"][start:stop],
                                   None if ep["flips"] is None else ep["flips"][start:stop])
            y = split.labels[idx]
        batch = (normalise(x_uint8, self.mean, self.std, self.options.resize), y)
        return batch, batch

    def _step_forward(self, batch):
        x, y = batch

        def loss_fn(params):
            ctx = Ctx(params, self.buffers, True, True, self.dtype)
            logits = run_layers(self.spec.layers, x.astype(self.dtype), ctx).astype(mx.float32)
            return cross_entropy(logits, y, self.options.label_smoothing).mean(), ctx.new_buffers

        (loss, new_buffers), grads = mx.value_and_grad(loss_fn)(self.params)
        self.buffers.update(new_buffers)
        return (loss, new_buffers), grads

    def _step_backward(self, grads):
        return grads, grads

    def _step_update(self, grads, lr: float, momentum: float):
        self.opt_state["lr"] = mx.array(float(lr))
        self.opt_state["momentum"] = mx.array(float(momentum))
        self.params.update(optim.apply(self.opt, self.params, grads, self.opt_state))
        return [self.params, self.opt_state], None

    def _block(self, outputs) -> None:
        mx.eval(outputs)

    def end_epoch(self) -> EpochStats:
        return self.running_stats()  # begin_epoch resets the sums

    def running_stats(self) -> EpochStats:
        mx.eval(self.acc)
        return EpochStats(float(self.acc["loss"].item()), int(self.acc["correct"].item()), int(self.acc["count"].item()))

    def _predict(self, split: str, batch_size: int) -> np.ndarray:
        if split not in self.splits:
            raise UsageError(f"split '{split}' was not given to set_data")
        data = self.splits[split]
        fn = mx.compile(lambda idx: self._forward_mx(normalise(gather_batch(data, idx, None, None), self.mean, self.std, self.options.resize), False)[0])
        outs = []
        for start in range(0, data.n, batch_size):
            outs.append(fn(mx.arange(start, min(start + batch_size, data.n))))
            mx.async_eval(outs[-1])
        logits = mx.concatenate(outs) if outs else mx.zeros((0, self.spec.num_classes))
        return np.array(logits)

    def synchronize(self) -> None:
        mx.synchronize()
