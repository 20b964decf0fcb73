"""compare and export over stored results: plain functions of row dicts (no database access here).

compare groups the rows by what was run and where (kind, model, backend, device, precision,
batch size, machine) and gives per group: the median images/s over the rows' medians with the
min and max over all of their timed windows, the accuracy mean ± std pooled exactly over every
seed of every row, the median total time, and a relative column against a baseline group.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from typing import Any, Optional, Sequence

from cifarbench.errors import UsageError

GROUP = ("kind", "model", "backend", "device", "precision", "batch_size", "fingerprint_id")
METRICS = ("ips", "time", "accuracy")
LIST_COLUMNS = ("id", "created", "kind", "model", "backend", "device", "precision", "batch_size", "images_per_s",
                "accuracy", "total_time_s", "fingerprint_id", "hostname", "git_commit")


def pooled(parts: Sequence[tuple[int, float, float]]) -> tuple[int, Optional[float], Optional[float]]:
    """(n, mean, sample std) of the union of samples given as (n_i, mean_i, std_i) each."""
    parts = [(n, m, s or 0.0) for n, m, s in parts if n and m is not None]
    total = sum(n for n, _, _ in parts)
    if not total:
        return 0, None, None
    mean = sum(n * m for n, m, _ in parts) / total
    if total < 2:
        return total, mean, 0.0
    ss = sum((n - 1) * s * s + n * (m - mean) ** 2 for n, m, s in parts)
    return total, mean, math.sqrt(max(ss, 0.0) / (total - 1))


def _median(vals: list) -> Optional[float]:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def groups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per group, in order of first appearance."""
    by: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(tuple(r.get(k) for k in GROUP), []).append(r)
    out = []
    for key, rs in by.items():
        n_acc, acc, acc_std = pooled([(r.get("seeds") or 1, r.get("accuracy"), r.get("accuracy_std")) for r in rs])
        lows = [r.get("images_per_s_min") or r.get("images_per_s") for r in rs]
        highs = [r.get("images_per_s_max") or r.get("images_per_s") for r in rs]
        out.append({
            **dict(zip(GROUP, key)), "ids": [r["id"] for r in rs], "n": len(rs),
            "hostnames": sorted({r.get("hostname") for r in rs if r.get("hostname")}),
            "images_per_s": _median([r.get("images_per_s") for r in rs]),
            "images_per_s_min": min((v for v in lows if v is not None), default=None),
            "images_per_s_max": max((v for v in highs if v is not None), default=None),
            "accuracy": acc, "accuracy_std": acc_std, "accuracy_n": n_acc,
            "total_time_s": _median([r.get("total_time_s") for r in rs]),
            "time_to_target_s": _median([r.get("time_to_target_s") for r in rs]),
        })
    return out


def _speed(g: dict[str, Any], metric: str) -> Optional[float]:
    if metric == "time":
        t = g.get("total_time_s")
        return 1.0 / t if t else None
    v = g.get("images_per_s" if metric == "ips" else "accuracy")
    return v if v else None


def _selects(selector: str, g: dict[str, Any]) -> bool:
    if selector.isdigit():
        return int(selector) in g["ids"]
    parts = [p for p in selector.replace("/", ":").split(":") if p]
    fields = [g["backend"], g["device"], g["model"], g["precision"], str(g["batch_size"])]
    return all(p in (f, f"bs{f}") for p, f in zip(parts, fields))


def compare(rows: Sequence[dict[str, Any]], baseline: Optional[str] = None, metric: str = "ips") -> dict[str, Any]:
    """Groups with ``relative`` = this group's speed / the baseline's (time: the baseline's time / this one's)."""
    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got '{metric}'")
    gs = groups(rows)
    ranked = [g for g in gs if _speed(g, metric) is not None]
    base = None
    if ranked:
        if baseline in (None, "slowest"):
            base = min(ranked, key=lambda g: _speed(g, metric))
        elif baseline == "first":
            base = ranked[0]
        else:
            base = next((g for g in ranked if _selects(baseline, g)), None)
            if base is None:
                raise UsageError(f"--baseline {baseline} matches no compared row with a {metric} value",
                                 hint="give a result ID, 'slowest', 'first' or backend[:device[:model[:precision[:batch]]]]")
    for g in gs:
        s = _speed(g, metric)
        g["relative"] = s / _speed(base, metric) if base is not None and s is not None else None
        g["baseline"] = g is base
    meaning = {"ips": "median images/s / the baseline's", "time": "the baseline's total time / this row's (speed-up)",
               "accuracy": "mean accuracy / the baseline's"}[metric]
    return {"metric": metric, "relative_meaning": meaning, "groups": gs,
            "baseline": None if base is None else base["ids"][0]}


# ----- export -------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    cols = [c for c in (rows[0].keys() if rows else LIST_COLUMNS) if c not in ("config", "data")]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in cols})
    return buf.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    cols = list(LIST_COLUMNS)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if c in ("id", "batch_size", "images_per_s",
             "accuracy", "total_time_s") else "---" for c in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_json(rows: Sequence[dict[str, Any]], machines: dict[str, dict[str, Any]]) -> str:
    """An export that `cifarbench results import` reads back (content hashes kept: no duplicates)."""
    from cifarbench.results.ingest import EXPORT_KIND

    used = {r["fingerprint_id"] for r in rows}
    doc = {"kind": EXPORT_KIND, "version": 1, "results": list(rows),
           "machines": {k: v for k, v in machines.items() if k in used}}
    return json.dumps(doc, indent=2, default=str) + "\n"
