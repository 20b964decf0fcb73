"""``--logger csv``: every tracker point as a row of ``<run>/csv/scalars.csv`` (step, name, value, wall_time).

The file is appended to (one flushed line per scalar), so a killed run keeps what it logged. A
resumed run first drops the rows past the step it goes on from (a killed run's last points,
which it logs again) and then appends: each (step, name) is in the file once. The
hyper-parameters are the run's ``config.yaml``.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from cifarbench import atomic
from cifarbench.trackers.base import Tracker

HEADER = ("step", "name", "value", "wall_time")
FOLDER, FILE = "csv", "scalars.csv"


def read_rows(path: Path) -> list[tuple[int, str, float, float]]:
    """The well-formed rows of a scalars.csv (a line cut short by a kill is left out)."""
    rows = []
    if not path.is_file():
        return rows
    for rec in csv.reader(io.StringIO(path.read_text(errors="replace"))):
        if len(rec) != 4 or rec[0] == "step":
            continue
        try:
            rows.append((int(rec[0]), rec[1], float(rec[2]), float(rec[3])))
        except ValueError:
            continue
    return rows


class CsvTracker(Tracker):
    name = "csv"

    def open(self, run_dir: Path, params: dict[str, Any], run_name: str, start_step: int) -> None:
        folder = run_dir / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / FILE
        kept = [r for r in read_rows(self.path) if r[0] <= start_step] if self.resume else []
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(HEADER)
        w.writerows((s, n, repr(v), f"{t:.3f}") for s, n, v, t in kept)
        atomic.write_text(self.path, buf.getvalue())  # all or nothing: the old rows survive a kill here
        self.file = open(self.path, "a", newline="")
        self.writer = csv.writer(self.file, lineterminator="\n")

    def log(self, scalars: dict[str, float], step: int) -> None:
        now = f"{time.time():.3f}"
        self.writer.writerows((step, name, repr(float(value)), now) for name, value in scalars.items())
        self.file.flush()

    def end(self, ok: bool) -> None:
        self.file.close()
