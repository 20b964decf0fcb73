"""Turn what cifarbench writes (bench.json, run_log.json, a results export) into database records.

A record is a dict of the ``results`` columns plus ``fingerprint`` (the machine). Its
``content_hash`` is a sha256 over the canonical JSON of what the file says about that result, so
recording a file at the end of a run and importing a copy of it later give the same hash: the
second is a duplicate. Pure Python: no SQLAlchemy here.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cifarbench.errors import UsageError

BENCH_KIND = "cifarbench-bench"
EXPORT_KIND = "cifarbench-results"
FRAMEWORKS = {"PyTorch": "torch", "MLX": "mlx", "NumPy": "numpy", "CuPy": "cupy"}  # run_log's framework -> backend


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def utc(stamp: str | None) -> str:
    """An ISO time (any offset) as UTC 'YYYY-MM-DDTHH:MM:SSZ', so text order is time order."""
    if not stamp:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for fmt in (None, "%Y%m%d_%H%M%S"):
        try:
            t = datetime.fromisoformat(stamp.replace("Z", "+00:00")) if fmt is None else datetime.strptime(stamp, fmt)
            break
        except ValueError:
            continue
    else:
        raise UsageError(f"not a time stamp: '{stamp}'")
    if t.tzinfo is None:
        t = t.astimezone()  # a naive stamp is this machine's local time
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _stat(d: Any, key: str) -> float | None:
    return _num(d.get(key)) if isinstance(d, dict) and d.get("n", 1) else None


def _code(fp: dict[str, Any]) -> dict[str, Any]:
    sw = fp.get("software") or {}
    git = sw.get("git") or {}
    return {"code_version": sw.get("cifarbench"), "git_commit": git.get("commit"),
            "git_dirty": git.get("dirty") if git else None, "hostname": fp.get("hostname")}


def _need_fingerprint(data: dict[str, Any], path: str) -> dict[str, Any]:
    fp = data.get("fingerprint")
    if not isinstance(fp, dict) or not data.get("fingerprint_id"):
        raise UsageError(f"{path}: no machine fingerprint in it", hint="cifarbench's bench.json and run_log.json carry one")
    return {**fp, "fingerprint_id": data["fingerprint_id"]}


def from_bench(result: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """One record per row of a bench.json (throughput or training mode)."""
    fp = _need_fingerprint(result, source)
    mode = result.get("mode", "throughput")
    settings = result.get("settings") or {}
    ident = {"kind": BENCH_KIND, "created": result.get("created"), "fingerprint_id": result["fingerprint_id"],
             "settings": settings}
    out = []
    for row in result.get("rows") or []:
        ips = row.get("train_ips") if mode == "throughput" else row.get("images_per_s")
        acc = row.get("test_accuracy") or {}
        ttt = row.get("time_to_target_s") or {}
        out.append({
            "content_hash": content_hash({**ident, "row": row}), "kind": mode, "created": utc(result.get("created")),
            "model": row.get("model"), "backend": row.get("backend"), "device": row.get("device"),
            "device_name": row.get("device_name"), "precision": row.get("precision"),
            "batch_size": row.get("batch_size"), "dataset": row.get("dataset") or settings.get("dataset"),
            "epochs": row.get("epochs"), "seeds": row.get("seeds") or 1,
            "images_per_s": _stat(ips, "median"), "images_per_s_min": _stat(ips, "min"),
            "images_per_s_max": _stat(ips, "max"),
            "accuracy": _stat(acc, "mean"), "accuracy_std": _stat(acc, "std"),
            "total_time_s": _stat(row.get("total_time_s"), "mean"),
            "time_to_target_s": _stat(ttt, "median") if ttt.get("n") else None,
            "target_acc": _num(settings.get("target_acc")),
            "fingerprint_id": result["fingerprint_id"], **_code(fp),
            "config": result.get("config"),
            "data": {"row": row, "settings": settings, "baseline": result.get("baseline"),
                     "relative_meaning": result.get("relative_meaning")},
            "fingerprint": fp, "source": source,
        })
    return out


def from_run_log(log: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """The record of one `cifarbench train` run from its run_log.json."""
    fp = _need_fingerprint(log, source)
    tr, res, cfg = log.get("training") or {}, log.get("results") or {}, log.get("config") or {}
    steady = [_num(h.get("images_per_s")) for h in (log.get("history") or [])[1:]] or \
             [_num(h.get("images_per_s")) for h in (log.get("history") or [])]
    steady = [v for v in steady if v]
    acc = _num(res.get("overall_accuracy"))  # a fraction; run logs before 0.1 held a percent
    if acc is None and _num(res.get("overall_accuracy_pct")) is not None:
        acc = _num(res.get("overall_accuracy_pct")) / 100.0
    hw = log.get("hardware") or {}
    return [{
        "content_hash": content_hash(log), "kind": "train", "created": utc(fp.get("created") or log.get("timestamp")),
        "model": tr.get("model") or cfg.get("model"), "backend": FRAMEWORKS.get(log.get("framework"), cfg.get("backend")),
        "device": (hw.get("Device") or cfg.get("device") or "").lower() or None, "device_name": hw.get("Device_Name"),
        "precision": tr.get("precision") or cfg.get("precision"), "batch_size": tr.get("batch_size"),
        "dataset": tr.get("dataset"), "epochs": tr.get("epochs"), "seeds": 1,
        "images_per_s": _num(res.get("images_per_s")),
        "images_per_s_min": min(steady) if steady else None, "images_per_s_max": max(steady) if steady else None,
        "accuracy": acc, "accuracy_std": 0.0 if acc is not None else None,
        "total_time_s": _num(tr.get("training_time_seconds")), "time_to_target_s": None, "target_acc": None,
        "fingerprint_id": log["fingerprint_id"], **_code(fp), "config": cfg,
        "data": {k: v for k, v in log.items() if k not in ("fingerprint", "config")},
        "fingerprint": fp, "source": source,
    }]


def from_export(doc: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """Records of a `cifarbench results export --format json` file, hashes kept as they were."""
    machines = doc.get("machines") or {}
    out = []
    for r in doc.get("results") or []:
        fp = machines.get(r.get("fingerprint_id"))
        if fp is None or not r.get("content_hash"):
            raise UsageError(f"{source}: result {r.get('id')} has no machine or content hash")
        rec = {k: v for k, v in r.items() if k not in ("id", "recorded")}
        out.append({**rec, "fingerprint": fp, "source": f"{source} ({r.get('source')})"})
    return out


def read_file(path: str | Path) -> list[dict[str, Any]]:
    """Records in a bench.json, a train or bench run_log.json, a results export, or a run directory."""
    p = Path(path)
    if p.is_dir():
        p = next((p / n for n in ("bench.json", "run_log.json") if (p / n).is_file()), p / "run_log.json")
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"no such file: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {p}: {exc}") from None
    source = str(p)
    if not isinstance(data, dict):
        raise UsageError(f"{p}: not a cifarbench result (a JSON object was expected)")
    if data.get("kind") == BENCH_KIND:
        return from_bench(data, source)
    if data.get("kind") == EXPORT_KIND:
        return from_export(data, source)
    if data.get("command") == "bench":  # a bench run directory's run_log.json: its rows are in bench.json
        bench = p.parent / (data.get("results") or "bench.json")
        if not bench.is_file():
            raise UsageError(f"{p} is a bench log whose results file {bench} is missing")
        return read_file(bench)
    if "training" in data and "results" in data and "framework" in data:
        return from_run_log(data, source)
    raise UsageError(f"{p}: not a bench.json, run_log.json or results export of cifarbench")
