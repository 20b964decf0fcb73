"""``tv:NAME``: any torchvision classification model, adapted to small images (torch backend only).

The adaptation is mike7seven's for ResNet-18, applied generically: the stem's first conv
becomes a 3x3 stride-1 conv (padding 1) taking ``in_channels``, a max-pool in the stem is
removed, and the head is built for ``num_classes`` (torchvision's ``num_classes=``). These are
nn.Modules, not specs, so they exist only on the PyTorch backend; the engine, checkpoints and
bench see them through a ``TorchvisionSpec`` (tensor names and shapes, capture points), which the
torch backend turns back into the module. torchvision is imported lazily: ``import cifarbench``
never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cifarbench.errors import UsageError, unknown_name
from cifarbench.models.spec import NOT_CANONICAL_SUFFIXES, ModuleSpec

PREFIX = "tv:"
INSTALL_HINT = "pip install 'cifarbench[torchvision]'"
# Models whose training-mode forward returns auxiliary logits too: built without them.
AUX_LOGITS = {"googlenet", "inception_v3"}


def is_tv_name(name: str) -> bool:
    return name.startswith(PREFIX)


def _torchvision(name: str = "NAME") -> Any:
    try:
        import torchvision
    except ImportError:
        raise UsageError(f"tv:{name} needs the torchvision extra ({INSTALL_HINT})") from None
    return torchvision


def list_torchvision_models() -> list[str]:
    """Classification model names torchvision offers ('resnet18', 'vgg11', ...), without the prefix."""
    tv = _torchvision()
    return sorted(tv.models.list_models(module=tv.models))


def _first_conv_and_pool(model: Any) -> tuple[tuple[Any, str, Any] | None, tuple[Any, str, Any] | None]:
    """(parent, attribute, module) of the first Conv2d, and of a MaxPool2d met before the second conv."""
    from torch import nn

    conv = pool = None
    convs_seen = 0
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                convs_seen += 1
                if conv is None:
                    conv = (parent, attr, child)
            elif isinstance(child, nn.MaxPool2d) and pool is None and convs_seen <= 1:
                pool = (parent, attr, child)
            if convs_seen > 1:
                return conv, pool
    return conv, pool


def build_torchvision_model(name: str, in_channels: int, image_size: int, num_classes: int) -> Any:
    """A freshly initialised torchvision model for ``in_channels`` x ``image_size``^2 inputs."""
    from torch import nn

    bare = name[len(PREFIX):] if is_tv_name(name) else name
    tv = _torchvision(bare)
    names = tv.models.list_models(module=tv.models)
    if bare not in names:
        raise unknown_name("torchvision model", bare, names)
    kwargs: dict[str, Any] = {"aux_logits": False, "init_weights": True} if bare in AUX_LOGITS else {}
    try:
        model = tv.models.get_model(bare, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"tv:{bare} cannot be built for {num_classes} classes: {exc}") from None
    conv, pool = _first_conv_and_pool(model)
    if conv is not None:
        parent, attr, old = conv
        stem = nn.Conv2d(in_channels, old.out_channels, 3, stride=1, padding=1, bias=old.bias is not None)
        setattr(parent, attr, stem)
    if pool is not None:
        parent, attr, _ = pool
        setattr(parent, attr, nn.Identity())
    return model


@dataclass(frozen=True)
class TorchvisionSpec(ModuleSpec):
    """A tv: model seen through the spec interface: names and shapes only, no layers.

    ``params``/``buffers`` are the torchvision module's state_dict entries (BN batch counters
    left out), so checkpoints use torchvision's own names. ``points`` are every capture point
    ``forward`` accepts (top-level children, and the children of top-level Sequentials).
    """

    def build_module(self) -> Any:
        return build_torchvision_model(self.name, self.in_channels, self.image_size, self.num_classes)

    def forward_capturing(self, net: Any, x: Any, names: Any, store: dict | None) -> Any:
        """``net(x)``; the outputs of the modules ``names`` go into ``store`` (forward hooks)."""
        if store is None:
            return net(x)
        hooks = [net.get_submodule(n).register_forward_hook(lambda _m, _i, o, n=n: store.__setitem__(n, o)) for n in names]
        try:
            return net(x)
        finally:
            for h in hooks:
                h.remove()


def listing() -> tuple[list[str] | None, str]:
    """The tv: names (None without torchvision) and a one-line note on what they are or how to get them."""
    try:
        names = [PREFIX + n for n in list_torchvision_models()]
    except UsageError:
        return None, f"torchvision models (tv:NAME, torch backend only): install them with {INSTALL_HINT}"
    return names, (f"{len(names)} torchvision models, torch backend only (3x3 stride-1 stem, no stem max-pool, "
                   "new head; models needing big inputs, e.g. ViT, fail on 32 px):")


def check_tv_name(model: str) -> None:
    """torchvision is installed and knows the name (the registry checks the backend: torch only)."""
    bare = model[len(PREFIX):]
    tv = _torchvision(bare)
    names = tv.models.list_models(module=tv.models)
    if bare not in names:
        raise unknown_name("torchvision model", bare, names)


def _candidate_points(model: Any) -> list[tuple[str, Any]]:
    from torch import nn

    out = []
    for name, child in model.named_children():
        out.append((name, child))
        if isinstance(child, nn.Sequential):
            out.extend((f"{name}.{sub}", m) for sub, m in child.named_children())
    return out


def _trace_shapes(model: Any, points: list[tuple[str, Any]], in_channels: int, image_size: int) -> dict[str, tuple]:
    """Per-sample output shape of each point for one input (raises what the model raises)."""
    import torch

    shapes: dict[str, tuple] = {}

    def keep(name: str, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            shapes[name] = tuple(out.shape[1:])

    hooks = [m.register_forward_hook(lambda _m, _i, o, name=name: keep(name, o)) for name, m in points]
    try:
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _shown_points(order: list[str], top: list[str], shapes: dict[str, tuple],
                  params: dict[str, Any]) -> tuple[str, ...]:
    """The (up to) four stage outputs `activations` draws: the last of each run of equal 3-D shape.

    Only points owning parameters count (not bare ReLUs/pools). Top-level children first; when
    there are fewer than four stages there, each top-level Sequential replaced by its children if
    that finds more (VGG's ``features.N``, DenseNet's blocks).
    """

    def stages(names: list[str]) -> list[str]:
        keep = [n for n in names if len(shapes.get(n, ())) == 3 and any(p.startswith(n + ".") for p in params)]
        return [n for i, n in enumerate(keep) if i + 1 == len(keep) or shapes[keep[i + 1]] != shapes[n]]

    chosen = stages(top)
    if len(chosen) < 4:
        parents = {n.split(".")[0] for n in order if "." in n}
        finer = stages([n for n in order if n not in parents])
        chosen = finer if len(finer) > len(chosen) else chosen
    return tuple(chosen[-4:])


def _traced(name: str, in_channels: int, image_size: int, num_classes: int):
    """(model, capture points, their shapes): built on the meta device (no memory, no init cost)
    and, should some op have no meta kernel, again on the CPU before calling the input too small."""
    _torchvision(name[len(PREFIX):] if is_tv_name(name) else name)  # the install hint before torch is needed
    import torch

    error: Exception | None = None
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = build_torchvision_model(name, in_channels, image_size, num_classes)
            points = _candidate_points(model)
            return model, points, _trace_shapes(model, points, in_channels, image_size)
        except UsageError:
            raise
        except Exception as exc:  # e.g. ViT's fixed 224 px, or a feature map shrunk below a kernel
            error = exc
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    raise UsageError(f"{name} cannot run on {in_channels}x{image_size}x{image_size} images: {first}")


def torchvision_spec(name: str, in_channels: int, image_size: int, num_classes: int) -> TorchvisionSpec:
    """Spec for ``tv:NAME``; checks that the adapted model runs on this input size."""
    model, points, shapes = _traced(name, in_channels, image_size, num_classes)
    params = {k: tuple(v.shape) for k, v in model.named_parameters()}
    buffers = {k: tuple(v.shape) for k, v in model.state_dict().items()
               if k not in params and not k.endswith(NOT_CANONICAL_SUFFIXES)}
    order = [n for n, _ in points]
    top = [n for n, _ in model.named_children()]
    return TorchvisionSpec(
        name=name, layers=(), in_channels=in_channels, image_size=image_size, num_classes=num_classes,
        capture_points=_shown_points(order, top, shapes, params), params=tuple(params.items()),
        buffers=tuple(buffers.items()), points=tuple(order),
    )


def initial_state(spec: TorchvisionSpec, seed: int = 0) -> dict[str, Any]:
    """torchvision's own initialisation, drawn from ``seed`` without touching the global RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build_module()
    wanted = {**spec.param_shapes(), **spec.buffer_shapes()}
    return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items() if k in wanted}
