"""The model registry: ``register_model`` + ``create_spec`` (after timm's create_model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cifarbench.errors import UsageError, unknown_name
from cifarbench.models import tv
from cifarbench.models.shapes import SpecShapeError, output_shape
from cifarbench.models.spec import BatchNorm, Conv, Linear, ModelSpec

Builder = Callable[[int, int, int], ModelSpec]  # (in_channels, image_size, num_classes) -> spec


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Builder
    description: str
    origin: str  # which seed project it comes from, or "cifarbench"
    requires: str | None = None  # the one backend that can run it (None: every backend)
    # its home recipes in configs/: key "default", a data set, a schedule or "dataset/sched" -> recipe name
    recipes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Namespace:
    """A family of models known by prefix (``tv:NAME``), built by its own module."""

    prefix: str
    requires: str | None  # the backend its models need
    check: Callable[[str], None]  # raises for an unknown or unusable name
    spec: Callable[[str, int, int, int], ModelSpec]
    init: Callable[[ModelSpec, int], dict]
    listing: Callable[[], tuple[list[str] | None, str]]  # its names (None: not installed) and a one-line note


NAMESPACES: tuple[Namespace, ...] = (
    Namespace(tv.PREFIX, "torch", tv.check_tv_name, tv.torchvision_spec, tv.initial_state, tv.listing),
)


def namespace_of(name: str) -> Namespace | None:
    return next((ns for ns in NAMESPACES if name.startswith(ns.prefix)), None)


def check_runs_on(model: str, backend: str) -> None:
    """Before any data is loaded: the model is known and the backend can run it (one line, exit 2)."""
    ns = namespace_of(model)
    if ns is None:
        _ensure_zoo()
        if model not in _MODELS:
            raise unknown_name("model", model, list(_MODELS))
        need = _MODELS[model].requires
    else:
        need = ns.requires
    if need is not None and backend != need:
        raise UsageError(f"{model} runs on the {need} backend only, not '{backend}' (use --backend {need})")
    if ns is not None:
        ns.check(model)


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, origin: str = "cifarbench", recipes: dict[str, str] | None = None):
    """``recipes``: the bundled configs this model trains with by default (see config.home_recipe)."""

    def deco(fn: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = ModelEntry(name, fn, description, origin, recipes=dict(recipes or {}))
        return fn

    return deco


def model_recipes(name: str) -> dict[str, str]:
    """A model's home-recipe table (empty for unknown names and namespaces such as tv:)."""
    _ensure_zoo()
    entry = _MODELS.get(name)
    return dict(entry.recipes) if entry else {}


def _ensure_zoo() -> None:
    # Importing the zoo modules runs their @register_model decorators.
    from cifarbench.models import zoo  # noqa: F401


def list_models() -> list[ModelEntry]:
    _ensure_zoo()
    return [_MODELS[k] for k in sorted(_MODELS)]


def model_names() -> list[str]:
    return [m.name for m in list_models()]


def create_spec(name: str, in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> ModelSpec:
    _ensure_zoo()
    ns = namespace_of(name)
    if name not in _MODELS and ns is None:
        raise unknown_name("model", name, list(_MODELS))
    if in_channels not in (1, 3):
        raise UsageError(f"in_channels must be 1 or 3, got {in_channels}")
    if num_classes < 2:
        raise UsageError(f"num_classes must be at least 2, got {num_classes}")
    if ns is not None:  # e.g. torchvision's modules, known by name and tensor shapes only
        return ns.spec(name, in_channels, image_size, num_classes)
    builder = _MODELS[name].builder
    try:
        spec = builder(in_channels, image_size, num_classes)
        output_shape(spec)
    except SpecShapeError as exc:
        smallest = smallest_image_size(builder, in_channels, num_classes)
        if smallest is None or smallest <= image_size:
            raise  # not a size problem: a builder bug
        raise UsageError(f"model '{name}' needs images of at least {smallest}x{smallest} pixels; "
                         f"these are {image_size}x{image_size} ({exc})") from None
    return spec


def smallest_image_size(builder: Builder, in_channels: int, num_classes: int, largest: int = 1024) -> int | None:
    """The smallest square input whose shapes fit through every layer (pure shape inference)."""
    for size in range(1, largest + 1):
        try:
            output_shape(builder(in_channels, size, num_classes))
        except SpecShapeError:
            continue
        return size
    return None


def init_params(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial weights and buffers in canonical layout, float32, the same on every backend.

    Conv and linear layers use PyTorch's default init (kaiming-uniform with a=sqrt(5), i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias); BN starts at weight 1, bias 0,
    running mean 0, running var 1. Drawing them once here (rather than in each framework) makes
    a run start from the same point whichever backend trains it.
    """
    ns = namespace_of(spec.name)
    if ns is not None and not spec.layers:  # a namespace's own init (torchvision's), seeded
        return ns.init(spec, seed)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for layer in spec.param_layers():
        if isinstance(layer, BatchNorm):
            out[f"{layer.name}.weight"] = np.ones(layer.ch, np.float32)
            out[f"{layer.name}.bias"] = np.zeros(layer.ch, np.float32)
            out[f"{layer.name}.running_mean"] = np.zeros(layer.ch, np.float32)
            out[f"{layer.name}.running_var"] = np.ones(layer.ch, np.float32)
            continue
        if isinstance(layer, Conv):
            wshape = (layer.cout, layer.cin, layer.k, layer.k)
            fan_in = layer.cin * layer.k * layer.k
            nbias = layer.cout
        else:
            assert isinstance(layer, Linear)
            wshape = (layer.fout, layer.fin)
            fan_in = layer.fin
            nbias = layer.fout
        bound = 1.0 / np.sqrt(fan_in)
        out[f"{layer.name}.weight"] = rng.uniform(-bound, bound, wshape).astype(np.float32)
        if layer.bias:
            out[f"{layer.name}.bias"] = rng.uniform(-bound, bound, nbias).astype(np.float32)
    return out
