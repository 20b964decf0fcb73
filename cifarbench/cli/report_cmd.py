"""`cifarbench report`: the results database as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from cifarbench.cli._console import info, warn
from cifarbench.cli.results_cmd import (DB_HELP, F_BACKEND, F_DEVICE, F_KIND, F_MACHINE, F_MODEL, F_PREC, F_SINCE,
                                        F_UNTIL, _engine, _filters)
from cifarbench.errors import UsageError


def report(
    output: Path = typer.Option(Path("report.html"), "--out", "--output", "-o", help="The HTML file to write."),
    model: Optional[str] = F_MODEL, backend: Optional[str] = F_BACKEND, device: Optional[str] = F_DEVICE,
    precision: Optional[str] = F_PREC, kind: Optional[str] = F_KIND, machine: Optional[str] = F_MACHINE,
    since: Optional[str] = F_SINCE, until: Optional[str] = F_UNTIL,
    target_acc: Optional[float] = typer.Option(
        None, "--target-acc", help="Time to accuracy: first time the eval accuracy reached this (0-1), from the curves."),
    results_db: Optional[str] = typer.Option(None, "--results-db", "--db", help=DB_HELP),
) -> None:
    """Write report.html: sortable leaderboard, a panel per machine, throughput bars, accuracy-vs-time curves."""
    from cifarbench.atomic import write_text as atomic_write_text
    from cifarbench.report.html import render
    from cifarbench.results.db import shown_url
    from cifarbench.results.store import machine_fingerprints, query

    if target_acc is not None and not 0 < target_acc <= 1:
        raise UsageError("--target-acc is a fraction in (0, 1], e.g. 0.9")
    engine = _engine(results_db)
    rows = query(engine, _filters(model, backend, device, precision, kind, machine, since, until), full=True)
    if not rows:
        raise UsageError("no stored result matches; nothing to report",
                         hint="run `cifarbench bench` or `cifarbench results import FILE` first")
    page, warnings = render(rows, machine_fingerprints(engine, {r["fingerprint_id"] for r in rows}),
                            shown_url(str(engine.url)), target_acc)
    for w in warnings:
        warn(w)
    atomic_write_text(output, page)
    info(f"wrote {escape(str(output))} ({len(rows)} results, {len(page) // 1024} kB)")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
