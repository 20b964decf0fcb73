"""Compare two bench results: the ratio per matching row, and whether the machines differ."""

from __future__ import annotations

from typing import Any

from cifarbench.errors import UsageError

KEY = ("backend", "device", "model", "precision", "batch_size")


def _speed(row: dict[str, Any], mode: str) -> float | None:
    if mode == "training":
        t = (row.get("total_time_s") or {}).get("mean")
        return 1.0 / t if t else None
    return (row.get("train_ips") or {}).get("median")


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """ratio = B's speed / A's speed per row present in both (> 1: B is faster)."""
    from cifarbench.fingerprint import diff

    if a.get("mode") != b.get("mode"):
        raise UsageError(f"cannot compare a {a.get('mode')} result with a {b.get('mode')} result")
    mode = a["mode"]
    index_b = {tuple(r[k] for k in KEY): r for r in b.get("rows", [])}
    rows = []
    for ra in a.get("rows", []):
        key = tuple(ra[k] for k in KEY)
        rb = index_b.get(key)
        sa, sb = _speed(ra, mode), _speed(rb, mode) if rb else None
        rows.append({**dict(zip(KEY, key)), "a": _shown(ra, mode), "b": _shown(rb, mode) if rb else None,
                     "ratio": sb / sa if sa and sb else None})
    only_b = [dict(zip(KEY, k)) for k in index_b if k not in {tuple(r[k2] for k2 in KEY) for r in a.get("rows", [])}]
    same = a.get("fingerprint_id") == b.get("fingerprint_id")
    return {
        "mode": mode, "metric": "total training time (s)" if mode == "training" else "median training images/s",
        "rows": rows, "only_in_b": only_b, "fingerprints_match": same,
        "fingerprint_a": a.get("fingerprint_id"), "fingerprint_b": b.get("fingerprint_id"),
        "differing_fields": [] if same else diff(a.get("fingerprint") or {}, b.get("fingerprint") or {}),
    }


def _shown(row: dict[str, Any] | None, mode: str) -> float | None:
    if row is None:
        return None
    if mode == "training":
        return (row.get("total_time_s") or {}).get("mean")
    return (row.get("train_ips") or {}).get("median")
