"""The files a run writes keep their keys and values: metrics.jsonl, metrics.csv, run_log.json,
the checkpoint manifest's rows (a finished run's and an interrupted one's partial epoch) and
``train --json``.

The expected outputs in ``golden/trainer_outputs.json`` were written by the trainer as it was
before the typed records (EpochRecord, RunSummary) replaced its dicts, on the fake backend, whose
sums are exact: every value that no clock, path or machine decides must come back identical, in
the same key order. Regenerate only on purpose: CIFARBENCH_WRITE_GOLDEN=1 python -m pytest <this file>.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cifarbench.config import build_config
from cifarbench.engine.trainer import Trainer
from conftest import invoke
from fake_backend import FakeBackend, fake  # noqa: F401 - fake is a fixture

GOLDEN = Path(__file__).parent / "golden" / "trainer_outputs.json"

# decided by a clock (the fake sleeps 0 s, but the phases around its steps take time)
CLOCKED = {"train_time_s", "eval_time_s", "epoch_time_s", "elapsed_s", "warmup_s", "images_per_s", "total_time_s",
           "time_per_epoch_s", "test_time_s", "training_time_seconds", "seconds", "saved_at", "timestamp"}
# decided by the machine, the command line or the software installed, or other features' fields
ELSEWHERE = {"fingerprint", "fingerprint_id", "hardware", "command_line", "config", "files", "device_name", "recipe"}


def _canon(obj: Any, tmp: str) -> Any:
    """Keys and order kept; clocked values reduced to their type, paths made relative to the test's folder."""
    if isinstance(obj, dict):
        return {k: (type(v).__name__ if k in CLOCKED else "<elsewhere>" if k in ELSEWHERE else _canon(v, tmp))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_canon(v, tmp) for v in obj]
    if isinstance(obj, str):
        return obj.replace(tmp, "<tmp>")
    return obj


def _csv(path: Path) -> dict[str, Any]:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    header = rows[0]
    body = [[("<clock>" if h in CLOCKED else v) for h, v in zip(header, r)] for r in rows[1:]]
    return {"header": header, "rows": body}


def _files(run: Path, tmp: str) -> dict[str, Any]:
    jsonl = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {"metrics.jsonl": _canon(jsonl, tmp), "metrics.csv": _csv(run / "metrics.csv"),
            "checkpoint.json": _canon(json.loads((run / "checkpoint.json").read_text()), tmp)}


def _cfg(data: str, out: Path, **kw):
    # 96 images, 16 held out: 80 to train in batches of 24 (3 steady steps, then one of 8), 3 epochs
    return build_config(None, {"model": "cnn", "dataset": data, "backend": "fake", "epochs": 3, "batch_size": 24,
                               "val_split": 16, "augment": "none", "output": str(out), "sched": "onecycle",
                               "lr": 0.05, "seed": 3, **kw})


def test_outputs_match_the_files_written_before_the_typed_records(tiny_npz, tmp_path, fake):
    fake.warm_s = fake.step_s = 0.0
    tmp = str(tmp_path)
    got: dict[str, Any] = {}

    Trainer(_cfg(tiny_npz, tmp_path / "run")).run()
    got["finished"] = _files(tmp_path / "run", tmp)
    got["finished"]["run_log.json"] = _canon(json.loads((tmp_path / "run" / "run_log.json").read_text()), tmp)

    fake.calls, fake.interrupt_at = [], 7  # call 7: epoch 2, its third step (a partial epoch is saved)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(tiny_npz, tmp_path / "int")).run()
    got["interrupted"] = _files(tmp_path / "int", tmp)
    fake.calls, fake.interrupt_at = [], None
    Trainer(_cfg(tiny_npz, tmp_path / "int"), run_dir=tmp_path / "int", resume=True).run()
    got["resumed"] = _files(tmp_path / "int", tmp)

    res = invoke(["train", "-m", "cnn", "--dataset", tiny_npz, "--backend", "fake", "--epochs", "1", "-b", "24",
                  "--augment", "none", "--val-split", "16", "--seed", "3", "-o", str(tmp_path / "cli"), "--json",
                  "--no-record", "--quiet"])
    assert res.exit_code == 0, res.output
    got["--json"] = _canon(json.loads(res.stdout), tmp)

    if os.environ.get("CIFARBENCH_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(GOLDEN.read_text())
    for part in want:  # one part at a time: a failure names the file
        assert json.dumps(got[part], indent=1) == json.dumps(want[part], indent=1), part  # key order included
    # the resumed run wrote the rows the uninterrupted one wrote (the manifests differ in position only)
    assert got["resumed"]["metrics.jsonl"] == got["finished"]["metrics.jsonl"]
    assert got["resumed"]["metrics.csv"] == got["finished"]["metrics.csv"]
