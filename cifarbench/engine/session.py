"""One way to get a ready backend: created, model built, optimizer configured.

Training (``Trainer.setup``), the throughput bench, ``cifarbench test`` and ``activations`` all
get their backend here, so a recipe is benchmarked with exactly the initial weights
(``data_init``), parameter groups (``bn_bias_scales``) and options it trains with.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cifarbench.backends import create_backend, resolve
from cifarbench.backends.base import Backend, OptimConfig, TrainOptions
from cifarbench.backends.resize import resize_plan
from cifarbench.errors import UsageError
from cifarbench.config import RunConfig
from cifarbench.engine.tricks import bn_bias_scales, head_scales, muon_scales, whiten_bias_freeze
from cifarbench.engine.whiten import data_init
from cifarbench.models import init_params
from cifarbench.models.registry import check_runs_on
from cifarbench.models.spec import ModelSpec


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's weights.transforms()


def normalization(cfg: RunConfig, ds) -> tuple[tuple[float, ...], tuple[float, ...]]:
    c = ds.channels
    if cfg.normalize == "imagenet":
        if c != 3:
            raise UsageError(f"--normalize imagenet needs RGB images; {cfg.dataset} has {c} channel(s)")
        return IMAGENET_MEAN, IMAGENET_STD
    if cfg.normalize == "half":
        return (0.5,) * c, (0.5,) * c
    if cfg.normalize == "none":
        return (0.0,) * c, (1.0,) * c
    return tuple(ds.mean()), tuple(ds.std())


def augmentation(cfg: RunConfig) -> tuple[int, bool]:
    """(crop padding, flip) of a recipe: what the engine draws per epoch and the backend applies."""
    return (cfg.crop_pad if "crop" in cfg.augment else 0), "flip" in cfg.augment


def train_options(cfg: RunConfig, mean, std, precision: str | None = None) -> TrainOptions:
    """The backend options of a recipe (shared by train and bench, so both run the same thing)."""
    extra: dict[str, Any] = {"loader": cfg.loader}
    if cfg.compile is not None:  # unset: each backend's own default
        extra["compile"] = cfg.compile
    if cfg.compile_mode != "default":  # asking for a mode asks for compilation
        extra["compile"], extra["compile_mode"] = True, cfg.compile_mode
    if cfg.memory_limit:
        extra["memory_limit_gb"] = cfg.memory_limit
    if cfg.threads is not None:  # unset: the framework's default (one thread per core)
        extra["threads"] = cfg.threads
    crop_pad, flip = augmentation(cfg)
    return TrainOptions(
        mean=tuple(mean), std=tuple(std), label_smoothing=cfg.label_smoothing, crop_pad=crop_pad, flip=flip,
        resize=resize_plan(cfg.image_size, cfg.crop_pct), precision=precision or cfg.precision, extra=extra,
    )


def optim_config(cfg: RunConfig, spec: ModelSpec, train_images: int | None = None) -> OptimConfig:
    """The recipe's optimizer: param groups (BN biases, head, Muon filters) and, given the training
    set size, the whitening bias's freeze (it needs the steps per epoch)."""
    scales = bn_bias_scales(spec, cfg.bn_bias_lr_scale) + head_scales(spec, cfg.head_lr_scale)
    if cfg.opt == "muon":
        scales += muon_scales(spec, cfg.muon_lr, cfg.lr)
    frozen = ()
    if train_images:
        frozen = whiten_bias_freeze(spec, cfg.whiten_bias_epochs, -(-train_images // cfg.batch_size))
    return OptimConfig(cfg.opt, cfg.momentum, cfg.nesterov, cfg.weight_decay, tuple(cfg.betas),
                       scales=scales, frozen_after=frozen, muon_momentum=cfg.muon_momentum)


def initial_state(cfg: RunConfig, spec: ModelSpec, x_train: np.ndarray, mean: Sequence[float],
                  std: Sequence[float]) -> dict[str, np.ndarray]:
    """init_params, then the convs set from the data (dirac / patch whitening, speedrun): every backend alike."""
    return data_init(spec, init_params(spec, cfg.seed), x_train, mean, std)


def open_backend(backend: str, device: str | None, options: TrainOptions, seed: int, spec: ModelSpec,
                 state: dict[str, np.ndarray], opt: OptimConfig | None = None,
                 opt_state: dict[str, np.ndarray] | None = None, dist=None) -> Backend:
    """Create the backend (on this torchrun rank when ``dist``), build ``spec`` with ``state``, and
    configure the optimizer (and its saved state) when ``opt`` is given."""
    check_runs_on(spec.name, resolve(backend, device)[0])
    if dist is not None:
        from cifarbench.backends import create_distributed

        b = create_distributed(dist, backend, device, options, seed)
    else:
        b = create_backend(backend, device, options, seed)
    b.build(spec, state)
    if opt is not None:
        b.configure_optimizer(opt)
        if opt_state is not None:
            b.load_optimizer_state(opt_state)
    return b


def training_backend(cfg: RunConfig, spec: ModelSpec, options: TrainOptions, x_train: np.ndarray,
                     state: dict[str, np.ndarray] | None = None, opt_state: dict[str, np.ndarray] | None = None,
                     dist=None) -> Backend:
    """A backend ready to train ``cfg`` (fresh weights from the data unless ``state`` resumes a run)."""
    if state is None:
        state = initial_state(cfg, spec, x_train, options.mean, options.std)
    return open_backend(cfg.backend, cfg.device, options, cfg.seed, spec, state, optim_config(cfg, spec, len(x_train)),
                        opt_state, dist)


def eval_backend(backend: str, device: str | None, spec: ModelSpec, state: dict[str, np.ndarray],
                 mean: Sequence[float], std: Sequence[float], seed: int = 0, threads: int | None = None,
                 resize: Sequence[int] | None = None) -> Backend:
    """A backend holding checkpoint weights for evaluation (no optimizer); ``resize`` as it trained."""
    options = TrainOptions(mean=tuple(mean), std=tuple(std), extra={} if threads is None else {"threads": threads},
                           resize=tuple(int(v) for v in resize) if resize else None)
    return open_backend(backend, device, options, seed, spec, state)
