"""The `cifarbench` command. Errors become one-line messages and exit codes here, in one place.

Subcommands live one per module and add themselves through ``register(app)``; a module
imports its heavy dependencies inside its command functions so `cifarbench --help` stays fast
and imports no framework.
"""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x vendors its own click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as _click_exc

from cifarbench import __version__
from cifarbench.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, CifarbenchError

SUBCOMMAND_MODULES = (
    "train_cmd", "test_cmd", "bench_cmd", "fingerprint_cmd", "info_cmd", "data_cmd", "plot_cmd", "import_cmd",
    "results_cmd", "report_cmd", "export_cmd",
)

_state = {"debug": False}


def show_error(message: str, hint: str | None = None) -> None:
    """The one place errors are printed: ``error: message`` and an optional hint, on stderr."""
    from rich.markup import escape

    from cifarbench.cli._console import err_console

    # escape: messages quote user input and pip extras like 'pkg[extra]', which are not markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, markup=True)
    if hint:
        err_console.print(f"[dim]hint: {escape(hint)}[/]", highlight=False, soft_wrap=True)


class _Group(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CifarbenchError as exc:
            if _state["debug"]:
                raise
            show_error(exc.message, exc.hint)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # a full disk, a read-only folder...: one line naming the file
            if _state["debug"]:
                raise
            from cifarbench.paths import describe_os_error

            show_error(describe_os_error(exc))
            raise typer.Exit(EXIT_RUNTIME) from None
        except (_click_exc.ClickException, typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt as exc:  # 130, or 128 + the signal that stopped a run (143: SIGTERM)
            raise typer.Exit(getattr(exc, "exit_code", EXIT_INTERRUPTED)) from None
        except Exception as exc:  # unexpected: still no traceback unless --debug
            if _state["debug"]:
                raise
            show_error(f"internal error: {type(exc).__name__}: {exc}", "rerun with --debug for the traceback")
            raise typer.Exit(EXIT_RUNTIME) from None


app = typer.Typer(
    cls=_Group,
    name="cifarbench",
    help="Train, test and benchmark CIFAR-10/100 and MNIST classifiers on PyTorch, MLX and NumPy/CuPy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cifarbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


for _name in SUBCOMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"cifarbench.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a subcommand not written yet must not break the others
        if _exc.name != f"cifarbench.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="cifarbench")
    except KeyboardInterrupt as exc:
        sys.exit(getattr(exc, "exit_code", EXIT_INTERRUPTED))
