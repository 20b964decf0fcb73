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
torchvision's RandomCrop before Normalize).

Loss: mean softmax cross-entropy with label smoothing eps, PyTorch semantics
``(1 - eps) * nll + eps * mean_c(-log p_c)``.

Optimizers follow torch.optim exactly: SGD (momentum buffer initialised to the first
gradient, dampening 0, nesterov, L2 weight decay added to the gradient), Adam (L2 decay added
to the gradient, bias-corrected), AdamW (decoupled decay ``p -= lr * wd * p`` before the
update, bias-corrected). Weight decay applies to every parameter. The engine passes lr and
momentum (SGD momentum, or beta1 for Adam/AdamW) to every ``train_step``. ``OptimConfig.scales``
gives named parameters their own lr and weight-decay factors (torch param groups: lr * f_lr,
weight_decay * f_wd). Tensors the spec freezes (``buffer_shapes()``) are never optimised.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Sequence

import numpy as np

from cifarbench.models.spec import ModelSpec

Precision = Literal["fp32", "bf16", "fp16"]


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

    def scale_of(self, name: str) -> tuple[float, float]:
        return next(((lr, wd) for n, lr, wd in self.scales if n == name), (1.0, 1.0))


@dataclass(frozen=True)
class TrainOptions:
    mean: tuple[float, ...] = (0.0,)  # per channel, in [0, 1] pixel units
    std: tuple[float, ...] = (1.0,)
    label_smoothing: float = 0.0
    crop_pad: int = 0  # 0 = no random crop
    flip: bool = False
    precision: Precision = "fp32"
    extra: dict = field(default_factory=dict)  # backend-specific knobs (e.g. {"compile": True})


@dataclass
class EpochStats:
    loss_sum: float  # sum over samples of the per-sample training loss
    correct: int
    count: int


class Backend(abc.ABC):
    """One framework on one device. Subclasses set ``name`` and ``devices``."""

    name: ClassVar[str]
    devices: ClassVar[tuple[str, ...]]
    supported_precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    # ----- discovery -------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def probe(cls) -> dict[str, str | None]:
        """device -> None when usable here, else the reason it is not (one line)."""

    @classmethod
    def auto_device(cls) -> str:
        """The best usable device, in ``devices`` order of preference."""
        avail = cls.probe()
        for dev in cls.devices:
            if avail.get(dev) is None:
                return dev
        return cls.devices[-1]

    def __init__(self, device: str, options: TrainOptions, seed: int = 0):
        self.device = device
        self.options = options
        self.seed = seed

    # ----- model -----------------------------------------------------------------------
    @abc.abstractmethod
    def build(self, spec: ModelSpec, state: dict[str, np.ndarray]) -> None:
        """Instantiate the model from the spec, with these canonical weights and buffers."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, np.ndarray]:
        """Canonical parameters and buffers, float32 NumPy."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...

    @abc.abstractmethod
    def forward(
        self, x: np.ndarray, train: bool = False, capture: Sequence[str] = (), dropout: bool = True
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits for a float32 NCHW batch, and the NCHW outputs of the named capture points.

        ``train=True`` uses batch statistics in BN (and updates running stats);
        ``dropout=False`` disables dropout even in train mode (for parity checks).
        """

    # ----- optimizer -------------------------------------------------------------------
    @abc.abstractmethod
    def configure_optimizer(self, opt: OptimConfig) -> None: ...

    @abc.abstractmethod
    def optimizer_state(self) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None: ...

    # ----- data and steps --------------------------------------------------------------
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

    @abc.abstractmethod
    def predict(self, split: str, batch_size: int) -> np.ndarray:
        """Eval-mode logits (float32, (N, classes)) for a whole split set with ``set_data``."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Block until all queued device work is done (called before reading a clock)."""

    # ----- weight averaging (optional; this default goes through state dicts) -------------
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
