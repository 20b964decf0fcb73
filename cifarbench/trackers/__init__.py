"""Experiment trackers: TensorBoard, MLflow, Weights & Biases and CSV, as sinks of the Reporter.

``--logger tensorboard,mlflow,wandb,csv`` (or ``logger:`` in a recipe) adds one sink per name to
the display reporter (``engine.reporter.Tee``). Each logs per-step scalars (``step/loss``,
``step/acc``: means over the steps since its previous point; ``step/lr``, ``step/images_per_s``),
per-epoch metrics (``epoch/train_loss``, ``epoch/val_acc``, ``epoch/time_s``, ...), the final test
(``test/loss``, ``test/acc``) and the resolved config as hyper-parameters, all at the global
optimizer step. The points are read where the progress display reads them (``Backend.running_stats``,
every ``--log-interval``), never with a device synchronisation of their own per step.

The libraries are optional extras, imported here only when asked for (``import cifarbench`` and
``--help`` import none of them); a missing one is exit 3 before any work.
"""

from __future__ import annotations

import importlib
from typing import Any

from cifarbench.errors import BackendUnavailable

# name -> (module:class, the library it needs or None, the extra that installs it)
TRACKERS: dict[str, tuple[str, str | None, str | None]] = {
    "tensorboard": ("cifarbench.trackers.tensorboard_sink:TensorBoardTracker", "tensorboard", "tensorboard"),
    "mlflow": ("cifarbench.trackers.mlflow_sink:MlflowTracker", "mlflow", "mlflow"),
    "wandb": ("cifarbench.trackers.wandb_sink:WandbTracker", "wandb", "wandb"),
    "csv": ("cifarbench.trackers.csv_sink:CsvTracker", None, None),
}


def tracker_class(name: str):
    """The tracker's class; its library is imported now, so a missing extra fails before any work."""
    target, library, extra = TRACKERS[name]
    if library is not None:
        try:
            importlib.import_module(library)
        except ImportError as exc:
            raise BackendUnavailable(f"--logger {name} needs the {library} package ({exc})",
                                     hint=f"pip install 'cifarbench[{extra}]'") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def make_trackers(names: list[str], config: dict[str, Any], interval: tuple, resume: bool) -> list:
    """One tracker per name (classes loaded first, so one missing extra refuses them all)."""
    classes = [tracker_class(n) for n in names]
    return [cls(config, interval, resume) for cls in classes]
