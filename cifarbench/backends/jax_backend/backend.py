"""JaxBackend: the Backend contract on JAX/XLA.

All training state (parameters, buffers, optimizer slots, step count, epoch sums, dropout key)
is one pytree. ``train_step`` calls a ``jax.jit``-compiled pure function (one compilation per
batch size) that gathers and augments the batch from the device-resident split, runs forward,
backward and a torch.optim-exact update, and adds the loss and correct count to the sums. The
old state is donated and nothing is read back: the host only queues work. ``end_epoch`` and
``synchronize`` are the only places that block.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from cifarbench.backends.base import OPT_SLOTS, Backend, EpochStats, OptimConfig, TrainOptions
from cifarbench.backends.jax_backend import model as M
from cifarbench.backends.muon import muon_params, newton_schulz
from cifarbench.backends.resize import resize_matrix
from cifarbench.errors import UsageError
from cifarbench.models.spec import ModelSpec

PLATFORMS = {"cuda": "gpu", "cpu": "cpu"}


def _platform_reason(platform: str) -> str | None:
    try:
        jax.devices(platform)
    except RuntimeError as exc:
        return f"jax has no {platform} device: {str(exc).splitlines()[0][:160]}"
    return None


def _fro(x):
    return jnp.sqrt(jnp.sum(x * x, axis=(-2, -1), keepdims=True))


def _optimizer_update(opt: OptimConfig, params: dict, grads: dict, slots: dict, step, lr, mom):
    """torch.optim's SGD / Adam / AdamW and Muon (see base.py); lr and momentum (beta1) are traced scalars."""
    new_params, new_slots = {}, {name: dict(v) for name, v in slots.items()}
    filters = set(muon_params({k: v.shape for k, v in params.items()})) if opt.name == "muon" else set()
    if opt.name in ("adam", "adamw"):
        step_size = lr / (1 - mom**step)
        bc2_sqrt = jnp.sqrt(1 - opt.betas[1] ** step)
    for k, p in params.items():
        g = grads[k]
        f_lr, f_wd = opt.scale_of(k)  # Python floats: fixed per compiled graph, like the optimizer kind
        wd = opt.weight_decay * f_wd
        n_ramp = opt.ramp_of(k)
        if n_ramp:  # frozen_after: x max(0, 1 - t/N), t = steps taken before this one
            f_lr = f_lr * jnp.maximum(1.0 - (step - 1) / n_ramp, 0.0)
        if k in filters:  # Muon (base.py): nesterov momentum, renormalised filter, orthogonalised update
            mu = opt.muon_momentum
            buf = mu * slots["momentum_buffer"][k] + g
            new_slots["momentum_buffer"][k] = buf
            u = g + mu * buf if opt.nesterov else buf
            p = p * (np.sqrt(p.shape[0]) / jnp.sqrt(jnp.sum(p * p)))
            ortho = newton_schulz(u.reshape(p.shape[0], -1), opt.ns_steps, _fro).reshape(p.shape)
            new_params[k] = p - (lr * f_lr) * ortho
            continue
        if opt.name in ("sgd", "muon"):
            if wd:
                g = g + wd * p
            buf = mom * slots["momentum_buffer"][k] + g  # a zero buffer makes the first one g, as torch
            new_slots["momentum_buffer"][k] = buf
            new_params[k] = p - (lr * f_lr) * (g + mom * buf if opt.nesterov else buf)
            continue
        if wd and opt.name == "adam":
            g = g + wd * p
        if wd and opt.name == "adamw":
            p = p * (1 - lr * f_lr * wd)
        m = mom * slots["exp_avg"][k] + (1 - mom) * g
        v = opt.betas[1] * slots["exp_avg_sq"][k] + (1 - opt.betas[1]) * (g * g)
        new_slots["exp_avg"][k], new_slots["exp_avg_sq"][k] = m, v
        new_params[k] = p - (step_size * f_lr) * m / (jnp.sqrt(v) / bc2_sqrt + opt.eps)
    return new_params, new_slots


class JaxBackend(Backend):
    name = "jax"
    devices = ("cuda", "cpu")
    supported_precisions = ("fp32",)
    weight_layout = "OHWI"
    image_layout = "NHWC"

    @classmethod
    def probe(cls) -> dict[str, str | None]:
        return {dev: _platform_reason(platform) for dev, platform in PLATFORMS.items()}

    def __init__(self, device: str, options: TrainOptions, seed: int = 0):
        super().__init__(device, options, seed)
        self._dev = jax.devices(PLATFORMS[device])[0]
        self._mean = self._put(np.asarray(options.mean, np.float32))
        self._std = self._put(np.asarray(options.std, np.float32))
        self._splits: dict[str, tuple] = {}
        self._state: dict = {}
        self._key = jax.random.key(seed)
        self._count = 0

    def _put(self, a):
        return jax.device_put(a, self._dev)

    def describe(self) -> str:
        return f"jax {jax.__version__} {self.device} ({self._dev.device_kind})"

    # ----- model -----------------------------------------------------------------------
    def _build(self, spec: ModelSpec) -> None:
        self._state = {"params": {}, "buffers": {}}
        self._jit_model()

    def _jit_model(self) -> None:
        self._eval = jax.jit(self._eval_fn)
        self._fwd = jax.jit(self._forward_fn, static_argnames=("train", "capture", "dropout"))

    def _respec(self, spec: ModelSpec, rate: float) -> None:
        # the jitted functions read self.spec when traced: trace again (once) on the new spec
        self._jit_model()
        if self.opt is not None:
            self._jit_step(self.opt)

    def _get_tensors(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in {**self._state["params"], **self._state["buffers"]}.items()}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self._state["params"] = {k: self._put(tensors[k]) for k in self.spec.param_shapes()}
        self._state["buffers"] = {k: self._put(tensors[k]) for k in self.spec.buffer_shapes()}

    def _forward_fn(self, params, buffers, x, key, train: bool, capture: tuple, dropout: bool):
        ctx = M.Ctx(params, buffers, train, dropout, key, capture)
        return M.forward(self.spec, ctx, x), ctx.captured, ctx.new_buffers

    def _forward(self, x: np.ndarray, train: bool, capture: tuple[str, ...], dropout: bool):
        self._key, key = jax.random.split(self._key)
        st = self._state
        logits, caps, new_buffers = self._fwd(st["params"], st["buffers"], self._put(x), key, train=train,
                                              capture=capture, dropout=dropout)
        st["buffers"] = {**st["buffers"], **new_buffers}
        return np.asarray(logits), {k: np.asarray(v) for k, v in caps.items()}

    # ----- optimizer -------------------------------------------------------------------
    def _configure_optimizer(self, opt: OptimConfig) -> None:
        # distinct zero arrays per slot: the step donates every buffer of the state once
        self._state["slots"] = {slot: {k: jnp.zeros_like(v) for k, v in self._state["params"].items()}
                                for slot in OPT_SLOTS[opt.name]}
        self._state["step"] = self._put(np.float32(0))
        self._state["loss"], self._state["correct"] = self._put(np.float32(0)), self._put(np.int32(0))
        self._jit_step(opt)

    def _jit_step(self, opt: OptimConfig) -> None:
        # one compilation per batch size (static); the old state's buffers are reused for the new one
        self._step = jax.jit(partial(self._step_fn, opt), static_argnames=("bs", "crop", "flip"), donate_argnums=(0,))

    def _get_optimizer_state(self) -> tuple[dict[str, np.ndarray], int]:
        slots = {f"{k}.{slot}": np.asarray(v) for slot, d in self._state["slots"].items() for k, v in d.items()}
        return slots, int(np.asarray(self._state["step"]))

    def _set_optimizer_state(self, slots: dict[str, np.ndarray], step: int) -> None:
        for slot, d in self._state["slots"].items():  # absent slots: zero, what torch's lazy state amounts to
            for k in d:
                d[k] = self._put(slots[f"{k}.{slot}"]) if f"{k}.{slot}" in slots else jnp.zeros_like(d[k])
        self._state["step"] = self._put(np.float32(step))

    # ----- data and steps --------------------------------------------------------------
    def set_data(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        pad = self.options.crop_pad if split == "train" else 0
        x = np.ascontiguousarray(x, np.uint8)
        padded = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)]) if pad else x
        self._splits[split] = (self._put(padded), self._put(np.asarray(y, np.int32)), x.shape[1], x.shape[2], pad)

    def begin_epoch(self, order: np.ndarray, offsets: np.ndarray | None, flips: np.ndarray | None, seed: int) -> None:
        self._need_optimizer()
        self._order = self._put(np.asarray(order, np.int32))
        self._offsets = None if offsets is None else self._put(np.asarray(offsets, np.int32))
        self._flips = None if flips is None else self._put(np.asarray(flips, bool))
        self._state["key"] = self._put(jax.random.key(int(seed) % 2**32))  # committed, as the step returns it
        self._state["loss"], self._state["correct"] = self._put(np.float32(0)), self._put(np.int32(0))
        self._count = 0

    def _batch_fn(self, padded, labels, order, offsets, flips, start, *, bs: int, crop: bool, flip: bool):
        _, _, h, w, pad = self._splits["train"]
        idx = jax.lax.dynamic_slice(order, (start,), (bs,))
        offs = jax.lax.dynamic_slice(offsets, (start, 0), (bs, 2)) if crop else None
        flp = jax.lax.dynamic_slice(flips, (start,), (bs,)) if flip else None
        return self._prepare(M.augment(padded, idx, offs, flp, pad, h, w)), labels[idx]

    def _step_fn(self, opt: OptimConfig, state, padded, labels, order, offsets, flips, start, lr, mom,
                 *, bs: int, crop: bool, flip: bool):
        xb, yb = self._batch_fn(padded, labels, order, offsets, flips, start, bs=bs, crop=crop, flip=flip)
        key, sub = jax.random.split(state["key"])

        def loss_fn(params):
            ctx = M.Ctx(params, state["buffers"], True, True, sub)
            logits = M.forward(self.spec, ctx, xb)
            per_sample = M.cross_entropy(logits, yb, self.options.label_smoothing)
            return per_sample.mean(), (per_sample, logits, ctx.new_buffers)

        (_, (per_sample, logits, new_buffers)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        step = state["step"] + 1
        params, slots = _optimizer_update(opt, state["params"], grads, state["slots"], step, lr, mom)
        return {
            "params": params, "buffers": {**state["buffers"], **new_buffers}, "slots": slots, "step": step,
            "loss": state["loss"] + per_sample.sum(), "key": key,
            "correct": state["correct"] + (logits.argmax(axis=1) == yb).sum().astype(jnp.int32),
        }

    def train_step(self, start: int, stop: int, lr: float, momentum: float) -> None:
        self._need_optimizer()
        if "train" not in self._splits or "key" not in self._state:
            raise UsageError("set_data('train', ...) and begin_epoch() before train_step()")
        padded, labels = self._splits["train"][:2]
        crop, flip = self._offsets is not None, self._flips is not None
        self._state = self._step(self._state, padded, labels, self._order, self._offsets, self._flips,
                                 np.int32(start), np.float32(lr), np.float32(momentum),
                                 bs=stop - start, crop=crop, flip=flip)
        self._count += stop - start

    # phase_step's primitives (base.py): _step_fn cut at the phase boundaries, each phase its own
    # jitted function. The forward returns the pullback's residual arrays (its leaves); the backward
    # rebuilds the pullback from the tree structure recorded when the forward was traced.
    def _phase_fns(self):
        if getattr(self, "_phases_for", None) is not self.opt:
            self._pullbacks: dict[int, object] = {}
            self._phases = {
                "data": jax.jit(self._batch_fn, static_argnames=("bs", "crop", "flip")),
                "forward": jax.jit(self._phase_forward_fn),
                "backward": jax.jit(self._phase_backward_fn, static_argnames=("bs",)),
                "optimizer": jax.jit(partial(_optimizer_update, self.opt)),
            }
            self._phases_for = self.opt
        return self._phases

    def _phase_forward_fn(self, params, buffers, xb, yb, key):
        def loss_fn(p):
            ctx = M.Ctx(p, buffers, True, True, key)
            return M.cross_entropy(M.forward(self.spec, ctx, xb), yb, self.options.label_smoothing).mean(), ctx.new_buffers

        loss, pullback, new_buffers = jax.vjp(loss_fn, params, has_aux=True)
        leaves, self._pullbacks[xb.shape[0]] = jax.tree_util.tree_flatten(pullback)  # recorded at trace time
        return loss, new_buffers, leaves

    def _phase_backward_fn(self, leaves, *, bs: int):
        return jax.tree_util.tree_unflatten(self._pullbacks[bs], leaves)(jnp.float32(1.0))[0]

    def _step_data(self, rows):
        start, stop = rows
        if "train" not in self._splits or "key" not in self._state:
            raise UsageError("set_data('train', ...) and begin_epoch() before train_step()")
        padded, labels = self._splits["train"][:2]
        batch = self._phase_fns()["data"](padded, labels, self._order, self._offsets, self._flips, np.int32(start),
                                          bs=stop - start, crop=self._offsets is not None, flip=self._flips is not None)
        return batch, batch

    def _step_forward(self, batch):
        xb, yb = batch
        st = self._state
        st["key"], sub = jax.random.split(st["key"])
        loss, new_buffers, leaves = self._phase_fns()["forward"](st["params"], st["buffers"], xb, yb, sub)
        st["buffers"] = {**st["buffers"], **new_buffers}
        return (loss, new_buffers), (leaves, xb.shape[0])

    def _step_backward(self, held):
        leaves, bs = held
        grads = self._phase_fns()["backward"](leaves, bs=bs)
        return grads, grads

    def _step_update(self, grads, lr: float, momentum: float):
        st = self._state
        step = st["step"] + 1
        st["params"], st["slots"] = self._phase_fns()["optimizer"](st["params"], grads, st["slots"], step,
                                                                    np.float32(lr), np.float32(momentum))
        st["step"] = step
        return [st["params"], st["slots"]], None

    def _block(self, outputs) -> None:
        jax.block_until_ready(outputs)

    def end_epoch(self) -> EpochStats:
        return self.running_stats()  # begin_epoch resets the sums

    def running_stats(self) -> EpochStats:
        loss, correct = float(self._state["loss"]), int(self._state["correct"])  # these block
        return EpochStats(loss, correct, self._count)

    def _prepare(self, x_uint8):
        """uint8 NHWC -> normalised float32, resized + centre-cropped when options.resize (backends/resize.py)."""
        x = (x_uint8.astype(jnp.float32) / 255.0 - self._mean) / self._std
        if self.options.resize is None:
            return x
        hi = jax.lax.Precision.HIGHEST
        rh, rw = (jnp.asarray(resize_matrix(n, *self.options.resize)) for n in (x.shape[1], x.shape[2]))
        x = jnp.einsum("oh,bhwc->bowc", rh, x, precision=hi)
        return jnp.einsum("pw,bowc->bopc", rw, x, precision=hi)

    def _eval_fn(self, params, buffers, x_uint8):
        return M.forward(self.spec, M.Ctx(params, buffers, False), self._prepare(x_uint8))

    def _predict(self, split: str, batch_size: int) -> np.ndarray:
        if split not in self._splits:
            raise UsageError(f"no data for split '{split}': call set_data first")
        x = self._splits[split][0]
        st = self._state
        outs = [self._eval(st["params"], st["buffers"], x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return np.concatenate([np.asarray(o) for o in outs]) if outs else np.zeros((0, self.spec.num_classes), np.float32)

    def synchronize(self) -> None:
        jax.block_until_ready(self._state)
