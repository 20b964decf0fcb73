"""``--logger wandb``: a Weights & Biases run in ``<run>/wandb/``, offline unless ``$WANDB_MODE`` says
otherwise (``wandb sync <run>/wandb/offline-run-*`` uploads it later); project ``$WANDB_PROJECT``
(default cifarbench).

The run id is kept in ``<run>/wandb.json`` and a resumed run asks W&B to resume it
(``resume="allow"``); offline, W&B writes the resumed part as a second local run with that id.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from cifarbench import atomic
from cifarbench.trackers.base import Tracker

STATE = "wandb.json"


class WandbTracker(Tracker):
    name = "wandb"

    def open(self, run_dir: Path, params: dict[str, Any], run_name: str, start_step: int) -> None:
        import wandb

        state_path = run_dir / STATE
        run_id = None
        if self.resume and state_path.is_file():
            try:
                run_id = json.loads(state_path.read_text())["run_id"]
            except (ValueError, KeyError):
                run_id = None
        run_id = run_id or uuid.uuid4().hex[:8]  # W&B's own style of id
        atomic.write_json(state_path, {"run_id": run_id})
        self.start_step = start_step
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "cifarbench", name=run_name, id=run_id, resume="allow",
            dir=str(run_dir), config=params, mode=os.environ.get("WANDB_MODE") or "offline",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def end(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)
