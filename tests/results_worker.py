"""One concurrent writer for test_results_db: records COUNT distinct bench files and one shared file.

Usage: python results_worker.py URL WORKER COUNT TEMPLATE GO_FILE [FAULT]
Waits until GO_FILE exists so that every writer starts at once; prints a JSON summary.
FAULT 'after_first_row' ends the process (os._exit) inside the transaction, after its first row.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    url, worker, count, template, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
    fault = sys.argv[6] if len(sys.argv) > 6 else ""
    from cifarbench.results import store
    from cifarbench.results.db import connect
    from cifarbench.results.ingest import from_bench

    if fault == "after_first_row":
        real = store._insert_result

        def dying(conn, rec, recorded):
            real(conn, rec, recorded)
            os._exit(9)  # killed mid-transaction: the row above is written but not committed
        store._insert_result = dying
    doc = json.loads(Path(template).read_text())
    engine = connect(url)
    (go.parent / f"ready{worker}").touch()
    while not go.exists():
        time.sleep(0.005)
    t0 = time.perf_counter()
    ids, shared = [], []
    for j in range(count):
        d = dict(doc, created=f"2026-11-{1 + worker % 28:02d}T{worker % 24:02d}:{j // 60:02d}:{j % 60:02d}+00:00")
        ids += [s.id for s in store.record(engine, from_bench(d, f"worker{worker}"))]
    shared = [(s.id, s.new) for s in store.record(engine, from_bench(doc, f"worker{worker}"))]
    print(json.dumps({"worker": worker, "ids": ids, "shared": shared, "elapsed_s": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
