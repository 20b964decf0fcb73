"""`cifarbench models` and `cifarbench backends`: what can run, and where."""

from __future__ import annotations

import typer

from cifarbench.cli._console import out_console, plain, print_json

# Input shape and classes of each built-in data set, so listing models needs no data.
DATASET_SHAPES = {
    "cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "cifar100-coarse": (3, 32, 20),
    "mnist": (1, 28, 10), "fashion-mnist": (1, 28, 10), "synthetic": (3, 32, 10),
}


def models(
    dataset: str = typer.Option("cifar10", "--dataset", help="Count parameters for this data set's shape."),
    json_out: bool = typer.Option(False, "--json"),
    summary: str = typer.Option(
        None, "--summary", metavar="NAME",
        help="Per-layer output shape, parameters and forward MACs of one model (from its spec, no framework).",
    ),
) -> None:
    """List the registered models with their parameter counts."""
    from cifarbench.errors import unknown_name
    from cifarbench.models import create_spec, list_models

    if dataset not in DATASET_SHAPES:
        raise unknown_name("dataset", dataset, list(DATASET_SHAPES))
    ch, size, classes = DATASET_SHAPES[dataset]
    if summary is not None:
        from cifarbench.models.summary import render, summarize

        result = summarize(create_spec(summary, ch, size, classes))
        if json_out:
            print_json({"dataset": dataset, **result.as_dict()})
        else:
            out_console.print(render(result, dataset), highlight=False, markup=False, soft_wrap=True)
        return
    rows = []
    for entry in list_models():
        spec = create_spec(entry.name, ch, size, classes)
        rows.append({"name": entry.name, "params": spec.num_params(), "description": entry.description, "origin": entry.origin})
    from cifarbench.models.registry import NAMESPACES

    spaces = {ns.prefix: ns.listing() for ns in NAMESPACES}  # prefix -> (names or None, note)
    if json_out:
        print_json({"dataset": dataset, "models": rows,
                    "namespaces": {p: {"models": names, "note": note} for p, (names, note) in spaces.items()}})
        return
    from rich.table import Table

    table = Table("model", "parameters", "description", "from", title=f"models for {dataset} ({ch}x{size}x{size}, {classes} classes)")
    for r in rows:
        table.add_row(plain(r["name"]), f"{r['params']:,}", plain(r["description"]), plain(r["origin"]))
    out_console.print(table)
    for names, note in spaces.values():
        out_console.print(note, highlight=False, markup=False)
        if names:
            out_console.print(", ".join(names), highlight=False, markup=False)


def backends(json_out: bool = typer.Option(False, "--json")) -> None:
    """Every backend x device: available or not, and why."""
    from cifarbench.backends import availability_matrix

    rows = availability_matrix()
    if json_out:
        print_json([r.__dict__ for r in rows])
        return
    from rich.table import Table

    table = Table("backend", "device", "available", "reason")
    for r in rows:
        table.add_row(plain(r.backend), plain(r.device), "[green]yes[/]" if r.available else "[red]no[/]",
                      plain(r.reason or ""))
    out_console.print(table)


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("backends")(backends)
