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


_METAVARS = {"int": "N", "int range": "N", "float": "X", "float range": "X", "str": "TEXT", "path": "PATH",
             "Path": "PATH", "bool": ""}


def _metavar(param, ctx) -> str:
    """One plain style: switches show nothing, values N / X / TEXT / PATH / a|b, arguments their NAME."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if getattr(param, "param_type_name", "") == "argument":
        return (param.name or "arg").upper() + ("..." if param.nargs != 1 else "")
    try:
        label = param.display_type(ctx).strip("<>")
    except Exception:  # noqa: BLE001 - a help screen must not fail over a label
        return "TEXT"
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    if "," in label:  # a tuple
        return " ".join(_METAVARS.get(p, p.upper()) for p in label.split(","))
    return _METAVARS.get(label, label if "|" in label else label.upper())


def _plain_metavars(command) -> None:
    """Typer's default metavars are a mix (``<str>``, ``{checkpoint}``, ``<bool>`` on switches,
    ``<list[Path]>``); give every parameter without an explicit one the plain style above. Wraps
    ``get_params`` because click adds --help (and typer the completion options) only when asked."""
    orig = command.get_params

    def get_params(ctx):
        params = orig(ctx)
        for param in params:
            if param.metavar is None:
                param.metavar = _metavar(param, ctx)
            if getattr(param, "param_type_name", "") == "argument":  # click's usage style: NAME, [NAME]
                usage = param.metavar if param.required else f"[{param.metavar}]"
                param._usage_display_name = lambda usage=usage: usage
                param.display_type_rich = lambda ctx: None
        return params

    command.get_params = get_params
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub)


class _Group(TyperGroup):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _plain_metavars(self)

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
    add_completion=True,
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
