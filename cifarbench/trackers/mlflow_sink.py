"""``--logger mlflow``: an MLflow run in a file store ``<run>/mlruns/`` (``mlflow ui --backend-store-uri
<run>/mlruns``), or wherever ``$MLFLOW_TRACKING_URI`` points (a server, ``sqlite:///...``); experiment
``$MLFLOW_EXPERIMENT_NAME`` (default cifarbench).

The run id is kept in ``<run>/mlflow.json``; a resumed run logs on in that MLflow run. MLflow keeps
every value logged, so after a kill the points already logged past the checkpoint are not logged
a second time (the resumed run's first new point per metric comes after them).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from cifarbench import atomic
from cifarbench.trackers.base import Tracker

STATE = "mlflow.json"
MAX_PARAMS = 100  # MLflow's limit per log_batch call


class MlflowTracker(Tracker):
    name = "mlflow"

    def open(self, run_dir: Path, params: dict[str, Any], run_name: str, start_step: int) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the default: a file store in the run directory (MLflow 3 asks to allow it explicitly;
            # a SQLite store takes ~10 s of schema migrations per new run directory)
            uri = (run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.logged: dict[str, int] = {}  # metric -> the last step already in the store (resume)
        state_path = run_dir / STATE
        run_id = self._resumable(state_path) if self.resume else None
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "cifarbench"
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
            run = self.client.create_run(exp_id, run_name=run_name, tags={"mlflow.source.name": "cifarbench train"})
            run_id = run.info.run_id
            atomic.write_json(state_path, {"run_id": run_id, "experiment_id": exp_id, "tracking_uri": uri})
            self.run_id = run_id
            self._params(params)
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            for key in self.client.get_run(run_id).data.metrics:
                steps = [m.step for m in self.client.get_metric_history(run_id, key)]
                self.logged[key] = max(steps, default=-1)

    def _resumable(self, state_path: Path) -> str | None:
        try:
            run_id = json.loads(state_path.read_text())["run_id"]
            self.client.get_run(run_id)  # still in this store
            return run_id
        except Exception as exc:  # noqa: BLE001 - no state, or another store: a new MLflow run
            self.notes.append(f"mlflow: a new MLflow run (the previous one is not reachable: {type(exc).__name__})")
            return None

    def _params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[i:i + MAX_PARAMS])

    def log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ms, step) for k, v in scalars.items() if step > self.logged.get(k, -1)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def end(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "KILLED")
