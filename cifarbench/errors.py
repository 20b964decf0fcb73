"""Errors that the CLI turns into one-line messages and exit codes (DESIGN.md: exit codes)."""

from __future__ import annotations

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


class CifarbenchError(Exception):
    """Base error: a message for the user, an optional hint, and the exit code."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class UsageError(CifarbenchError):
    """Bad name, bad value, bad combination of options."""

    exit_code = EXIT_USAGE


class BackendUnavailable(CifarbenchError):
    """The backend or device cannot run on this machine."""

    exit_code = EXIT_UNAVAILABLE


class DataError(CifarbenchError):
    """A data set is missing, truncated, malformed or cannot be downloaded."""


class CheckpointError(CifarbenchError):
    """A checkpoint is missing, corrupt, or belongs to another model or class count."""


def closest(name: str, valid, n: int = 1) -> list[str]:
    """The valid names nearest to a misspelt one (``resnt18`` -> ``resnet18``), best first."""
    import difflib

    valid = [str(v) for v in valid]
    lowered = {v.lower(): v for v in valid}
    return [lowered[m] for m in difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.6)]


def did_you_mean(name: str, valid) -> str:
    """" (did you mean 'x'?)" when a valid name is close, else ''."""
    near = closest(name, valid)
    return f" (did you mean '{near[0]}'?)" if near else ""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> UsageError:
    """The standard error for an unknown model/backend/dataset/... name, with the closest valid one."""
    near = closest(name, valid)
    hint = f"did you mean '{near[0]}'?" if near else None
    return UsageError(f"unknown {kind} '{name}'; valid: {', '.join(sorted(valid))}", hint=hint)
