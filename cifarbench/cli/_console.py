"""Where output goes: stdout carries data, stderr carries progress and messages."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

err_console = Console(stderr=True)
out_console = Console()


def print_json(obj: Any) -> None:
    from cifarbench.atomic import json_default

    sys.stdout.write(json.dumps(obj, indent=2, default=json_default) + "\n")
    sys.stdout.flush()


def plain(value: Any) -> str:
    """Text that reaches rich as itself: '[cupy]' and '[cpu]' are pip extras, not markup."""
    from rich.markup import escape

    return escape(str(value))


def warn(message: str) -> None:
    """A warning: the message is plain text (escaped here)."""
    err_console.print(f"[yellow]warning:[/] {plain(message)}", highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """A line on stderr; rich markup is honoured, so callers pass ``plain(...)`` around any text they quote."""
    err_console.print(message, highlight=False, soft_wrap=True)


def print_wide(renderable: Any, console: Console | None = None, width: int = 160) -> None:
    """Print a table; a pipe or CI log gets at least ``width`` columns instead of rich's 80,
    which would cut paths, checksums and numbers."""
    console = console or out_console
    if not console.is_terminal:
        console = Console(file=console.file, width=max(console.width, width), stderr=console.stderr)
    console.print(renderable)
