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
    # allow_inf_nan=False: inf/nan in any float field (--warmup-epochs inf, --lr nan) is refused here,
    # not found later as an OverflowError in the schedule or a NaN run
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # what
    model: str = Field("cnn", description="registered model name (cifarbench models)")
    dataset: str = Field("cifar10", description="cifar10, cifar100, mnist, fashion-mnist, synthetic, npz:PATH")
    data_dir: Optional[str] = Field(None, description="dataset cache (default: $CIFARBENCH_DATA or the user cache dir)")
    val_split: int = Field(0, ge=0, description="training images held out (seeded) for validation; 0 = evaluate on test")
    # where
    backend: str = Field("torch", description="torch, mlx, numpy, cupy, jax (or cpu/cuda/mps = torch on that device)")
    device: str = Field("auto", description="backend device; auto picks the fastest available")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="float32, or bfloat16/float16 mixed precision")
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
    epochs: int = Field(30, ge=1, description="passes over the training set")
    batch_size: int = Field(64, ge=1, description="training images per optimizer step")
    eval_batch_size: int = Field(1000, ge=1, description="images per evaluation batch (no effect on results)")
    opt: Literal["sgd", "adam", "adamw", "muon"] = Field(
        "adamw", description="optimizer (torch.optim semantics); muon: Muon for the conv filters, nesterov SGD for the rest")
    lr: float = Field(3e-4, gt=0, description="base lr; the peak lr for onecycle")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (onecycle cycles it: see max_momentum)")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD)")
    weight_decay: float = Field(0.01, ge=0, description="L2 (SGD, Adam) or decoupled (AdamW) weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW beta1, beta2")
    sched: Literal["constant", "step", "cosine", "linear", "onecycle", "triangle"] = Field(
        "constant", description="learning-rate schedule, per step"
    )
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up from warmup_start_factor*lr (not onecycle)")
    warmup_start_factor: float = Field(0.0, ge=0, le=1, description="warm-up (and triangle) starts at this factor x lr")
    min_lr: float = Field(0.0, ge=0, description="floor of cosine/step")
    step_epochs: list[int] = Field(default_factory=list, description="step schedule: epochs where lr *= step_gamma")
    step_gamma: float = Field(0.1, gt=0, description="step schedule: lr factor at each of step_epochs")
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
    cycle_momentum: bool = Field(True, description="onecycle: cycle momentum inversely to lr")
    base_momentum: float = Field(0.85, ge=0, lt=1, description="onecycle: the momentum (SGD) or beta1 (Adam/AdamW) at the lr peak")
    max_momentum: float = Field(
        0.95, ge=0, lt=1, description="onecycle: the momentum (SGD) or beta1 (Adam/AdamW) at the start and end; as "
        "torch's OneCycleLR, it replaces the optimizer's own momentum/beta1"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy")
    dropout_rate: Optional[float] = Field(
        None, ge=0, lt=1, description="drop probability of every Dropout layer (unset: the model's own)"
    )
    dropout_schedule: Literal["none", "linear_decay", "cosine_decay", "adaptive"] = Field(
        "none", description="definfo's dynamic dropout, per epoch, one epoch behind (see README)"
    )
    min_dropout: float = Field(0.1, ge=0, lt=1, description="dropout schedules: the lowest rate")
    max_dropout: float = Field(0.7, ge=0, lt=1, description="dropout schedules: the highest rate")
    dropout_patience: int = Field(5, ge=1, description="adaptive dropout: epochs without a better accuracy before raising it")
    # data handling
    augment: list[Literal["crop", "flip"]] = Field(default_factory=list, description="training augmentation")
    crop_pad: int = Field(4, ge=0, description="random crop: zero padding in pixels on each side")
    flip_mode: Literal["random", "alternate"] = Field(
        "random", description="alternate: epoch 0 random per image, then each image flips opposite to its previous epoch"
    )
    normalize: Literal["dataset", "half", "none", "imagenet"] = Field(
        "dataset", description="dataset: per-channel mean/std of the train set; half: (x-0.5)/0.5; none: x/255; "
        "imagenet: ImageNet's mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225)"
    )
    image_size: Optional[int] = Field(
        None, ge=8, le=1024, description="resize every batch on the device (bilinear) to this many pixels a side; "
        "the data stay at their own size on the host; unset: the data set's size"
    )
    crop_pct: float = Field(
        1.0, gt=0, le=1, description="with image_size: resize to image_size/crop_pct, then centre-crop image_size "
        "(timm's crop_pct; menzHSE's fine-tuning resized to 256 and cropped 224: 0.875)"
    )
    pretrained: bool = Field(
        False, description="start from torchvision's published ImageNet weights (resnet18/34/50-imagenet), "
        "downloaded once and sha256-checked; the classifier head is new"
    )
    # run
    seed: int = Field(0, description="seeds the initial weights, data order, augmentation and subsets")
    output: Optional[str] = Field(None, description="run directory (default runs/<model>-<dataset>-<time>)")
    save_every: int = Field(1, ge=1, description="write the checkpoint every N epochs (always at the end)")
    keep_checkpoints: int = Field(
        1, ge=1, description="checkpoint generations kept: the newest K, plus best/ (highest validation accuracy) with val_split")
    # smoke runs and limits: the schedules follow the capped length
    max_steps: Optional[int] = Field(
        None, ge=1, description="stop after N optimizer steps in all (the last epoch may be partial)"
    )
    limit_train: Optional[int] = Field(
        None, ge=1, description="train on a seeded, class-stratified subset of N training images"
    )
    limit_eval: Optional[int] = Field(
        None, ge=1, description="evaluate (each epoch and the final test) on seeded, class-stratified subsets of N images"
    )
    # experiment trackers (sinks of the progress events; each is an optional extra, see README)
    logger: list[Literal["tensorboard", "mlflow", "wandb", "csv"]] = Field(
        default_factory=list, description="experiment trackers: scalars per step and epoch, the config as "
        "hyper-parameters, written inside the run directory"
    )

    @field_validator("augment", "logger", mode="before")
    @classmethod
    def _split_augment(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p.strip() for p in v.replace("+", ",").split(",") if p.strip() and p.strip() != "none"]
        return v

    @field_validator("logger")
    @classmethod
    def _once_each(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))  # --logger csv --logger csv,tensorboard: each tracker once, in order

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if self.loader == "mlx-data" and self.backend != "mlx":
            raise ValueError("loader 'mlx-data' needs backend 'mlx'")
        if self.compile is False and self.compile_mode != "default":
            raise ValueError(f"compile_mode '{self.compile_mode}' needs compile (drop --no-compile)")
        if any(e < 0 for e in self.step_epochs):
            raise ValueError("step_epochs must be >= 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {tuple(self.betas)}")
        if self.crop_pct != 1.0 and not self.image_size:
            raise ValueError("crop_pct needs image_size (it crops the resized batch)")
        if self.min_dropout > self.max_dropout:
            raise ValueError(f"min_dropout {self.min_dropout} is above max_dropout {self.max_dropout}")
        return self


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return f"'{v}'" if isinstance(v, str) else str(v)


def _reason(err: dict[str, Any]) -> str:
    """One pydantic error in our words (pydantic's own text only for the rare kinds not listed)."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    limits = {"greater_than_equal": ("at least", "ge"), "greater_than": ("greater than", "gt"),
              "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}
    if kind in limits:
        words, key = limits[kind]
        return f"must be {words} {_value(ctx.get(key))}, got {got if isinstance(got, str) else _value(got)}"
    if kind == "literal_error":
        from cifarbench.errors import did_you_mean

        choices = [c.strip().strip("'") for c in str(ctx.get("expected", "")).replace(" or ", ", ").split(",")]
        return f"must be one of {', '.join(choices)}, got {_value(got)}" + did_you_mean(str(got), choices)
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number, got {_value(got)}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, got {_value(got)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {_value(got)}"
    if kind in ("string_type",):
        return f"must be text, got {_value(got)}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, got {_value(got)}"
    if kind == "missing":
        return "has too few values" if len(err["loc"]) > 1 else "is missing a value"
    if kind in ("too_short", "too_long"):
        return f"needs {ctx.get('min_length', ctx.get('max_length'))} values"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return str(err["msg"]).removeprefix("Value error, ")


def _where(loc: tuple, source: str) -> str:
    """The flag (--batch-size) or the YAML key (batch_size) an error is about; list items and tuple
    slots (betas.1) are reported on their field."""
    field = str(loc[0]) if loc else ""
    if not field:
        return ""
    return "--" + field.replace("_", "-") if source == "option" else field


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    """One line naming each bad flag (``--batch-size``) or YAML key (and the file), and why."""
    parts, seen = [], set()
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            from cifarbench.errors import did_you_mean

            key = str(loc[0]) if loc else "?"
            parts.append(f"unknown key '{key}'" + did_you_mean(key, list(RunConfig.model_fields)))
            continue
        where = _where(loc, source)
        if (where, err["type"]) in seen:  # betas.0 and betas.1 both missing: say it once
            continue
        seen.add((where, err["type"]))
        parts.append(f"{where}: {_reason(err)}" if where else _reason(err))
    prefix = "" if source == "option" else f"{source}: "
    return prefix + "; ".join(parts)


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


def home_recipe(model: str, sched: str | None = None, dataset: str | None = None) -> str | None:
    """The bundled recipe a model trains with when no ``-c`` is given: its registry entry's
    ``recipes`` table, looked up most specific first (``dataset/sched``, ``dataset``, ``sched``,
    ``default``). ``cifarbench train resnet18 --scheduler onecycle`` is thus mike7seven's recipe."""
    from cifarbench.models.registry import model_recipes

    table = model_recipes(model)
    ds = (dataset or "").lower()
    for key in (f"{ds}/{sched}" if ds and sched else None, ds or None, sched, "default"):
        if key and key in table:
            return table[key]
    return None


def resolve_config(config_file: str | None = None, overrides: dict[str, Any] | None = None,
                   home: bool = False) -> tuple[RunConfig, dict[str, str]]:
    """defaults < the model's home recipe (``home=True`` and no file) < file < flags, and where
    each value came from (field -> "flag", "file PATH", "model default (NAME)" or "default").
    Raises UsageError (exit 2) naming the field and the reason."""
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    source = "config"
    if config_file:
        path = find_config(config_file)
        values.update(load_yaml(path))
        source = f"config {path}"
        sources.update({k: f"file {path}" for k in values})
    elif home:
        name = home_recipe(flags.get("model", RunConfig.model_fields["model"].default), flags.get("sched"),
                           flags.get("dataset"))
        if name:
            path = find_config(name)
            values.update(load_yaml(path))
            source = f"config {path}"
            sources.update({k: f"model default ({name})" for k in values})
    try:
        RunConfig(**values)  # report file errors as file errors
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, source)) from None
    values.update(flags)
    sources.update({k: "flag" for k in flags})
    try:
        cfg = RunConfig(**values)
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, "option")) from None
    return cfg, {k: sources.get(k, "default") for k in RunConfig.model_fields}


def build_config(config_file: str | None = None, overrides: dict[str, Any] | None = None,
                 home: bool = False) -> RunConfig:
    """defaults < (home recipe) < file < flags; raises UsageError (exit 2) naming the field and the reason."""
    return resolve_config(config_file, overrides, home)[0]


def dump_config_sources(cfg: RunConfig, sources: dict[str, str]) -> str:
    """The resolved config as YAML, each key commented with where its value came from
    (loads back to the same config: comments are ignored)."""
    lines = []
    for line in dump_config(cfg).splitlines():
        key = line.split(":", 1)[0] if line and not line.startswith((" ", "-")) else None
        lines.append(f"{line}  # {sources[key]}" if key in sources else line)
    return "\n".join(lines) + "\n"


def recipe_line(cfg: RunConfig, sources: dict[str, str]) -> str:
    """The resolved recipe in one line, for the start of a run."""
    origin = next((v for v in sources.values() if v.startswith(("model default", "file"))), "defaults")
    opt = f"{cfg.opt} lr {cfg.lr:g}"
    if cfg.opt == "sgd":
        opt += f" momentum {cfg.momentum:g}" + (" nesterov" if cfg.nesterov else "")
    parts = [f"{cfg.model} on {cfg.dataset}", opt, f"wd {cfg.weight_decay:g}", f"{cfg.sched} schedule",
             f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} of batch {cfg.batch_size}", f"augment {'+'.join(cfg.augment) or 'none'}",
             f"normalize {cfg.normalize}"]
    if cfg.image_size:
        parts.append(f"resize to {cfg.image_size} px" + (f" (crop_pct {cfg.crop_pct:g})" if cfg.crop_pct != 1 else ""))
    if cfg.pretrained:
        parts.append("ImageNet weights")
    return "recipe: " + ", ".join(parts) + f" ({origin}; flags override)"


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
