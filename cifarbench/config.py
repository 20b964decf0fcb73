"""The run configuration: one pydantic model, loaded from YAML, overridden by flags.

Precedence is flag > config file > defaults (DESIGN.md). Unknown keys are errors
(``extra="forbid"``) so a typo in a recipe never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cifarbench.errors import UsageError



class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # what
    model: str = Field("cnn", description="registered model name (cifarbench models)")
    dataset: str = Field("cifar10", description="cifar10, cifar100, mnist, fashion-mnist, synthetic, npz:PATH")
    data_dir: Optional[str] = Field(None, description="dataset cache (default: $CIFARBENCH_DATA or the user cache dir)")
    val_split: int = Field(0, ge=0, description="training images held out (seeded) for validation; 0 = evaluate on test")
    # where
    backend: str = Field("torch", description="torch, mlx, numpy, cupy, jax (or cpu/cuda/mps = torch on that device)")
    device: str = Field("auto", description="backend device; auto picks the fastest available")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: Optional[bool] = Field(
        None, description="compile the step (torch.compile, mx.compile); unset: the backend's default (MLX on, torch off)"
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default", description="torch.compile mode: reduce-overhead = CUDA graphs (small nets), max-autotune = "
        "Triton autotuning + CUDA graphs (longest warm-up); a mode other than default turns compile on"
    )
    loader: Literal["memory", "mlx-data"] = Field("memory", description="input pipeline (mlx-data: MLX backend only)")
    memory_limit: Optional[float] = Field(None, gt=0, description="MLX memory limit in GB")
    threads: Optional[int] = Field(
        None, ge=1, description="CPU threads (torch intra-op, NumPy's BLAS); unset: the framework's default"
    )
    # recipe
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    opt: Literal["sgd", "adam", "adamw", "muon"] = Field(
        "adamw", description="muon: Muon for the conv filters, nesterov SGD for the other parameters")
    lr: float = Field(3e-4, gt=0, description="base lr; the peak lr for onecycle")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (the top momentum when cycling)")
    nesterov: bool = False
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    sched: Literal["constant", "step", "cosine", "onecycle", "triangle", "linear"] = Field(
        "constant", description="linear: lr * (1 - step / total steps), after any warm-up")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from warmup_start_factor*lr (not onecycle)")
    warmup_start_factor: float = Field(0.0, ge=0, le=1)
    min_lr: float = Field(0.0, ge=0, description="floor of cosine/step")
    step_epochs: list[int] = Field(default_factory=list, description="step schedule: epochs where lr *= step_gamma")
    step_gamma: float = Field(0.1, gt=0)
    pct_start: float = Field(0.3, gt=0, lt=1, description="onecycle: fraction of steps rising")
    div_factor: float = Field(25.0, gt=0, description="onecycle: initial lr = lr / div_factor")
    final_div_factor: float = Field(1e4, gt=0, description="onecycle: final lr = initial / final_div_factor")
    final_lr_factor: float = Field(
        0.0, ge=0, description="triangle: lr rises from warmup_start_factor*lr to lr over pct_start of the steps, "
        "then falls linearly to final_lr_factor*lr"
    )
    bn_bias_lr_scale: float = Field(
        1.0, gt=0, description="lr multiplier for BatchNorm biases; their weight decay is divided by it, so the "
        "decay per step is unchanged (airbench's 64)"
    )
    head_lr_scale: float = Field(
        1.0, gt=0, description="lr multiplier for the Linear layers' weights; their weight decay is divided by it"
    )
    muon_lr: float = Field(0.24, gt=0, description="opt muon: the conv filters' lr where the schedule is at lr "
                           "(it follows the schedule: filter lr = muon_lr * scheduled lr / lr)")
    muon_momentum: float = Field(0.6, ge=0, lt=1, description="opt muon: the filters' nesterov momentum (fixed)")
    whiten_bias_epochs: float = Field(
        0.0, ge=0, description="the patch-whitening conv's bias: its lr decays linearly to 0 over these epochs, "
        "then it is frozen; 0 = it trains for the whole run"
    )
    lookahead_every: int = Field(0, ge=0, description="lookahead: every N steps pull toward slow weights; 0 = off")
    lookahead_decay: float = Field(
        0.95**5, ge=0, le=1, description="lookahead: slow weight kept per update, ramped by (step/total)^3; "
        "the run ends on the slow weights"
    )
    tta: int = Field(0, ge=0, le=2, description="test-time augmentation of the final test: 0 none, 1 mirror, "
                     "2 mirror + 1-pixel translations")
    cycle_momentum: bool = True
    base_momentum: float = Field(0.85, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # data handling
    augment: list[Literal["crop", "flip"]] = Field(default_factory=list, description="training augmentation")
    crop_pad: int = Field(4, ge=0)
    flip_mode: Literal["random", "alternate"] = Field(
        "random", description="alternate: epoch 0 random per image, then each image flips opposite to its previous epoch"
    )
    normalize: Literal["dataset", "half", "none"] = Field(
        "dataset", description="dataset: per-channel mean/std of the train set; half: (x-0.5)/0.5; none: x/255"
    )
    # run
    seed: int = 0
    output: Optional[str] = Field(None, description="run directory (default runs/<model>-<dataset>-<time>)")
    save_every: int = Field(1, ge=1, description="write the checkpoint every N epochs (always at the end)")

    @field_validator("augment", mode="before")
    @classmethod
    def _split_augment(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p for p in v.replace("+", ",").split(",") if p and p != "none"]
        return v

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if self.loader == "mlx-data" and self.backend != "mlx":
            raise ValueError("loader 'mlx-data' needs backend 'mlx'")
        if self.compile is False and self.compile_mode != "default":
            raise ValueError(f"compile_mode '{self.compile_mode}' needs compile (drop --no-compile)")
        if any(e < 0 for e in self.step_epochs):
            raise ValueError("step_epochs must be >= 0")
        return self


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """One line: which field, and why."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"--{loc.replace('_', '-')}: {msg}" if source == "option" else f"{loc}: {msg}")
    return f"invalid {source}: " + "; ".join(parts)


def find_config(name_or_path: str) -> Path:
    """A path, or the name of a bundled recipe (``resnet18-onecycle``)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    for base in _config_dirs():
        for candidate in (base / name_or_path, base / f"{name_or_path}.yaml"):
            if candidate.is_file():
                return candidate
    names = sorted(c.stem for d in _config_dirs() for c in d.glob("*.yaml"))
    raise UsageError(f"config '{name_or_path}' not found; bundled: {', '.join(names) or '(none)'}")


def _config_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    return [d for d in (here.parent / "configs", here / "_configs") if d.is_dir()]


def list_configs() -> list[tuple[str, str, Path]]:
    """(name, one-line description, path) of each bundled recipe; description = first comment line."""
    seen: dict[str, tuple[str, str, Path]] = {}
    for d in _config_dirs():
        for path in sorted(d.glob("*.yaml")):
            if path.stem in seen:
                continue
            first = next((ln for ln in path.read_text().splitlines() if ln.startswith("#")), "# ")
            seen[path.stem] = (path.stem, first.lstrip("# ").strip(), path)
    return list(seen.values())


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config {path} must be a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """defaults < file < flags; raises UsageError (exit 2) naming the field and the reason."""
    values: dict[str, Any] = {}
    source = "config"
    if config_file:
        path = find_config(config_file)
        values.update(load_yaml(path))
        source = f"config {path}"
    try:
        RunConfig(**values)  # report file errors as file errors
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, source)) from None
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, "option")) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
