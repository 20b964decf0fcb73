"""The Backend contract: what every framework implements, and nothing more.

The engine owns the recipe (epochs, schedules, data order, augmentation draws, metrics); a
backend owns a model and an optimizer on one device and runs steps. All arrays that cross
this boundary are NumPy, in canonical layout:

- parameters/buffers: ``spec.param_shapes()`` / ``spec.buffer_shapes()`` names, PyTorch layout
  (conv OIHW, linear (out, in)), float32;
- optimizer state: ``<param>.momentum_buffer`` (SGD), ``<param>.exp_avg`` and
  ``<param>.exp_avg_sq`` (Adam/AdamW) in the parameter's canonical layout, plus ``step``
  (a 0-d float array: optimizer steps taken);
- images given to ``set_data``: uint8 NHWC; labels int64;
- images given to ``forward``: float32 NCHW, already normalised; logits float32 (N, classes).

Augmentation is drawn by the engine (seeded, NumPy) and applied by the backend on its device,
vectorised, so every backend sees the same data in the same order. For sample i of the epoch
(image ``order[i]``), with pad P = ``TrainOptions.crop_pad``:
``img = zero_pad_uint8(x, P)[dy:dy+H, dx:dx+W]`` with ``(dy, dx) = offsets[i]`` in [0, 2P];
then if ``flips[i]``: ``img = img[:, ::-1]`` (mirror the width axis);
then ``(img / 255 - mean) / std`` per channel. Padding is black in pixel space (as
torchvision's RandomCrop before Normalize). With ``TrainOptions.resize = (S, C)`` the normalised
batch (training and evaluation alike) is then resized to S x S and centre-cropped to C x C on the
device (``backends/resize.py``: ``R @ x @ R.T`` over H and W), and the model sees C x C images.

Loss: mean softmax cross-entropy with label smoothing eps, PyTorch semantics
``(1 - eps) * nll + eps * mean_c(-log p_c)``.

Optimizers follow torch.optim exactly: SGD (momentum buffer initialised to the first
gradient, dampening 0, nesterov, L2 weight decay added to the gradient), Adam (L2 decay added
to the gradient, bias-corrected), AdamW (decoupled decay ``p -= lr * wd * p`` before the
update, bias-corrected). Weight decay applies to every parameter. The engine passes lr and
momentum (SGD momentum, or beta1 for Adam/AdamW) to every ``train_step``. ``OptimConfig.scales``
gives named parameters their own lr and weight-decay factors (torch param groups: lr * f_lr,
weight_decay * f_wd). Tensors the spec freezes (``buffer_shapes()``) are never optimised.
``OptimConfig.frozen_after`` ((param, N) pairs, any optimizer) multiplies that parameter's lr
by ``max(0, 1 - t / N)``, t = optimizer steps taken before this one: its lr decays to 0 over the
first N steps, and from then on it does not move (speedrun's whitening bias, 3 epochs).

Muon (``name="muon"``, see ``backends/muon.py``): every trainable 4-D parameter (a conv filter)
takes a Muon step, every other parameter the SGD step above (nesterov as ``nesterov`` says,
the engine's momentum, L2 decay). For a filter p of shape (out, ...) with gradient g, buffer
``momentum_buffer`` (initially 0) and mu = ``muon_momentum`` (fixed, not the engine's)::

    buf = mu * buf + g;   u = g + mu * buf (nesterov) else buf
    p = p * sqrt(out) / ||p||_F                   (renormalised before the step)
    p -= lr * f_lr * NS(u reshaped to (out, in*k*k)), reshaped back

NS: ``ns_steps`` quintic Newton-Schulz steps on u / (||u||_F + 1e-7), iterated on the shorter
side: X <- a X + (b A + c A A) X, A = X X^T, (a, b, c) = (3.4445, -4.7750, 2.0315). Filters
take no weight decay (their norm is reset every step). The column order of the reshape does
not matter (NS commutes with permuting columns), so OHWI backends reshape their own layout.
"""

from __future__ import annotations

import abc
import os
import time
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Sequence

import numpy as np

from cifarbench.errors import BackendUnavailable, CheckpointError, UsageError
from cifarbench.models.spec import NOT_CANONICAL_SUFFIXES, Conv, Group, ModelSpec, Residual, iter_layers, with_dropout

Precision = Literal["fp32", "bf16", "fp16"]
# The phases of one training step as ``Backend.phase_step`` times them, in the order they run.
STEP_PHASES = ("data", "forward", "backward", "optimizer")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = 0.9  # SGD momentum; the initial beta1 for Adam/AdamW comes from betas
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # (param name, lr factor, weight-decay factor): torch-style param groups; unnamed params use 1, 1
    scales: tuple[tuple[str, float, float], ...] = ()
    # (param name, N steps): lr also x max(0, 1 - t/N), t = steps taken before; frozen from step N on
    frozen_after: tuple[tuple[str, int], ...] = ()
    muon_momentum: float = 0.6  # Muon: the filters' (fixed) nesterov momentum
    ns_steps: int = 3  # Muon: Newton-Schulz steps

    def ramp_of(self, name: str) -> int:
        """N of ``frozen_after`` for this parameter, 0 when it has none."""
        return next((int(n) for k, n in self.frozen_after if k == name), 0)

    def scale_of(self, name: str) -> tuple[float, float]:
        return next(((lr, wd) for n, lr, wd in self.scales if n == name), (1.0, 1.0))

    @property
    def initial_momentum(self) -> float:
        return initial_momentum(self.name, self.momentum, self.betas)


def initial_momentum(opt: str, momentum: float, betas: Sequence[float]) -> float:
    """The one rule for what the engine's per-step "momentum" means: SGD momentum (Muon: its SGD groups'), or Adam's beta1.

    ``OptimConfig.momentum``/``betas[0]`` only seed it: every ``train_step`` passes the scheduled value.
    """
    return momentum if opt in ("sgd", "muon") else betas[0]


# Optimizer state slots per optimizer, canonical key "<param>.<slot>" (torch.optim's own names).
OPT_SLOTS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq"), "adamw": ("exp_avg", "exp_avg_sq"),
    "muon": ("momentum_buffer",),  # filters' Muon buffer and the other parameters' SGD buffer alike
}


@dataclass(frozen=True)
class TrainOptions:
    mean: tuple[float, ...] = (0.0,)  # per channel, in [0, 1] pixel units
    std: tuple[float, ...] = (1.0,)
    label_smoothing: float = 0.0
    crop_pad: int = 0  # 0 = no random crop
    flip: bool = False
    resize: tuple[int, int] | None = None  # (S, C): bilinear resize to S x S, centre crop C x C (None: as given)
    precision: Precision = "fp32"
    extra: dict = field(default_factory=dict)  # backend-specific knobs (e.g. {"compile": True})


@dataclass
class EpochStats:
    loss_sum: float  # sum over samples of the per-sample training loss
    correct: int
    count: int


def check_state(state: dict[str, np.ndarray], spec: ModelSpec, source: str) -> None:
    """The one key/shape check of a canonical state dict against a spec (torch's BN counters ignored)."""
    expected = {**spec.param_shapes(), **spec.buffer_shapes()}
    given = [k for k in state if not k.endswith(NOT_CANONICAL_SUFFIXES)]
    missing = [k for k in expected if k not in state]
    extra = [k for k in given if k not in expected]
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise CheckpointError(
            f"{source} does not match model '{spec.name}' ({what}; {len(missing)} missing, {len(extra)} unexpected tensors)"
        )
    for k, shape in expected.items():
        if tuple(np.shape(state[k])) != tuple(shape):
            raise CheckpointError(
                f"{source} does not match model '{spec.name}' with {spec.num_classes} classes: "
                f"{k} has shape {tuple(np.shape(state[k]))}, expected {tuple(shape)}"
            )


def check_optimizer_state(state: dict[str, np.ndarray], spec: ModelSpec, opt: str) -> None:
    """Known slots of this optimizer only, parameter shapes, and each parameter's slots all or none.

    Slots may be absent (torch creates them lazily at a parameter's first step)."""
    if "step" not in state:
        raise CheckpointError("optimizer state has no 'step' entry")
    shapes, slots = spec.param_shapes(), OPT_SLOTS[opt]
    unknown = sorted(k for k in state if k != "step" and not (k.rpartition(".")[2] in slots and k.rpartition(".")[0] in shapes))
    if unknown:
        raise CheckpointError(f"optimizer state does not fit a {opt} optimizer for model '{spec.name}': has {unknown[0]!r}")
    for p, shape in shapes.items():
        present = [s for s in slots if f"{p}.{s}" in state]
        if present and len(present) != len(slots):
            raise CheckpointError(f"optimizer state for {p} is incomplete: has {present}, needs {list(slots)}")
        for s in present:
            if tuple(np.shape(state[f"{p}.{s}"])) != tuple(shape):
                raise CheckpointError(f"{p}.{s}: shape {np.shape(state[f'{p}.{s}'])} does not match parameter {tuple(shape)}")


class Backend(abc.ABC):
    """One framework on one device.

    The public methods are concrete: they validate once and convert layouts by the class
    attributes ``weight_layout``/``image_layout``, then call the ``_primitives`` a subclass
    implements (marked abstract below; see ARCHITECTURE.md). Subclasses set ``name``, ``devices``
    and ``supported_precisions``.
    """

    name: ClassVar[str]
    devices: ClassVar[tuple[str, ...]]
    supported_precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    weight_layout: ClassVar[Literal["OIHW", "OHWI"]] = "OIHW"  # how the backend keeps conv weights
    image_layout: ClassVar[Literal["NCHW", "NHWC"]] = "NCHW"  # what ``_forward`` takes and captures in
    trains_on_ranks: ClassVar[bool] = False  # True: ``for_rank`` runs data-parallel under torchrun

    # ----- discovery -------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def probe(cls) -> dict[str, str | None]:
        """device -> None when usable here, else the reason it is not (one line)."""

    @classmethod
    def auto_device(cls) -> str:
        """The best usable device, in ``devices`` order of preference; ``cpu`` when the environment
        sets ``USE_CPU`` (mike7seven's switch: 1/true/yes) and the backend has one."""
        if os.environ.get("USE_CPU", "").strip().lower() in ("1", "true", "yes") and "cpu" in cls.devices:
            return "cpu"
        avail = cls.probe()
        for dev in cls.devices:
            if avail.get(dev) is None:
                return dev
        return cls.devices[-1]

    @classmethod
    def check_usable(cls, device: str, precision: str) -> None:
        """The one device/precision check (a subclass may add its own rules after calling this)."""
        if device not in cls.devices:
            raise UsageError(f"backend '{cls.name}' has no device '{device}'; valid: {', '.join(cls.devices)}")
        reason = cls.probe().get(device)
        if reason is not None:
            raise BackendUnavailable(f"{cls.name} device '{device}' is not available: {reason}")
        if precision not in cls.supported_precisions:
            raise UsageError(
                f"backend '{cls.name}' does not support --precision {precision}; valid: {', '.join(cls.supported_precisions)}"
            )

    @classmethod
    def for_rank(cls, env, device: str, options: TrainOptions, seed: int) -> "Backend":
        """This backend on one rank of a torchrun job (``env``: backends.ranks.DistEnv), where
        ``trains_on_ranks`` says it can; most backends train in one process."""
        raise NotImplementedError(f"backend '{cls.name}' does not train on torchrun ranks")

    def __init__(self, device: str, options: TrainOptions, seed: int = 0):
        self.check_usable(device, options.precision)
        self.device = device
        self.options = options
        self.seed = seed
        self.spec: ModelSpec | None = None
        self.opt: OptimConfig | None = None

    # ----- model -----------------------------------------------------------------------
    def build(self, spec: ModelSpec, state: dict[str, np.ndarray]) -> None:
        """Instantiate the model from the spec, with these canonical weights and buffers."""
        self.spec, self.opt = spec, None
        self._conv_weights = {f"{l.name}.weight" for l in spec.param_layers() if isinstance(l, Conv)}
        self._build(spec)
        self.load_state_dict(state)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Canonical parameters and buffers, float32 NumPy (copies: later steps do not change them)."""
        self._need_model()
        got = self._get_tensors()
        return {k: self._canonical(k, got[k]) for k in (*self.spec.param_shapes(), *self.spec.buffer_shapes())}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._need_model()
        check_state(state, self.spec, "state dict")
        names = (*self.spec.param_shapes(), *self.spec.buffer_shapes())
        self._set_tensors({k: self._internal(k, state[k]) for k in names})

    def set_dropout(self, rate: float) -> None:
        """From the next step on, every Dropout layer drops with probability ``rate`` (the engine's
        dropout schedules); weights, optimizer state, data and the epoch sums stay as they are."""
        self._need_model()
        if not 0.0 <= rate < 1.0:
            raise UsageError(f"dropout rate {rate} is outside [0, 1)")
        spec = with_dropout(self.spec, float(rate))
        self._respec(spec, float(rate))
        self.spec = spec

    def _respec(self, spec: ModelSpec, rate: float) -> None:
        """Run the model as ``spec`` from now on: the same tensors, only stateless settings differ
        (today: dropout rates). Backends that trace or compile the spec drop their compiled steps."""
        raise UsageError(f"backend '{self.name}' cannot change the dropout rate during a run")

    def capture_points(self) -> list[str]:
        """Names ``forward(capture=...)`` accepts: every Group and Residual of the spec."""
        self._need_model()
        return [l.name for l in iter_layers(self.spec.layers) if isinstance(l, (Group, Residual))]

    def forward(
        self, x: np.ndarray, train: bool = False, capture: Sequence[str] = (), dropout: bool = True
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits for a float32 NCHW batch, and the NCHW outputs of the named capture points.

        ``train=True`` uses batch statistics in BN (and updates running stats);
        ``dropout=False`` disables dropout even in train mode (for parity checks).
        """
        self._need_model()
        valid = self.capture_points()
        unknown = [c for c in capture if c not in valid]
        if unknown:
            raise UsageError(f"unknown capture point '{unknown[0]}'; valid: {', '.join(valid)}")
        x = np.asarray(x, np.float32)
        if self.image_layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        logits, caps = self._forward(np.ascontiguousarray(x), train, tuple(capture), dropout)
        out = {}
        for k in capture:
            v = np.asarray(caps[k], np.float32)
            out[k] = np.ascontiguousarray(v.transpose(0, 3, 1, 2)) if v.ndim == 4 and self.image_layout == "NHWC" else v
        return np.asarray(logits, np.float32), out

    # ----- optimizer -------------------------------------------------------------------
    def configure_optimizer(self, opt: OptimConfig) -> None:
        self._need_model()
        if opt.name not in OPT_SLOTS:
            raise UsageError(f"unknown optimizer '{opt.name}'; valid: {', '.join(sorted(OPT_SLOTS))}")
        self.opt = opt
        self._configure_optimizer(opt)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """``<param>.<slot>`` (canonical layout) for every slot the optimizer holds, and ``step``."""
        self._need_optimizer()
        slots, step = self._get_optimizer_state()
        out = {k: self._canonical(k.rpartition(".")[0], v) for k, v in slots.items()}
        out["step"] = np.asarray(float(step), np.float32)
        return out

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        self._need_optimizer()
        check_optimizer_state(state, self.spec, self.opt.name)
        slots = {k: self._internal(k.rpartition(".")[0], v) for k, v in state.items() if k != "step"}
        self._set_optimizer_state(slots, int(round(float(np.asarray(state["step"])))))

    # ----- one step, phase by phase (bench's per-batch detail) ---------------------------
    def phase_step(self, start: int, stop: int, lr: float, momentum: float,
                   clock=time.perf_counter) -> dict[str, float]:
        """One optimizer step on order[start:stop], as ``train_step`` would take it, run as the
        ``STEP_PHASES`` with the device blocked at each boundary; returns seconds per phase.

        data = gather, crop, flip and normalise the batch; forward = the model and the loss;
        backward = the gradients; optimizer = the update of the parameters and optimizer state.
        Each phase ends when its outputs are computed (``_block``: a device synchronize, ``mx.eval``
        of the outputs, ``block_until_ready``), so the clock covers the work, not its dispatch.
        The weights and the optimizer move as in ``train_step``; the epoch sums do not. The split
        costs what a fused step saves (kernel fusion across phases, compiled whole-step graphs):
        bench reports the sum beside the fused step time.
        """
        self._need_optimizer()
        carry: object = (start, stop)
        times: dict[str, float] = {}
        self.synchronize()
        t0 = clock()
        for phase in STEP_PHASES:
            if phase == "optimizer":
                done, carry = self._step_update(carry, lr, momentum)
            else:
                done, carry = getattr(self, f"_step_{phase}")(carry)
            self._block(done)
            t1 = clock()
            times[phase] = t1 - t0
            t0 = t1
        return times

    def can_time_phases(self) -> bool:
        """True when this backend implements the ``_step_*`` primitives of ``phase_step``."""
        return type(self)._step_forward is not Backend._step_forward

    # The primitives of phase_step: each returns (outputs that end the phase, what the next one needs).
    def _step_data(self, rows: tuple[int, int]):
        """(start, stop) -> the device batch (x, y), normalised and augmented as ``train_step`` does."""
        raise UsageError(f"backend '{self.name}' cannot time the phases of a step")

    def _step_forward(self, batch):
        """(x, y) -> train-mode logits and the loss, kept for the backward pass."""
        raise UsageError(f"backend '{self.name}' cannot time the phases of a step")

    def _step_backward(self, held):
        """The forward's results -> the gradients."""
        raise UsageError(f"backend '{self.name}' cannot time the phases of a step")

    def _step_update(self, grads, lr: float, momentum: float):
        """The gradients -> one optimizer step (its outputs: the new parameters and state)."""
        raise UsageError(f"backend '{self.name}' cannot time the phases of a step")

    def _block(self, outputs) -> None:
        """Wait until ``outputs`` are computed. Eager backends wait for the device queue; lazy ones
        (MLX, JAX) override this to evaluate exactly these outputs."""
        self.synchronize()

    # ----- evaluation ------------------------------------------------------------------
    def predict(self, split: str, batch_size: int) -> np.ndarray:
        """Eval-mode logits (float32, (N, classes)) for a whole split set with ``set_data``."""
        self._need_model()
        if batch_size < 1:
            raise UsageError(f"batch size must be positive, got {batch_size}")
        return np.asarray(self._predict(split, batch_size), np.float32)

    # ----- weight averaging (this default goes through state dicts) ------------------------
    def lookahead(self, decay: float | None) -> None:
        """Lookahead / EMA over all canonical tensors (parameters and BN statistics).

        ``decay=None`` (re)starts: the current weights become the slow copy. Otherwise
        ``slow += (1 - decay) * (current - slow)``, then the model continues from ``slow``
        (``decay=1`` simply loads the slow weights). Optimizer state is left alone.
        """
        current = self.state_dict()
        if decay is None or getattr(self, "_slow_weights", None) is None:
            self._slow_weights = {k: np.array(v, np.float32, copy=True) for k, v in current.items()}
            return
        for k, v in current.items():
            slow = self._slow_weights[k]
            slow += np.float32(1.0 - decay) * (v - slow)  # exact where nothing moved (frozen tensors)
        self.load_state_dict({k: v.copy() for k, v in self._slow_weights.items()})

    def describe(self) -> str:
        """Human-readable device name, e.g. 'torch cuda (NVIDIA H100 80GB HBM3)'."""
        return f"{self.name} {self.device}"

    # ----- layout and guards (shared) ------------------------------------------------------
    def _internal(self, name: str, a: np.ndarray) -> np.ndarray:
        """Canonical -> this backend's layout: a float32 C-contiguous copy (OIHW -> OHWI if asked)."""
        a = np.asarray(a, np.float32)
        if self.weight_layout == "OHWI" and name in self._conv_weights:
            a = a.transpose(0, 2, 3, 1)
        return np.array(a, np.float32, order="C", copy=True)

    def _canonical(self, name: str, a) -> np.ndarray:
        a = np.asarray(a, np.float32)
        if self.weight_layout == "OHWI" and name in self._conv_weights:
            a = a.transpose(0, 3, 1, 2)
        return np.array(a, np.float32, order="C", copy=True)

    def _need_model(self) -> None:
        if self.spec is None:
            raise UsageError("build() must be called before using the model")

    def _need_optimizer(self) -> None:
        if self.opt is None:
            raise UsageError("configure_optimizer() must be called before training")

    # ----- primitives: what a backend implements --------------------------------------------
    @abc.abstractmethod
    def _build(self, spec: ModelSpec) -> None:
        """Create the model for ``self.spec`` (weights follow through ``_set_tensors``)."""

    @abc.abstractmethod
    def _get_tensors(self) -> dict[str, np.ndarray]:
        """Every parameter and buffer by canonical name, in ``weight_layout``, as NumPy-convertible arrays."""

    @abc.abstractmethod
    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        """Load validated float32 arrays (``weight_layout``) for every parameter and buffer."""

    @abc.abstractmethod
    def _forward(self, x: np.ndarray, train: bool, capture: tuple[str, ...], dropout: bool):
        """(logits, {capture point: output}) for a float32 batch in ``image_layout``."""

    @abc.abstractmethod
    def _configure_optimizer(self, opt: OptimConfig) -> None: ...

    @abc.abstractmethod
    def _get_optimizer_state(self) -> tuple[dict[str, np.ndarray], int]:
        """({"<param>.<slot>": array in ``weight_layout``}, optimizer steps taken)."""

    @abc.abstractmethod
    def _set_optimizer_state(self, slots: dict[str, np.ndarray], step: int) -> None:
        """Load validated slots (absent ones: as before a parameter's first step) and the step count."""

    @abc.abstractmethod
    def set_data(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        """Move a whole split (uint8 NHWC, int64 labels) to the device, once."""

    @abc.abstractmethod
    def begin_epoch(self, order: np.ndarray, offsets: np.ndarray | None, flips: np.ndarray | None, seed: int) -> None:
        """Upload this epoch's order/augmentation draws; reseed dropout from ``seed``; zero the epoch stats."""

    @abc.abstractmethod
    def train_step(self, start: int, stop: int, lr: float, momentum: float) -> None:
        """One optimizer step on samples order[start:stop] of split "train".

        Must not synchronise with the host: loss and correct counts accumulate on the device.
        """

    @abc.abstractmethod
    def end_epoch(self) -> EpochStats:
        """Synchronise and return the accumulated training statistics of this epoch."""

    def running_stats(self) -> EpochStats | None:
        """This epoch's statistics so far, without resetting them (for progress inside an epoch).

        It synchronises with the device, so the engine calls it only every few steps or seconds,
        never per step. Every bundled backend implements it; a backend that cannot read its sums
        mid-epoch returns None (progress then shows speed and ETA without loss and accuracy).
        """
        return None

    @abc.abstractmethod
    def _predict(self, split: str, batch_size: int) -> np.ndarray:
        """Eval-mode logits for a split given to ``set_data`` (batch_size already checked)."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Block until all queued device work is done (called before reading a clock)."""
