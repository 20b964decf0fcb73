"""RunConfig's fields as command-line flags, derived in this one place.

Every field of ``RunConfig`` becomes a kebab-case option of ``train`` (and of ``bench``, less the
matrix axes bench spells as comma lists): its type picks the parser (Literal -> a choice list,
bool -> ``--x/--no-x``, list/tuple -> comma-separated values), its ``description`` is the help
text and its default is shown. A new RunConfig field therefore needs no edit here; only a short
alias (``-b``) or a second name (``--scheduler``) is written below.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import typer

from cifarbench.errors import UsageError

ALIASES: dict[str, tuple[str, ...]] = {
    "model": ("-m",), "batch_size": ("-b",), "sched": ("--scheduler",), "output": ("-o",),
}
PANELS = {  # help sections; a field not named here is part of the recipe
    "Data": ("model", "dataset", "data_dir", "val_split", "augment", "crop_pad", "flip_mode", "normalize",
             "image_size", "crop_pct", "pretrained"),
    "Device": ("backend", "device", "precision", "compile", "compile_mode", "loader", "memory_limit", "threads"),
    "Run": ("seed", "output", "save_every", "max_steps", "limit_train", "limit_eval", "logger"),
}
METAVARS = {int: "N", float: "X", str: "TEXT"}
FIELD_METAVARS = {"output": "DIR", "data_dir": "DIR", "dataset": "NAME", "model": "NAME", "backend": "NAME"}


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class FlagSpec:
    field: str
    annotation: Any  # what typer parses
    parse: Callable[[Any], Any]  # typer's value -> the RunConfig value
    option: Any  # the typer.Option


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _choices(tp: Any) -> tuple[str, ...] | None:
    return tuple(str(v) for v in typing.get_args(tp)) if typing.get_origin(tp) is Literal else None


def _comma_list(elem: Callable[[str], Any], name: str) -> Callable[[Any], Any]:
    def parse(text: Any) -> Any:
        if text is None:
            return None
        parts = [p.strip() for p in str(text).replace("+", ",").split(",") if p.strip() and p.strip() != "none"]
        try:
            return [elem(p) for p in parts]
        except ValueError:
            raise UsageError(f"{flag_name(name)} takes comma-separated values, got '{text}'") from None
    return parse


def _repeated(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A repeatable list flag: every occurrence is a comma list; they add up in order."""
    def parse_all(values: Any) -> Any:
        if values is None:
            return None
        return [v for text in values for v in parse(text)]
    return parse_all


def _default(info) -> Any:
    value = info.get_default(call_default_factory=True)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    return value


IDENTIFIERS = {"torch", "lr", "mlx", "jax", "numpy", "cupy"}  # a description starting with a name keeps its case


def _help(field: str, info) -> str:
    text = (info.description or field.replace("_", " ")).strip()
    first = text.split(" ", 1)[0]
    if first.replace("-", "").isalpha() and first not in IDENTIFIERS:  # 'onecycle: ...', 'cifar10, ...', 'torch.compile' stay
        text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def flag_spec(field: str, info) -> FlagSpec:
    """The typer option of one RunConfig field; its default is the field's (shown in --help), and
    only a value given on the command line overrides the config file (see ``with_recipe_flags``)."""
    tp = _strip_optional(info.annotation)
    origin = typing.get_origin(tp)
    choices = _choices(tp)
    decls = (flag_name(field), *ALIASES.get(field, ()))
    default = _default(info)
    common = dict(help=_help(field, info), show_default=default is not None,
                  rich_help_panel=next((p for p, fs in PANELS.items() if field in fs), "Recipe"))
    if tp is bool:
        name = flag_name(field)[2:]
        decls = (f"--{name}/--no-{name}", *ALIASES.get(field, ()))
        return FlagSpec(field, Optional[bool], lambda v: v, typer.Option(default, *decls, metavar="", **common))
    if choices is not None:  # validated by RunConfig, so a bad value gets our message and the closest choice
        def choice(v, choices=choices):
            return next((c for c in choices if v is not None and c.lower() == str(v).lower()), v)

        return FlagSpec(field, Optional[str], choice,
                        typer.Option(default, *decls, metavar="|".join(choices), autocompletion=_completer(choices),
                                     **common))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        elem_tp = args[0] if args else str
        inner = _choices(elem_tp)
        elem = str if inner is not None else elem_tp
        if inner is not None:
            common["help"] += f" Comma list of {', '.join(inner)} (or none)."
        else:
            common["help"] += f" Comma-separated {'integers' if elem is int else 'numbers' if elem is float else 'values'}."
        if origin is list:  # repeatable too: --logger tensorboard --logger csv == --logger tensorboard,csv
            common["help"] += " Repeatable."
            return FlagSpec(field, Optional[list[str]], _repeated(_comma_list(elem, field)),  # (a default: shown)
                            typer.Option(default.split(","), *decls, metavar="LIST", **common))
        return FlagSpec(field, Optional[str], _comma_list(elem, field),
                        typer.Option(default, *decls, metavar="LIST", **common))
    if tp in (int, float, str):  # text here; RunConfig converts and checks it (our words, the flag named)
        shown = default if not isinstance(default, float) else f"{default:g}"
        return FlagSpec(field, Optional[str], lambda v: v,
                        typer.Option(None if default is None else str(shown), *decls,
                                     metavar=FIELD_METAVARS.get(field, METAVARS[tp]), **common))
    raise TypeError(f"RunConfig.{field}: no flag rule for type {tp!r} (add one in cli/flags.py)")


def _completer(choices: tuple[str, ...]):
    def complete(incomplete: str) -> list[str]:
        return [c for c in choices if c.startswith(incomplete)]
    return complete


def given_on_command_line(ctx, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


@functools.lru_cache(maxsize=None)
def recipe_specs(exclude: tuple[str, ...] = ()) -> tuple[FlagSpec, ...]:
    from cifarbench.config import RunConfig

    return tuple(flag_spec(name, info) for name, info in RunConfig.model_fields.items() if name not in exclude)


def with_recipe_flags(exclude: tuple[str, ...] = ()):
    """Decorate a command taking ``recipe: dict`` so that every RunConfig field (less ``exclude``)
    is one of its options; it receives the given ones (parsed, unset ones left out) in ``recipe``."""
    def decorate(func):
        specs = recipe_specs(tuple(exclude))
        own = [p for p in inspect.signature(func).parameters.values() if p.name != "recipe"]
        clash = {p.name for p in own} & {s.field for s in specs}
        if clash:
            raise TypeError(f"{func.__name__}: options {sorted(clash)} are RunConfig fields; exclude them")
        added = [inspect.Parameter(s.field, inspect.Parameter.KEYWORD_ONLY, default=s.option, annotation=s.annotation)
                 for s in specs]

        @functools.wraps(func)
        def command(_ctx: typer.Context, **kwargs):
            recipe = {}  # only what the command line gave: flag > config file > defaults
            for s in specs:
                value = kwargs.pop(s.field, None)
                if given_on_command_line(_ctx, s.field):
                    recipe[s.field] = s.parse(value)
            return func(**kwargs, recipe=recipe)

        hints = typing.get_type_hints(func)
        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own]
        positional = [p for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        keyword = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        ctx_param = inspect.Parameter("_ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        params = [ctx_param, *positional, *[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in keyword], *added]
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the signature above, not the function's
        return command
    return decorate
