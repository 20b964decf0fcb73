"""bench.json, bench.csv and bench.md, written atomically; and loading a result back."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from cifarbench.atomic import write_json as atomic_write_json, write_text as atomic_write_text
from cifarbench.errors import UsageError
from cifarbench.report.tables import format_table, skipped_lines

RESULT_KIND = "cifarbench-bench"


def flatten_row(row: dict[str, Any]) -> dict[str, Any]:
    """Nested statistics become ``key_stat`` columns; lists (curves, run dirs) stay in the JSON only."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if not isinstance(v, (dict, list)):
                    flat[f"{key}_{sub}"] = v
        elif not isinstance(value, list):
            flat[key] = value
    return flat


def to_csv(result: dict[str, Any]) -> str:
    rows = [flatten_row(r) for r in result.get("rows", [])]
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(result: dict[str, Any]) -> str:
    headers, cells = format_table(result)
    lines = [f"# cifarbench bench ({result.get('mode', 'throughput')})", ""]
    lines += [_conditions(result), ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" if i < 5 else "---:" for i in range(len(headers))) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in cells]
    skipped = skipped_lines(result)
    if skipped:
        lines += ["", "Not run:", ""] + [f"- {_md_cell(s)}" for s in skipped]
    base = result.get("baseline")
    if base:
        lines += ["", f"relative = {result.get('relative_meaning', '')}; baseline: {base}."]
    return "\n".join(lines) + "\n"


def _conditions(result: dict[str, Any]) -> str:
    from cifarbench.fingerprint import memory_gib

    fp = result.get("fingerprint") or {}
    hw = fp.get("hardware") or {}
    gpus = ", ".join(g.get("name") or "?" for g in hw.get("gpus") or []) or "no GPU"
    s = result.get("settings") or {}
    what = (f"{s.get('epochs')} epochs on {s.get('dataset')}" if result.get("mode") == "training"
            else f"{s.get('warmup_steps')} warm-up steps, {s.get('repeats')} windows of {s.get('steps')} steps, "
                 f"data: {'synthetic' if s.get('synthetic') else s.get('dataset')}")
    return (f"{hw.get('cpu_model') or hw.get('architecture')} ({hw.get('logical_cores')} cores, {memory_gib(hw)} GiB), "
            f"{gpus}; {hw.get('os')} {hw.get('os_release')}; {what}; fingerprint {result.get('fingerprint_id')}.")


def write_outputs(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """bench.json, bench.csv, bench.md under out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "bench.json", out_dir / "bench.csv", out_dir / "bench.md"]
    atomic_write_json(paths[0], result)
    atomic_write_text(paths[1], to_csv(result))
    atomic_write_text(paths[2], to_markdown(result))
    return paths


def load_result(path: str | Path) -> dict[str, Any]:
    """A bench.json (or the directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "bench.json"
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"bench result not found: {p}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read bench result {p}: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != RESULT_KIND:
        raise UsageError(f"{p} is not a cifarbench bench result")
    return data
