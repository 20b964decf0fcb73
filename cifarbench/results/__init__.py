"""The results database: every train and bench run recorded, pooled across machines.

``record_run`` is the one call train and bench make; it never raises (a failure to record
must not lose a run that already finished and wrote its files): it warns and carries on.
SQLAlchemy is imported only when a database is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional


def record_run(path: Path | str, url: Optional[str] = None, source: str = "",
               warn: Optional[Callable[[str], None]] = None, info: Optional[Callable[[str], None]] = None) -> list[int]:
    """Record the results file a run just wrote (bench.json or run_log.json); returns the new ids."""
    try:
        from cifarbench.results.db import connect, shown_url
        from cifarbench.results.ingest import read_file
        from cifarbench.results.store import record

        records = read_file(path)
        for r in records:
            r["source"] = source or r["source"]
        engine = connect(url)
        stored = record(engine, records)
        engine.dispose()
        ids = [s.id for s in stored]
        if info and ids:
            info(f"recorded as result {', '.join(map(str, ids))} in {shown_url(str(engine.url))}")
        return ids
    except Exception as exc:  # noqa: BLE001 - by design: warn, never fail the run
        msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if warn:
            warn(f"results not recorded in the database ({msg}); the run's files are intact: "
                 f"`cifarbench results import {path}` records them later")
        return []
