"""The backend registry: names -> "module:Class" strings, loaded on first use.

Built-in backends are registered through the same path third parties use: the
``cifarbench.backends`` entry-point group (value "module:Class"). Nothing here imports a
framework until a backend is asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata

from cifarbench.errors import BackendUnavailable, UsageError, unknown_name


BUILTIN: dict[str, str] = {
    "torch": "cifarbench.backends.torch_backend:TorchBackend",
    "mlx": "cifarbench.backends.mlx_backend:MLXBackend",
    "numpy": "cifarbench.backends.numpy_backend:NumpyBackend",
    "cupy": "cifarbench.backends.numpy_backend:CupyBackend",
}

# The seed projects' short names: `--backend cuda` means PyTorch on CUDA.
ALIASES: dict[str, tuple[str, str]] = {"cpu": ("torch", "cpu"), "cuda": ("torch", "cuda"), "mps": ("torch", "mps")}

INSTALL_HINT: dict[str, str] = {
    "torch": "pip install 'cifarbench[torch]'",
    "mlx": "pip install 'cifarbench[mlx]'",
    "numpy": "pip install numpy",
    "cupy": "pip install 'cifarbench[cupy]' (needs an NVIDIA GPU)",
    "jax": "pip install 'cifarbench[jax]' (NVIDIA: pip install 'jax[cuda12]')",
}


def registered() -> dict[str, str]:
    """name -> "module:Class", built-ins first, then entry points (which may override)."""
    found = dict(BUILTIN)
    try:
        eps = metadata.entry_points(group="cifarbench.backends")
    except Exception:  # broken metadata must not break the CLI
        eps = ()
    for ep in eps:
        found[ep.name] = ep.value
    return found


def backend_names() -> list[str]:
    return sorted(registered())


def resolve(name: str, device: str | None) -> tuple[str, str | None]:
    """Apply the short aliases: ('cuda', None) -> ('torch', 'cuda')."""
    if name in ALIASES and name not in registered():
        alias_backend, alias_device = ALIASES[name]
        if device not in (None, "auto", alias_device):
            raise UsageError(f"--backend {name} means torch on {alias_device}; it conflicts with --device {device}")
        return alias_backend, alias_device
    return name, device


def load_backend_class(name: str):
    """Import and return the backend class; BackendUnavailable if its framework is missing."""
    reg = registered()
    if name not in reg:
        raise unknown_name("backend", name, list(reg) + list(ALIASES))
    module_name, _, attr = reg[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend '{name}' cannot load: {exc}", hint=INSTALL_HINT.get(name, "install its framework")
        ) from None
    return getattr(module, attr)


@dataclass
class Availability:
    backend: str
    device: str
    available: bool
    reason: str


def availability_matrix() -> list[Availability]:
    """Every backend x device with yes/no and the reason (never raises)."""
    rows: list[Availability] = []
    for name in backend_names():
        try:
            cls = load_backend_class(name)
            probe = cls.probe()
        except Exception as exc:  # a broken plugin is reported, not fatal
            reason = exc.message if hasattr(exc, "message") else f"{type(exc).__name__}: {exc}"
            rows.append(Availability(name, "-", False, reason))
            continue
        for dev in cls.devices:
            why = probe.get(dev)
            rows.append(Availability(name, dev, why is None, why or "ok"))
    return rows


def create_backend(name: str, device: str | None, options, seed: int = 0):
    """Resolve aliases and instantiate (``Backend.__init__`` checks device and precision once).
    Raises with exit code 3 when unusable."""
    name, device = resolve(name, device)
    cls = load_backend_class(name)
    return cls(cls.auto_device() if device in (None, "auto") else device, options, seed)


def check_distributed(name: str, device: str | None):
    """The backend class, if it trains on torchrun ranks; else the one-line refusal (before any data loads)."""
    name, device = resolve(name, device)
    cls = load_backend_class(name)
    if not cls.trains_on_ranks:
        raise UsageError(
            f"multi-process training (torchrun) needs --backend torch; backend '{name}' trains in one process",
            hint=f"run `cifarbench train --backend {name} ...` without torchrun",
        )
    return cls


def create_distributed(env, name: str, device: str | None, options, seed: int = 0):
    """The backend on this rank of a torchrun job (``env``: backends.ranks.DistEnv)."""
    cls = check_distributed(name, device)
    device = resolve(name, device)[1]
    return cls.for_rank(env, cls.auto_device() if device in (None, "auto") else device, options, seed)
