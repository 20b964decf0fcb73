"""`cifarbench results list|show|compare|export|import`: the results database from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from cifarbench.cli._console import err_console, info, print_json, print_wide, warn, plain
from cifarbench.errors import UsageError

results_app = typer.Typer(help="The results database: list, show, compare, export and import results.",
                          no_args_is_help=True, add_completion=False)

DB_HELP = "SQLAlchemy URL or SQLite path (default: $CIFARBENCH_RESULTS_DB, else results.db in the user data dir)."
DbOpt = typer.Option(None, "--results-db", "--db", help=DB_HELP)


def _split(text: Optional[str]) -> Optional[list[str]]:
    return [p.strip() for p in text.split(",") if p.strip()] or None if text else None


def _date(text: Optional[str], flag: str) -> Optional[str]:
    if not text:
        return None
    from cifarbench.results.ingest import utc

    if len(text) == 10:  # a plain date, YYYY-MM-DD
        try:
            from datetime import date

            date.fromisoformat(text)
        except ValueError:
            raise UsageError(f"{flag} takes a date YYYY-MM-DD or an ISO time, got '{text}'") from None
        return text
    try:
        return utc(text)
    except UsageError:
        raise UsageError(f"{flag} takes a date YYYY-MM-DD or an ISO time, got '{text}'") from None


def _filters(model, backend, device, precision, kind, machine, since, until):
    from cifarbench.results.store import Filters

    return Filters(model=_split(model), backend=_split(backend), device=_split(device), precision=_split(precision),
                   kind=_split(kind), machine=_split(machine), since=_date(since, "--since"), until=_date(until, "--until"))


def _engine(url: Optional[str]):
    from cifarbench.results.db import connect

    return connect(url)


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _acc(mean: Optional[float], std: Optional[float], n: Optional[int] = None) -> str:
    if mean is None:
        return "-"
    text = f"{100 * mean:.2f}"
    if n and n > 1 and std is not None:
        text += f" ± {100 * std:.2f}"
    return text


# Filter options shared by list, compare and export.
F_MODEL = typer.Option(None, "--model", "-m", help="Comma list of models.")
F_BACKEND = typer.Option(None, "--backend", help="Comma list of backends.")
F_DEVICE = typer.Option(None, "--device", help="Comma list of devices.")
F_PREC = typer.Option(None, "--precision", help="Comma list: fp32, bf16, fp16.")
F_KIND = typer.Option(None, "--kind", help="train, throughput or training (bench modes).")
F_MACHINE = typer.Option(None, "--machine", help="Fingerprint id (a prefix will do) or host name; comma list.")
F_SINCE = typer.Option(None, "--since", help="From this date (YYYY-MM-DD) or UTC time.")
F_UNTIL = typer.Option(None, "--until", help="Up to this date (inclusive) or UTC time.")


@results_app.command("list")
def list_cmd(
    model: Optional[str] = F_MODEL, backend: Optional[str] = F_BACKEND, device: Optional[str] = F_DEVICE,
    precision: Optional[str] = F_PREC, kind: Optional[str] = F_KIND, machine: Optional[str] = F_MACHINE,
    since: Optional[str] = F_SINCE, until: Optional[str] = F_UNTIL,
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Only the newest N."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON on stdout."),
    results_db: Optional[str] = DbOpt,
) -> None:
    """List stored results, oldest first."""
    from rich.table import Table

    from cifarbench.results.store import query

    rows = query(_engine(results_db), _filters(model, backend, device, precision, kind, machine, since, until), limit=limit)
    if json_out:
        print_json(rows)
        return
    table = Table("id", "date (UTC)", "kind", "model", "backend", "device", "prec", "batch", "images/s", "acc %",
                  "time s", "machine", "host", title=f"{len(rows)} results", header_style="bold")
    for r in rows:
        table.add_row(str(r["id"]), r["created"].replace("T", " ").rstrip("Z"), plain(r["kind"]), plain(r["model"] or "-"),
                      plain(r["backend"] or "-"), plain(r["device"] or "-"), plain(r["precision"] or "-"), _fmt(r["batch_size"]),
                      _fmt(r["images_per_s"]), _acc(r["accuracy"], r["accuracy_std"], r.get("seeds")),
                      _fmt(r["total_time_s"]), r["fingerprint_id"][:8], escape(r["hostname"] or "-"))
    print_wide(table)


@results_app.command("show")
def show_cmd(result_id: int = typer.Argument(..., metavar="ID"), results_db: Optional[str] = DbOpt) -> None:
    """Everything stored for one result (JSON on stdout), with its machine's fingerprint."""
    from cifarbench.results.store import get, machine_fingerprints

    engine = _engine(results_db)
    row = get(engine, result_id)
    if row is None:
        raise UsageError(f"no result with id {result_id}", hint="`cifarbench results list` shows the ids")
    row["fingerprint"] = machine_fingerprints(engine, [row["fingerprint_id"]]).get(row["fingerprint_id"])
    print_json(row)


@results_app.command("compare")
def compare_cmd(
    model: Optional[str] = F_MODEL, backend: Optional[str] = F_BACKEND, device: Optional[str] = F_DEVICE,
    precision: Optional[str] = F_PREC, kind: Optional[str] = F_KIND, machine: Optional[str] = F_MACHINE,
    since: Optional[str] = F_SINCE, until: Optional[str] = F_UNTIL,
    baseline: Optional[str] = typer.Option(
        None, "--baseline", help="Result ID, 'slowest' (default), 'first', or backend[:device[:model[:precision[:batch]]]]."),
    metric: str = typer.Option("ips", "--metric", help="What 'relative' compares: ips (images/s), time, accuracy."),
    json_out: bool = typer.Option(False, "--json", help="Print the groups as JSON on stdout."),
    results_db: Optional[str] = DbOpt,
) -> None:
    """Matching results grouped by case and machine: medians and spread over repeats and seeds, relative to a baseline."""
    from rich.table import Table

    from cifarbench.results.analysis import compare
    from cifarbench.results.store import query

    rows = query(_engine(results_db), _filters(model, backend, device, precision, kind, machine, since, until))
    if not rows:
        raise UsageError("no stored result matches these filters", hint="`cifarbench results list` shows what is stored")
    res = compare(rows, baseline, metric)
    if json_out:
        print_json(res)
        return
    table = Table("kind", "model", "backend", "device", "prec", "batch", "machine", "runs", "images/s (median)",
                  "min–max", "acc % (mean ± std, n)", "time s (median)", "relative", "ids",
                  title=f"{len(rows)} results in {len(res['groups'])} groups", header_style="bold")
    for g in res["groups"]:
        spread = "-" if g["images_per_s_min"] is None else f"{g['images_per_s_min']:,.1f}–{g['images_per_s_max']:,.1f}"
        acc = _acc(g["accuracy"], g["accuracy_std"], g["accuracy_n"]) + (f" ({g['accuracy_n']})" if g["accuracy_n"] else "")
        rel = "-" if g["relative"] is None else f"{g['relative']:.2f}x" + (" (base)" if g["baseline"] else "")
        ids = ",".join(map(str, g["ids"][:6])) + ("…" if len(g["ids"]) > 6 else "")
        table.add_row(*(plain(v or "-") for v in (g["kind"], g["model"], g["backend"], g["device"], g["precision"])),
                      _fmt(g["batch_size"]), g["fingerprint_id"][:8], str(g["n"]), _fmt(g["images_per_s"]), spread,
                      acc, _fmt(g["total_time_s"]), rel, ids)
    print_wide(table)
    info(plain(f"relative = {res['relative_meaning']}"))


@results_app.command("export")
def export_cmd(
    model: Optional[str] = F_MODEL, backend: Optional[str] = F_BACKEND, device: Optional[str] = F_DEVICE,
    precision: Optional[str] = F_PREC, kind: Optional[str] = F_KIND, machine: Optional[str] = F_MACHINE,
    since: Optional[str] = F_SINCE, until: Optional[str] = F_UNTIL,
    fmt: str = typer.Option("csv", "--format", "-f", help="csv, json (re-importable) or md."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write (default: stdout)."),
    results_db: Optional[str] = DbOpt,
) -> None:
    """Write the matching results as CSV, JSON (with machines; `results import` reads it) or Markdown."""
    from cifarbench.results import analysis
    from cifarbench.results.store import machine_fingerprints, query

    if fmt not in ("csv", "json", "md", "markdown"):
        raise UsageError(f"--format must be csv, json or md, got '{fmt}'")
    engine = _engine(results_db)
    rows = query(engine, _filters(model, backend, device, precision, kind, machine, since, until), full=fmt == "json")
    if fmt == "json":
        text = analysis.to_json(rows, machine_fingerprints(engine, {r["fingerprint_id"] for r in rows}))
    else:
        text = analysis.to_csv(rows) if fmt == "csv" else analysis.to_markdown(rows)
    if output is None:
        typer.echo(text, nl=False)
        return
    from cifarbench.atomic import write_text as atomic_write_text

    atomic_write_text(output, text)
    info(f"wrote {len(rows)} results to {escape(str(output))}")


@results_app.command("import")
def import_cmd(
    files: list[Path] = typer.Argument(..., metavar="FILE...", help="bench.json, run_log.json, a run directory or a results export."),
    results_db: Optional[str] = DbOpt,
) -> None:
    """Add results from other machines; a result already stored (same content hash) is skipped."""
    from cifarbench.results.ingest import read_file
    from cifarbench.results.store import record

    batches = [(f, read_file(f)) for f in files]  # every file read (and checked) before any is stored
    engine = _engine(results_db)
    added = dup = 0
    for f, records in batches:
        stored = record(engine, records)
        new = [s.id for s in stored if s.new]
        added, dup = added + len(new), dup + len(stored) - len(new)
        info(f"{escape(str(f))}: {len(new)} added" + (f" (ids {', '.join(map(str, new))})" if new else "")
             + (f", {len(stored) - len(new)} already stored" if len(stored) > len(new) else ""))
    if not added and not dup:
        warn("the files held no results")
    err_console.print(f"imported {added} new, skipped {dup} duplicates", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(results_app, name="results")
