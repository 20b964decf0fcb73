"""mikecvet/cnn's ``.bench.out`` records: written from a bench result, read back for the comparison chart.

The layout is the one mikecvet's ``--bench`` appends to ``{framework}.{device}.cnn.bench.out`` and
his ``viz.py`` reads (one ``key|batch:min,avg,max`` line per timed list, integer microseconds, the
per-image line the per-batch values floor-divided by the batch size; ``epoch_range_s`` in seconds
with three decimals; ``test_run_ms`` as whole milliseconds written ``%.3f``; Python lists of the
per-epoch loss and accuracy in percent). His ``inference`` is the forward pass and his ``backprop``
the loss, backward pass and optimizer step: here forward, and backward + optimizer, timed per
batch with the device synchronised. Lines he did not have (the data, backward and optimizer phases
on their own, the fused step) use the same layout under new keys; a ``#`` line names each block.
Files are appended to, as his were, through one atomic replace (the old records or old + new, never
half a block).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from cifarbench import atomic
from cifarbench.errors import UsageError

# our phase -> the key of its lines (mikecvet's own keys for the two he had)
PHASE_KEYS = {"forward": "inference", "backprop": "backprop", "data": "data", "backward": "backward",
              "optimizer": "optimizer", "step": "step"}
ROW_KEYS = {"forward": "phase_forward_s", "backprop": "phase_backprop_s", "data": "phase_data_s",
            "backward": "phase_backward_s", "optimizer": "phase_optimizer_s", "step": "fused_step_s"}
_RANGE = re.compile(r"^batch_(\w+?)_range_us\|(\d+):(\d+),(\d+),(\d+)$")


def label(row: dict[str, Any], seed: int | None = None) -> str:
    what = f"{row['backend']} {row['device']} {row['model']} {row['precision']} bs{row['batch_size']}"
    return what if seed is None else f"{what} seed {seed}"


def _us(seconds: float) -> int:
    return int(seconds * 1e6)  # mikecvet: nanoseconds // 1000, an integer


def _range_lines(key: str, bs: int, stats: dict[str, Any]) -> list[str]:
    lo, avg, hi = _us(stats["min"]), _us(stats["mean"]), _us(stats["max"])
    return [f"batch_{key}_range_us|{bs}:{lo},{avg},{hi}", f"indiv_{key}_range_us:{lo // bs},{avg // bs},{hi // bs}"]


def _without_first(values: list[float]) -> list[float]:
    return values[1:] if len(values) > 1 else values  # mikecvet: the first sample is warm-up


def blocks(result: dict[str, Any]) -> list[str]:
    """One record per throughput row, or per seed of each training-mode row."""
    out = []
    for row in result.get("rows", []):
        bs = int(row["batch_size"])
        if result.get("mode") == "training":
            for c in row.get("curves", []):
                lines = [f"# cifarbench bench (training): {label(row, c['seed'])}"]
                ep = _without_first(list(c.get("train_time_s") or []))
                if ep:
                    lines.append(f"epoch_range_s|{bs}:{min(ep):.3f},{sum(ep) / len(ep):.3f},{max(ep):.3f}")
                if c.get("test_time_s") is not None:
                    lines.append(f"test_run_ms:{int(c['test_time_s'] * 1000):.3f}")
                lines.append(f"loss: {[float(x) for x in c.get('train_loss') or []]}")
                lines.append(f"accuracy: {[100.0 * float(a) for a in c.get('eval_acc') or []]}")
                out.append("\n".join(lines) + "\n")
            continue
        lines = [f"# cifarbench bench (throughput): {label(row)}"]
        for phase, key in PHASE_KEYS.items():
            stats = row.get(ROW_KEYS[phase]) or {}
            if stats.get("n"):
                lines += _range_lines(key, bs, stats)
        ev = row.get("eval_window_s") or {}
        if ev.get("n"):
            lines.append(f"test_run_ms:{int(ev['median'] * 1000):.3f}")
            lines.append(f"test_images:{row.get('eval_images')}")
        out.append("\n".join(lines) + "\n")
    return out


def append(path: str | Path, result: dict[str, Any]) -> Path:
    """Append this result's records to ``path`` (created if absent) in one atomic replace."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--bench-out {path} is a directory; give a file, e.g. {path / 'torch.cpu.cnn.bench.out'}")
    atomic.sweep_own_temp(path)  # what a killed append left
    old = path.read_bytes() if path.exists() else b""
    new = "".join(blocks(result)).encode()

    def write(fh) -> None:
        fh.write(old)
        atomic.kill_point("bench-out")  # tests: a kill here leaves the old records, whole
        fh.write(new)

    atomic.write_with(path, write)
    return path


def parse(text: str, name: str = "bench.out") -> list[dict[str, Any]]:
    """Every record of a .bench.out file (mikecvet's or ours): a new record starts at a ``#`` line or
    when a key repeats. Each: label, batch_size, ranges {key: {batch: (min, avg, max) µs, image: ...}},
    epoch_s (min, avg, max), test_ms, test_images, loss, accuracy (percent)."""
    recs: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None

    def start(lbl: str | None) -> dict[str, Any]:
        rec = {"label": lbl, "batch_size": None, "ranges": {}, "epoch_s": None, "test_ms": None,
               "test_images": None, "loss": [], "accuracy": []}
        recs.append(rec)
        return rec

    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            cur = start(line.split(":", 1)[1].strip() if ":" in line else line.lstrip("# "))
            continue
        key = _key(line)
        if cur is None or key in cur.get("_seen", set()):
            cur = start(None)
        cur.setdefault("_seen", set()).add(key)
        try:
            _read_line(cur, line)
        except (ValueError, SyntaxError):
            raise UsageError(f"{name}:{n}: not a .bench.out line: {raw[:80]!r}") from None
    for i, rec in enumerate(recs):
        rec.pop("_seen", None)
        rec["label"] = rec["label"] or (Path(name).name.removesuffix(".bench.out") + (f" #{i + 1}" if len(recs) > 1 else ""))
    return [r for r in recs if r["ranges"] or r["epoch_s"] or r["test_ms"] is not None or r["loss"]]


def _key(line: str) -> str:
    return re.split(r"[|:]", line, maxsplit=1)[0]


def _read_line(rec: dict[str, Any], line: str) -> None:
    m = _RANGE.match(line)
    if m:
        key, bs = m.group(1), int(m.group(2))
        rec["batch_size"] = bs
        rec["ranges"].setdefault(key, {})["batch"] = tuple(int(m.group(i)) for i in (3, 4, 5))
        return
    key, _, value = line.partition(":")
    if key.startswith("indiv_") and key.endswith("_range_us"):
        rec["ranges"].setdefault(key[6:-9], {})["image"] = tuple(int(v) for v in value.split(","))
    elif key.startswith("epoch_range_s"):
        bs = key.partition("|")[2]
        rec["batch_size"] = int(bs) if bs else rec["batch_size"]
        rec["epoch_s"] = tuple(float(v) for v in value.split(","))
    elif key == "test_run_ms":
        rec["test_ms"] = float(value)
    elif key == "test_images":
        rec["test_images"] = int(value)
    elif key in ("loss", "accuracy"):
        rec[key] = [float(v) for v in ast.literal_eval(value.strip())]
    else:
        raise ValueError(key)


def read(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    recs = parse(text, str(path))
    if not recs:
        raise UsageError(f"{path} holds no .bench.out records")
    return recs


def from_result(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of a bench result, as ``parse`` would read them back from its export."""
    return parse("".join(blocks(result)), "bench.json")
