"""The bench matrix: backends x devices x models x precisions x batch sizes.

Combinations that cannot run here are kept, with the reason, as ``skipped`` entries: a bench
table must show what was not measured, not silently drop it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from cifarbench.backends import ALIASES, backend_names, load_backend_class, registered, resolve
from cifarbench.errors import CifarbenchError, unknown_name


@dataclass(frozen=True)
class Case:
    backend: str
    device: str
    model: str
    precision: str
    batch_size: int

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.device}/{self.model}/{self.precision}/bs{self.batch_size}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _skip(backend: str, device: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"backend": backend, "device": device, **extra, "reason": reason}


def _backend_devices(name: str, devices: Sequence[str] | None, skipped: list[dict[str, Any]]) -> tuple[Any, list[str]]:
    """The backend class and the devices to run it on; everything else goes to ``skipped``."""
    try:
        cls = load_backend_class(name)
        probe = cls.probe()
    except CifarbenchError as exc:
        skipped.append(_skip(name, "-", exc.message + (f" ({exc.hint})" if exc.hint else "")))
        return None, []
    except Exception as exc:  # a broken plugin is reported, not fatal
        skipped.append(_skip(name, "-", f"{type(exc).__name__}: {exc}"))
        return None, []
    usable = [d for d in cls.devices if probe.get(d) is None]
    if not devices or list(devices) in (["auto"], ["all"]):
        chosen = usable if devices and devices[0] == "all" else usable[:1]
        skipped.extend(_skip(name, d, probe[d]) for d in cls.devices if probe.get(d) is not None)
        return cls, chosen
    chosen = []
    for dev in devices:
        if dev == "auto":
            chosen.extend(usable[:1])
        elif dev not in cls.devices:
            skipped.append(_skip(name, dev, f"backend '{name}' has no device '{dev}' (it has {', '.join(cls.devices)})"))
        elif probe.get(dev) is not None:
            skipped.append(_skip(name, dev, probe[dev]))
        else:
            chosen.append(dev)
    return cls, list(dict.fromkeys(chosen))


def _requested_backends(backends: Sequence[str] | None, devices: Sequence[str] | None) -> list[tuple[str, list[str] | None]]:
    """Backend names with their device lists; aliases (cuda, mps, cpu) pin the device."""
    if not backends or list(backends) == ["all"]:
        return [(name, list(devices) if devices else None) for name in backend_names()]
    out = []
    for raw in backends:
        if raw not in registered() and raw not in ALIASES:
            raise unknown_name("backend", raw, list(registered()) + list(ALIASES))
        name, dev = resolve(raw, None)
        out.append((name, [dev] if dev else (list(devices) if devices else None)))
    return out


def expand(
    backends: Sequence[str] | None, devices: Sequence[str] | None, models: Sequence[str],
    precisions: Sequence[str], batch_sizes: Sequence[int],
) -> tuple[list[Case], list[dict[str, Any]]]:
    """(cases to run, skipped combinations with reasons)."""
    cases: list[Case] = []
    skipped: list[dict[str, Any]] = []
    for name, devs in _requested_backends(backends, devices):
        cls, chosen = _backend_devices(name, devs, skipped)
        for dev in chosen:
            for prec in precisions:
                if prec not in cls.supported_precisions:
                    skipped.append(_skip(name, dev, f"precision {prec} not supported (has {', '.join(cls.supported_precisions)})",
                                         precision=prec))
                    continue
                for model in models:
                    for bs in batch_sizes:
                        cases.append(Case(name, dev, model, prec, int(bs)))
    return list(dict.fromkeys(cases)), skipped
