"""Writing and reading the results database.

``record`` stores the records of one file in one transaction: all of a bench.json's rows or none.
A record whose content hash is already there is a duplicate and is skipped. Two writers that add
the same machine or the same result at once: the loser's transaction fails on the unique key, is
rolled back whole, and is retried; the retry sees the winner's rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Optional, Sequence

import sqlalchemy as sa

from cifarbench.results.ingest import canonical

RETRIES = 20
JSON_COLUMNS = ("config", "data")

_md = sa.MetaData()
machines = sa.Table("machines", _md, sa.Column("fingerprint_id", sa.String), sa.Column("first_seen", sa.String),
                    sa.Column("fingerprint", sa.Text))
COLUMNS = (
    "id", "content_hash", "kind", "created", "recorded", "source", "model", "backend", "device", "device_name",
    "precision", "batch_size", "dataset", "epochs", "seeds", "images_per_s", "images_per_s_min", "images_per_s_max",
    "accuracy", "accuracy_std", "total_time_s", "time_to_target_s", "target_acc", "fingerprint_id", "hostname",
    "code_version", "git_commit", "git_dirty", "config", "data",
)
results = sa.Table("results", _md, *(sa.Column(c) for c in COLUMNS))


@dataclass
class Stored:
    id: int
    new: bool  # False: a duplicate of the row with this id


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _insert_machine(conn: sa.Connection, fp: dict[str, Any]) -> None:
    fid = fp["fingerprint_id"]
    if conn.execute(sa.select(machines.c.fingerprint_id).where(machines.c.fingerprint_id == fid)).first() is None:
        conn.execute(machines.insert().values(fingerprint_id=fid, first_seen=_now(), fingerprint=canonical(fp)))


def _insert_result(conn: sa.Connection, rec: dict[str, Any], recorded: str) -> Stored:
    found = conn.execute(sa.select(results.c.id).where(results.c.content_hash == rec["content_hash"])).first()
    if found is not None:
        return Stored(found[0], False)
    values = {c: _clean(rec.get(c)) for c in COLUMNS if c not in ("id", "recorded")}
    for c in JSON_COLUMNS:
        values[c] = None if values[c] is None else json.dumps(values[c], default=str)
    values["recorded"] = recorded
    new_id = conn.execute(results.insert().values(**values).returning(results.c.id)).scalar_one()
    return Stored(new_id, True)


def record(engine: sa.Engine, records: Sequence[dict[str, Any]]) -> list[Stored]:
    """Store these records (one file's) in one transaction; duplicates are skipped, not stored twice."""
    if not records:
        return []
    last: Exception | None = None
    for _ in range(RETRIES):
        try:
            with engine.begin() as conn:
                recorded = _now()
                for fp in {r["fingerprint"]["fingerprint_id"]: r["fingerprint"] for r in records}.values():
                    _insert_machine(conn, fp)
                return [_insert_result(conn, r, recorded) for r in records]
        except sa.exc.IntegrityError as exc:  # a concurrent writer stored the same machine or result first
            last = exc
    raise RuntimeError(f"could not record after {RETRIES} tries: {last}")


# ----- reading ---------------------------------------------------------------------------
@dataclass
class Filters:
    model: Optional[list[str]] = None
    backend: Optional[list[str]] = None
    device: Optional[list[str]] = None
    precision: Optional[list[str]] = None
    kind: Optional[list[str]] = None
    machine: Optional[list[str]] = None  # fingerprint id (or a prefix of it) or host name
    since: Optional[str] = None  # UTC ISO time or date, inclusive
    until: Optional[str] = None  # a date alone means up to the end of that day
    ids: Optional[list[int]] = None


def _where(f: Filters) -> list:
    c = results.c
    conds = []
    for col, vals in ((c.model, f.model), (c.backend, f.backend), (c.device, f.device), (c.precision, f.precision),
                      (c.kind, f.kind)):
        if vals:
            conds.append(col.in_(vals))
    if f.machine:
        conds.append(sa.or_(*[sa.or_(c.fingerprint_id.startswith(m, autoescape=True), c.hostname == m) for m in f.machine]))
    if f.since:
        conds.append(c.created >= f.since)
    if f.until:
        conds.append(c.created <= (f.until + "T23:59:59Z" if len(f.until) == 10 else f.until))
    if f.ids:
        conds.append(c.id.in_(f.ids))
    return conds


def _row(m: sa.RowMapping, full: bool) -> dict[str, Any]:
    d = dict(m)
    for c in JSON_COLUMNS:
        if c in d:
            d[c] = json.loads(d[c]) if (full and d[c] is not None) else (d[c] if full else None)
    if not full:
        d.pop("config", None), d.pop("data", None)
    if d.get("git_dirty") is not None:
        d["git_dirty"] = bool(d["git_dirty"])
    return d


def query(engine: sa.Engine, f: Filters | None = None, full: bool = False, limit: int | None = None) -> list[dict[str, Any]]:
    """Matching results, oldest first; ``full`` also decodes config and data."""
    cols = [results.c[c] for c in COLUMNS if full or c not in JSON_COLUMNS]
    stmt = sa.select(*cols).where(*_where(f or Filters())).order_by(results.c.created, results.c.id)
    with engine.connect() as conn:
        rows = [_row(m, full) for m in conn.execute(stmt).mappings()]
    return rows[-limit:] if limit else rows


def get(engine: sa.Engine, result_id: int) -> dict[str, Any] | None:
    rows = query(engine, Filters(ids=[result_id]), full=True)
    return rows[0] if rows else None


def machine_fingerprints(engine: sa.Engine, ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    stmt = sa.select(machines.c.fingerprint_id, machines.c.fingerprint)
    if ids is not None:
        stmt = stmt.where(machines.c.fingerprint_id.in_(list(ids)))
    with engine.connect() as conn:
        return {fid: json.loads(fp) for fid, fp in conn.execute(stmt)}


def count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(results)).scalar_one())
