"""TorchBackend: the Backend contract on PyTorch (CUDA, MPS, CPU)."""

from __future__ import annotations

import contextlib
import platform
import sys
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cifarbench.backends.base import Backend, EpochStats, OptimConfig, TrainOptions
from cifarbench.backends.torch_backend.data import DeviceData
from cifarbench.backends.torch_backend.net import IGNORED_SUFFIXES, Dropper, SpecNet, canonical_tensors
from cifarbench.backends.torch_backend.optim import export_state, import_state, make_optimizer, set_hyper
from cifarbench.errors import BackendUnavailable, CheckpointError, UsageError
from cifarbench.models import tv
from cifarbench.models.spec import Group, ModelSpec, Residual, iter_layers

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# channels_last pays off with cuDNN tensor cores, and oneDNN on the CPU skips its layout reorders
# (cnn training measured ~15-25% faster on a 2-core x86 box); on MPS it is untested, so off.
CHANNELS_LAST_DEFAULT = {"cuda": True, "mps": False, "cpu": True}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def _mps_reason() -> str | None:
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return "MPS needs macOS on Apple silicon"
    if not torch.backends.mps.is_built():
        return "this torch build has no MPS support"
    if not torch.backends.mps.is_available():
        return "torch.backends.mps.is_available() is False (needs macOS 12.3+)"
    return None


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    # always a copy: on the CPU .numpy() shares memory with the live tensor, and a state_dict
    # taken before a step must not change when the step runs
    return np.array(t.detach().float().cpu().numpy(), dtype=np.float32, order="C", copy=True)


class TorchBackend(Backend):
    name = "torch"
    devices = ("cuda", "mps", "cpu")
    supported_precisions = ("fp32", "bf16", "fp16")

    @classmethod
    def probe(cls) -> dict[str, str | None]:
        cuda = None
        if not torch.cuda.is_available():
            cuda = "torch.cuda.is_available() is False: no NVIDIA GPU/driver or a CPU-only torch build"
        return {"cuda": cuda, "mps": _mps_reason(), "cpu": None}

    def __init__(self, device: str, options: TrainOptions, seed: int = 0):
        super().__init__(device, options, seed)
        if device not in self.devices:
            raise UsageError(f"backend 'torch' has no device '{device}'; valid: {', '.join(self.devices)}")
        reason = self.probe()[device]
        if reason is not None:
            raise BackendUnavailable(f"torch device '{device}' is not available: {reason}")
        if options.precision not in AMP_DTYPES:
            raise UsageError(f"unknown precision '{options.precision}'; valid: {', '.join(AMP_DTYPES)}")
        if options.precision == "fp16" and device == "cpu":
            raise UsageError("--precision fp16 needs a GPU (cuda or mps); on the CPU use bf16 or fp32")
        self._dev = torch.device(device)
        self._amp_dtype = AMP_DTYPES[options.precision]
        extra = dict(options.extra)
        self._channels_last = bool(extra.get("channels_last", CHANNELS_LAST_DEFAULT[device]))
        self._compile = bool(extra.get("compile", False))
        self._compile_mode = str(extra.get("compile_mode") or "default")
        if self._compile_mode not in COMPILE_MODES:
            raise UsageError(f"unknown compile mode '{self._compile_mode}'; valid: {', '.join(COMPILE_MODES)}")
        # reduce-overhead and max-autotune replay CUDA graphs, whose outputs the next replay overwrites
        self._cudagraphs = self._compile and self._compile_mode != "default" and device == "cuda"
        if extra.get("threads") and device == "cpu":  # None/0 keep torch's default (one per core)
            torch.set_num_threads(int(extra["threads"]))
        if device == "cuda":
            torch.backends.cudnn.benchmark = not extra.get("deterministic", False)
            torch.backends.cudnn.deterministic = bool(extra.get("deterministic", False))
            # fp32 means fp32: TF32 would break the 1e-4 parity contract unless asked for
            torch.backends.cudnn.allow_tf32 = bool(extra.get("tf32", False))
            torch.backends.cuda.matmul.allow_tf32 = bool(extra.get("tf32", False))
        self._dropper = Dropper(self._dev, use_global_rng=self._compile)
        self._dropper.seed(seed)
        self._data = DeviceData(self._dev, options, self._channels_last)
        self._spec: ModelSpec | None = None
        self._net: SpecNet | None = None
        self._call = None  # the (maybe compiled) module used on the fast paths
        self._tensors: dict[str, torch.Tensor] = {}
        self._optimizer: torch.optim.Optimizer | None = None
        self._opt_name = "sgd"
        self._scaler = None
        self._steps = 0
        self._reset_stats()

    # ----- helpers ---------------------------------------------------------------------
    def _autocast(self):
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._dev.type, dtype=self._amp_dtype)

    def _mark_step(self) -> None:
        if self._cudagraphs:  # a new iteration: earlier graph outputs may now be overwritten
            torch.compiler.cudagraph_mark_step_begin()

    def _eval_call(self, x: torch.Tensor) -> torch.Tensor:
        """Eval logits as float32 that outlive the next call (CUDA-graph outputs are reused buffers)."""
        self._mark_step()
        out = self._call(x).float()
        return out.clone() if self._cudagraphs else out

    def _require_model(self) -> SpecNet:
        if self._net is None:
            raise UsageError("build() must be called before using the model")
        return self._net

    def _set_mode(self, train: bool) -> None:
        net = self._require_model()
        if net.training != train:
            net.train(train)

    def _reset_stats(self) -> None:
        self._loss_sum = torch.zeros((), dtype=torch.float32, device=self._dev)
        self._correct = torch.zeros((), dtype=torch.int64, device=self._dev)
        self._count = 0

    # ----- model -----------------------------------------------------------------------
    def build(self, spec: ModelSpec, state: dict[str, np.ndarray]) -> None:
        net = (spec.build_module() if tv.is_tv_spec(spec) else SpecNet(spec, self._dropper)).to(self._dev)
        # torchvision's nn.Dropout/StochasticDepth draw from the global RNG: reseed it per epoch
        self._dropper.use_global_rng = self._compile or tv.is_tv_spec(spec)
        if self._channels_last:
            net = net.to(memory_format=torch.channels_last)
        self._spec, self._net = spec, net
        self._tensors = canonical_tensors(net)
        self._names = list(spec.param_shapes()) + list(spec.buffer_shapes())
        assert set(self._tensors) == set(self._names), "builder and spec disagree on tensor names"
        self.load_state_dict(state)
        self._call = torch.compile(net, mode=self._compile_mode) if self._compile else net
        self._optimizer = None

    def state_dict(self) -> dict[str, np.ndarray]:
        self._require_model()
        return {name: _to_numpy(self._tensors[name]) for name in self._names}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._require_model()
        given = {k for k in state if not k.endswith(IGNORED_SUFFIXES)}
        missing = [k for k in self._names if k not in given]
        extra = sorted(given - set(self._names))
        if missing or extra:
            what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
            counts = f"{len(missing)} missing, {len(extra)} unexpected"
            raise CheckpointError(f"weights do not fit model '{self._spec.name}': {what} ({counts})")
        with torch.no_grad():
            for name in self._names:
                target = self._tensors[name]
                arr = np.asarray(state[name], dtype=np.float32)
                if tuple(arr.shape) != tuple(target.shape):
                    raise CheckpointError(f"{name}: shape {arr.shape} does not fit the model's {tuple(target.shape)}")
                target.copy_(torch.from_numpy(arr))

    def capture_points(self) -> list[str]:
        spec = self._spec
        if tv.is_tv_spec(spec):
            return list(spec.points)
        return [] if spec is None else [l.name for l in iter_layers(spec.layers) if isinstance(l, (Group, Residual))]

    def forward(
        self, x: np.ndarray, train: bool = False, capture: Sequence[str] = (), dropout: bool = True
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        net = self._require_model()
        unknown = [c for c in capture if c not in self.capture_points()]
        if unknown:
            raise UsageError(f"unknown capture point '{unknown[0]}'; valid: {', '.join(self.capture_points())}")
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self._dev)
        if self._channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        self._set_mode(train)
        store: dict[str, torch.Tensor] | None = {} if capture else None
        self._dropper.enabled = dropout
        try:
            with torch.no_grad(), self._autocast():
                logits = tv.forward_capturing(net, xt, capture, store) if tv.is_tv_spec(self._spec) else net(xt, store)
        finally:
            self._dropper.enabled = True
        caps = {name: _to_numpy(store[name]) for name in capture} if store is not None else {}
        return _to_numpy(logits), caps

    # ----- optimizer -------------------------------------------------------------------
    def configure_optimizer(self, opt: OptimConfig) -> None:
        self._require_model()
        params = [self._tensors[name] for name in self._spec.param_shapes()]
        self._optimizer = make_optimizer(params, opt, self._dev, names=list(self._spec.param_shapes()))
        self._opt_name = opt.name
        self._param_names = {p: name for name, p in zip(self._spec.param_shapes(), params)}
        self._params_by_name = dict(zip(self._spec.param_shapes(), params))
        self._scaler = torch.amp.GradScaler(self._dev.type) if self._amp_dtype == torch.float16 else None
        self._steps = 0

    def _require_optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            raise UsageError("configure_optimizer() must be called before training")
        return self._optimizer

    def optimizer_state(self) -> dict[str, np.ndarray]:
        return export_state(self._require_optimizer(), self._opt_name, self._param_names, self._steps)

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        self._steps = import_state(self._require_optimizer(), self._opt_name, self._params_by_name, state)

    # ----- data and steps --------------------------------------------------------------
    def set_data(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        self._data.set_split(split, x, y)

    def begin_epoch(self, order: np.ndarray, offsets: np.ndarray | None, flips: np.ndarray | None, seed: int) -> None:
        self._data.begin_epoch(order, offsets, flips)
        self._dropper.seed(seed)
        self._reset_stats()

    def _rows(self, start: int, stop: int) -> tuple[int, int]:
        """The samples of order[start:stop] this process trains on (all of them here)."""
        return start, stop

    def _loss(self, x: torch.Tensor, y: torch.Tensor, global_batch: int):
        """(logits, objective to backpropagate, summed loss of these samples), inside autocast."""
        logits = self._call(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.options.label_smoothing)
        return logits, loss, loss.detach() * x.shape[0]

    def train_step(self, start: int, stop: int, lr: float, momentum: float) -> None:
        optimizer = self._require_optimizer()
        lo, hi = self._rows(start, stop)
        x, y = self._data.train_batch(lo, hi)
        set_hyper(optimizer, self._opt_name, lr, momentum)
        self._set_mode(True)
        optimizer.zero_grad(set_to_none=True)
        self._mark_step()
        with self._autocast():
            logits, objective, loss_sum = self._loss(x, y, stop - start)
        if self._scaler is not None:
            self._scaler.scale(objective).backward()
            self._scaler.step(optimizer)
            self._scaler.update()
        else:
            objective.backward()
            optimizer.step()
        with torch.no_grad():  # accumulate on the device: no host sync per step
            self._loss_sum += loss_sum
            self._correct += (logits.detach().argmax(dim=1) == y).sum()
        self._count += hi - lo
        self._steps += 1

    def end_epoch(self) -> EpochStats:
        self.synchronize()
        stats = EpochStats(loss_sum=float(self._loss_sum.item()), correct=int(self._correct.item()), count=self._count)
        self._reset_stats()
        return stats

    def predict(self, split: str, batch_size: int) -> np.ndarray:
        self._require_model()
        if batch_size < 1:
            raise UsageError(f"batch size must be positive, got {batch_size}")
        n = self._data.size(split)
        self._set_mode(False)
        outs = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, n, batch_size):
                outs.append(self._eval_call(self._data.eval_batch(split, start, start + batch_size)))
        if not outs:
            return np.zeros((0, self._spec.num_classes), np.float32)
        return _to_numpy(torch.cat(outs))

    def lookahead(self, decay: float | None) -> None:
        """Base-class semantics, done in place on the device (no host copies, no sync)."""
        self._require_model()
        live = [self._tensors[name] for name in self._names]
        slow = getattr(self, "_slow_weights", None)
        with torch.no_grad():
            if decay is None or slow is None:
                self._slow_weights = [t.detach().clone() for t in live]
                return
            torch._foreach_lerp_(slow, live, 1.0 - float(decay))
            torch._foreach_copy_(live, slow)

    def synchronize(self) -> None:
        if self._dev.type == "cuda":
            torch.cuda.synchronize(self._dev)
        elif self._dev.type == "mps":
            torch.mps.synchronize()

    def describe(self) -> str:
        version = torch.__version__.split("+")[0]
        if self._dev.type == "cuda":
            return f"torch {version} cuda ({torch.cuda.get_device_name(self._dev)})"
        if self._dev.type == "mps":
            return f"torch {version} mps (Apple {platform.machine()})"
        return f"torch {version} cpu ({torch.get_num_threads()} threads)"
