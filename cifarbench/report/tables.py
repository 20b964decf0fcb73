"""Bench results as a table of strings: one definition of the columns for rich, Markdown and text.

A result is the dict bench produces (``mode``, ``rows``, ``skipped``, ...). Each column is a
header and a function of a row; numbers are formatted here once, so the terminal table and
``bench.md`` always agree.
"""

from __future__ import annotations

import math
from typing import Any, Callable

Column = tuple[str, Callable[[dict[str, Any]], str]]


def _num(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def sig(x: Any, figures: int = 3) -> str:
    """``figures`` significant figures, thousands separated: 12,300 / 7.04 / 0.0123 (never '7–7')."""
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "-"
    if x == 0:
        return "0"
    digits = figures - 1 - int(math.floor(math.log10(abs(x))))
    rounded = round(x, digits)
    if rounded and int(math.floor(math.log10(abs(rounded)))) > figures - 1 - digits:  # 999.6 -> 1,000: one digit fewer
        digits -= 1
    return f"{round(x, digits):,.{max(digits, 0)}f}"


def _stat(row: dict[str, Any], key: str, field: str = "median", digits: int = 1) -> str:
    return _num((row.get(key) or {}).get(field), digits)


def _median(row: dict[str, Any], key: str) -> str:
    return sig((row.get(key) or {}).get("median"))


def _std(row: dict[str, Any], key: str) -> str:
    """± the sample standard deviation of the repeats (3 significant figures), with n."""
    s = row.get(key) or {}
    if not s.get("n"):
        return "-"
    return f"± {sig(s['std'])} (n={s['n']})" if s["n"] > 1 else "(n=1)"


def _pm(row: dict[str, Any], key: str, scale: float = 1.0, digits: int = 2) -> str:
    s = row.get(key) or {}
    if not s.get("n"):
        return "-"
    text = _num(s["mean"] * scale, digits)
    return f"{text} ± {_num(s['std'] * scale, digits)}" if s["n"] > 1 else text


def _relative(row: dict[str, Any]) -> str:
    """hyperfine style: the baseline row reads 1.00, the others 'N x faster' or 'N x slower' than it."""
    rel = row.get("relative")
    if rel is None:
        return "-"
    if row.get("baseline"):
        return "1.00 (base)"
    if rel >= 1:
        return f"{sig(rel)}x faster"
    return f"{sig(1 / rel)}x slower" if rel > 0 else "-"


def _target(row: dict[str, Any]) -> str:
    t = row.get("time_to_target_s") or {}
    reached, runs = row.get("target_reached", 0), row.get("seeds", 0)
    if not t.get("n"):
        return f"not reached (0/{runs})"
    text = _num(t["median"], 1) + " s"
    return text if reached == runs else f"{text} ({reached}/{runs})"


COMMON: list[Column] = [
    ("backend", lambda r: r["backend"]),
    ("device", lambda r: r["device"]),
    ("model", lambda r: r["model"]),
    ("precision", lambda r: r["precision"]),
    ("batch", lambda r: str(r["batch_size"])),
]

THROUGHPUT: list[Column] = COMMON + [
    ("train img/s", lambda r: _median(r, "train_ips")),
    ("train ± std", lambda r: _std(r, "train_ips")),
    ("eval img/s", lambda r: _median(r, "eval_ips")),
    ("eval ± std", lambda r: _std(r, "eval_ips")),
    ("warm-up s", lambda r: sig(r.get("warmup_s"))),
    ("relative", _relative),
]


def training_columns(target_acc: float | None) -> list[Column]:
    cols = COMMON + [
        ("epochs", lambda r: str(r["epochs"])),
        ("seeds", lambda r: str(r["seeds"])),
        ("total s", lambda r: _pm(r, "total_time_s", digits=1)),
        ("s/epoch", lambda r: _stat(r, "time_per_epoch_s", "mean", 2)),
        ("train img/s", lambda r: _stat(r, "images_per_s", "median", 0)),
        ("test acc %", lambda r: _pm(r, "test_accuracy", 100.0)),
        ("final loss", lambda r: _pm(r, "final_loss", digits=4)),
    ]
    if target_acc is not None:
        cols.append((f"time to {100 * target_acc:g}%", _target))
    cols.append(("relative", _relative))
    return cols


def columns(result: dict[str, Any]) -> list[Column]:
    if result.get("mode") == "training":
        return training_columns(result.get("settings", {}).get("target_acc"))
    return THROUGHPUT


def format_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows of cells) for a bench result."""
    cols = columns(result)
    return [h for h, _ in cols], [[fn(row) for _, fn in cols] for row in result.get("rows", [])]


def skipped_lines(result: dict[str, Any]) -> list[str]:
    """One line per combination that did not run, with the reason (never hidden)."""
    out = []
    for s in result.get("skipped", []):
        what = " ".join(str(s[k]) for k in ("backend", "device", "model", "precision") if s.get(k))
        bs = f" bs{s['batch_size']}" if s.get("batch_size") else ""
        out.append(f"{what}{bs}: {s['reason']}")
    return out


PHASE_HEADERS = ["case", "phase", "min ms", "avg ms", "max ms", "µs/img min", "µs/img avg", "µs/img max", "share"]
PHASES = (("data", "phase_data_s"), ("forward", "phase_forward_s"), ("backward", "phase_backward_s"),
          ("optimizer", "phase_optimizer_s"))


def phase_stats(row: dict[str, Any]) -> list[tuple[str, dict[str, float], dict[str, float]]]:
    """(phase, per-batch seconds {min, avg, max}, per-image µs {min, avg, max}) for each timed phase, then
    their per-step sum and the fused step of the timed windows; [] when the row timed no phases."""
    bs = row["batch_size"]
    out = []
    for name, key in (*PHASES, ("sum", "phase_sum_s"), ("fused step", "fused_step_s")):
        s = row.get(key) or {}
        if not s.get("n"):
            continue
        batch = {"min": s["min"], "avg": s["mean"], "max": s["max"]}
        out.append((name, batch, {k: 1e6 * v / bs for k, v in batch.items()}))
    return out if any(name in dict(PHASES) for name, _, _ in out) else []


def phase_cells(result: dict[str, Any]) -> list[list[str]]:
    """Rows of the phase table: one per phase of each row, the case named on its first line; share = the
    phase's average over the sum of the averages."""
    cells = []
    for row in result.get("rows", []):
        stats = phase_stats(row)
        total = next((b["avg"] for n, b, _ in stats if n == "sum"), None)
        case = f"{row['backend']}/{row['device']}/{row['model']}/{row['precision']}/bs{row['batch_size']}"
        for i, (name, batch, image) in enumerate(stats):
            share = f"{100 * batch['avg'] / total:.0f}%" if total and name != "fused step" else (
                f"sum/fused {total / batch['avg']:.2f}" if total and batch["avg"] else "")
            if name == "sum":
                share = "100%"
            cells.append([case if i == 0 else "", name, *(sig(1e3 * batch[k]) for k in ("min", "avg", "max")),
                          *(sig(image[k]) for k in ("min", "avg", "max")), share])
    return cells
