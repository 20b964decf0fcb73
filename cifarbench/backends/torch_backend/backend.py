"""TorchBackend: the Backend contract on PyTorch (CUDA, MPS, CPU)."""

from __future__ import annotations

import contextlib
import platform
import sys

import numpy as np
import torch
import torch.nn.functional as F

from cifarbench.backends.base import Backend, EpochStats, OptimConfig, TrainOptions
from cifarbench.backends.torch_backend.data import DeviceData
from cifarbench.backends.torch_backend.net import Dropper, SpecNet, canonical_tensors
from cifarbench.backends.torch_backend.optim import export_state, import_state, make_optimizer, set_hyper
from cifarbench.models.spec import ModuleSpec
from cifarbench.errors import UsageError
from cifarbench.models.spec import ModelSpec

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
    trains_on_ranks = True

    @classmethod
    def probe(cls) -> dict[str, str | None]:
        cuda = None
        if not torch.cuda.is_available():
            cuda = "torch.cuda.is_available() is False: no NVIDIA GPU/driver or a CPU-only torch build"
        return {"cuda": cuda, "mps": _mps_reason(), "cpu": None}

    @classmethod
    def for_rank(cls, env, device: str, options: TrainOptions, seed: int) -> "TorchBackend":
        from cifarbench.backends.torch_backend.distributed import DistributedTorchBackend

        return DistributedTorchBackend(device, options, seed, env)

    @classmethod
    def check_usable(cls, device: str, precision: str) -> None:
        super().check_usable(device, precision)
        if precision == "fp16" and device == "cpu":
            raise UsageError("--precision fp16 needs a GPU (cuda or mps); on the CPU use bf16 or fp32")

    def __init__(self, device: str, options: TrainOptions, seed: int = 0):
        super().__init__(device, options, seed)
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
        self._net: SpecNet | None = None
        self._call = None  # the (maybe compiled) module used on the fast paths
        self._tensors: dict[str, torch.Tensor] = {}
        self._optimizer: torch.optim.Optimizer | None = None
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
        self._need_model()
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
    def _build(self, spec: ModelSpec) -> None:
        net = (spec.build_module() if isinstance(spec, ModuleSpec) else SpecNet(spec, self._dropper)).to(self._dev)
        # torchvision's nn.Dropout/StochasticDepth draw from the global RNG: reseed it per epoch
        self._dropper.use_global_rng = self._compile or isinstance(spec, ModuleSpec)
        if self._channels_last:
            net = net.to(memory_format=torch.channels_last)
        self._net = net
        self._tensors = canonical_tensors(net)
        self._names = list(spec.param_shapes()) + list(spec.buffer_shapes())
        assert set(self._tensors) == set(self._names), "builder and spec disagree on tensor names"
        self._call = torch.compile(net, mode=self._compile_mode) if self._compile else net
        self._optimizer = None

    def _respec(self, spec: ModelSpec, rate: float) -> None:
        net = self._require_model()
        if isinstance(spec, ModuleSpec):  # another library's module: its own dropout modules
            for m in net.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = rate
        else:  # the walker reads each layer's p from the plan (torch.compile re-traces on the new plan)
            net._spec_layers = spec.layers

    def _get_tensors(self) -> dict[str, np.ndarray]:
        return {name: _to_numpy(t) for name, t in self._tensors.items()}

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, arr in tensors.items():
                self._tensors[name].copy_(torch.from_numpy(arr))

    def capture_points(self) -> list[str]:
        return list(self.spec.points) if isinstance(self.spec, ModuleSpec) else super().capture_points()

    def _forward(self, x: np.ndarray, train: bool, capture: tuple[str, ...], dropout: bool):
        net = self._net
        xt = torch.from_numpy(x).to(self._dev)
        if self._channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        self._set_mode(train)
        store: dict[str, torch.Tensor] | None = {} if capture else None
        self._dropper.enabled = dropout
        try:
            with torch.no_grad(), self._autocast():
                logits = self.spec.forward_capturing(net, xt, capture, store) if isinstance(self.spec, ModuleSpec) else net(xt, store)
        finally:
            self._dropper.enabled = True
        caps = {name: _to_numpy(store[name]) for name in capture} if store is not None else {}
        return _to_numpy(logits), caps

    # ----- optimizer -------------------------------------------------------------------
    def _configure_optimizer(self, opt: OptimConfig) -> None:
        names = list(self.spec.param_shapes())
        params = [self._tensors[name] for name in names]
        # Muon's Newton-Schulz through torch.compile where the step is compiled on a GPU (CPU: eager)
        self._optimizer = make_optimizer(params, opt, self._dev, names=names,
                                         compile_ns=self._compile and self._dev.type == "cuda")
        self._param_names = {p: name for name, p in zip(names, params)}
        self._params_by_name = dict(zip(names, params))
        self._scaler = torch.amp.GradScaler(self._dev.type) if self._amp_dtype == torch.float16 else None
        self._steps = 0

    def _get_optimizer_state(self) -> tuple[dict[str, np.ndarray], int]:
        return export_state(self._optimizer, self.opt.name, self._param_names, self._steps)

    def _set_optimizer_state(self, slots: dict[str, np.ndarray], step: int) -> None:
        import_state(self._optimizer, self.opt.name, self._params_by_name, slots, step)
        self._steps = step

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
        self._need_optimizer()
        optimizer = self._optimizer
        lo, hi = self._rows(start, stop)
        x, y = self._data.train_batch(lo, hi)
        set_hyper(optimizer, self.opt.name, lr, momentum, self._steps)
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

    # phase_step's primitives (base.py): train_step's body, cut at the phase boundaries
    def _step_data(self, rows):
        batch = self._data.train_batch(*self._rows(*rows))
        return batch, batch

    def _step_forward(self, batch):
        x, y = batch
        self._set_mode(True)
        self._optimizer.zero_grad(set_to_none=True)
        self._mark_step()
        with self._autocast():
            _, objective, _ = self._loss(x, y, x.shape[0])
        return objective, objective

    def _step_backward(self, objective):
        (objective if self._scaler is None else self._scaler.scale(objective)).backward()
        return None, None

    def _step_update(self, _grads, lr: float, momentum: float):
        set_hyper(self._optimizer, self.opt.name, lr, momentum, self._steps)
        if self._scaler is not None:
            self._scaler.step(self._optimizer)
            self._scaler.update()
        else:
            self._optimizer.step()
        self._steps += 1
        return None, None

    def end_epoch(self) -> EpochStats:
        stats = self.running_stats()
        self._reset_stats()
        return stats

    def running_stats(self) -> EpochStats:
        """This process's sums so far (under torchrun: this rank's shard; end_epoch all-reduces)."""
        self.synchronize()
        return EpochStats(loss_sum=float(self._loss_sum.item()), correct=int(self._correct.item()), count=self._count)

    def _predict(self, split: str, batch_size: int) -> np.ndarray:
        n = self._data.size(split)
        self._set_mode(False)
        outs = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, n, batch_size):
                outs.append(self._eval_call(self._data.eval_batch(split, start, start + batch_size)))
        if not outs:
            return np.zeros((0, self.spec.num_classes), np.float32)
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
