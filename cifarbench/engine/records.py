"""What a run measures, as typed records: one epoch's row, the run's plan and its summary.

The files keep their dict form (metrics.jsonl/csv rows, the checkpoint manifest's ``records`` and
``partial_epoch``, run_log.json, ``train --json``): ``to_dict`` writes the keys in field order and
``from_dict`` reads them back, here and nowhere else. Rows written by older versions lack fields
added since (``dropout``, ``train_images``, ``warmup_s``): they read with those fields' defaults.

Reporters receive these records. Attribute access is the interface; ``record["key"]`` and
``.get``/``.keys``/``.items`` still work, with a DeprecationWarning, for a reporter written against
the old dicts (transitional: to be removed once no sink reads them).
"""

from __future__ import annotations

import warnings
from dataclasses import MISSING, dataclass, fields
from typing import Any, Mapping

__all__ = ["EpochTrain", "EpochRecord", "RunInfo", "RunSummary", "METRIC_FIELDS", "RecordError"]


class RecordError(ValueError):
    """A stored row or summary lacks a field or holds the wrong kind of value."""


class _Record:
    """to_dict/from_dict over the dataclass fields, plus read-only mapping access (transitional)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Unknown keys are left out (a newer writer's); a missing required one is a RecordError."""
        if not isinstance(data, Mapping):
            raise RecordError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        known = fields(cls)  # type: ignore[arg-type]
        missing = [f.name for f in known if f.name not in data and f.default is MISSING]
        if missing:
            raise RecordError(f"{cls.__name__} lacks {', '.join(missing)}")
        return cls(**{f.name: data[f.name] for f in known if f.name in data})

    # transitional: reporters written against the dicts keep working, with a warning; use attributes
    def __getitem__(self, key: str) -> Any:
        _transitional(type(self).__name__, key)
        if key not in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def keys(self) -> list[str]:
        _transitional(type(self).__name__, "keys()")
        return [f.name for f in fields(self)]  # type: ignore[arg-type]

    def items(self) -> list[tuple[str, Any]]:
        _transitional(type(self).__name__, "items()")
        return list(self.to_dict().items())


def _transitional(cls: str, what: str) -> None:
    warnings.warn(f"{cls}[{what!r}] / .get/.keys/.items are transitional: read the attribute, or call to_dict()",
                  DeprecationWarning, stacklevel=3)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True, kw_only=True)
class EpochTrain(_Record):
    """What one epoch's training phase measured (the evaluation adds the rest of the record).

    Saved in a mid-epoch checkpoint (``partial_epoch``) and added to what the resumed part measures.
    """

    loss_sum: float  # over the samples trained
    correct: int
    count: int
    seconds: float  # wall time of the phase, device synchronised at both ends
    lr: float  # of the last step
    momentum: float
    images: int  # trained in the phase
    warmup_s: float  # first steps of new batch sizes (compile/JIT), timed apart
    warmup_images: int

    def __add__(self, later: EpochTrain) -> EpochTrain:
        last = later if later.images else self
        return EpochTrain(
            loss_sum=self.loss_sum + later.loss_sum, correct=self.correct + later.correct,
            count=self.count + later.count, seconds=self.seconds + later.seconds, lr=last.lr,
            momentum=last.momentum, images=self.images + later.images, warmup_s=self.warmup_s + later.warmup_s,
            warmup_images=self.warmup_images + later.warmup_images,
        )

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    def steady_images_per_s(self) -> float:
        """Images/s over the steady steps; an epoch made only of warm-up steps keeps the plain ratio."""
        images, seconds = self.images, self.seconds
        if self.images > self.warmup_images:
            images, seconds = self.images - self.warmup_images, self.seconds - self.warmup_s
        return images / seconds if seconds > 0 else 0.0


@dataclass(frozen=True, kw_only=True)
class EpochRecord(_Record):
    """One finished epoch: a row of metrics.jsonl/metrics.csv and of the checkpoint manifest."""

    epoch: int  # 1-based
    train_loss: float  # mean over the epoch's training samples
    train_acc: float
    eval_split: str  # "val" or "test"
    eval_loss: float
    eval_acc: float
    lr: float  # of the epoch's last step
    momentum: float
    dropout: float | None = None  # the rate trained with (None: the model has no dropout)
    train_images: int | None = None  # trained in this epoch (resumed parts included)
    images_per_s: float  # over the steady steps
    train_time_s: float
    eval_time_s: float
    epoch_time_s: float  # training + evaluation
    elapsed_s: float  # since the run started (resumed runs: their earlier parts included)
    warmup_s: float = 0.0  # first steps of new batch sizes, excluded from images_per_s


# metrics.csv: every EpochRecord field but train_images, in field order
METRIC_FIELDS = tuple(f.name for f in fields(EpochRecord) if f.name != "train_images")


@dataclass(frozen=True, kw_only=True)
class RunInfo(_Record):
    """What is about to run (``Reporter.start``); the summary starts with the same fields."""

    model: str
    params: int
    dataset: str
    train_images: int
    eval_split: str
    eval_images: int
    test_images: int
    backend: str
    device: str
    device_name: str
    precision: str
    epochs: int  # after --max-steps (the last may be partial)
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    start_epoch: int  # epochs done before this process (resume)
    start_step: int = 0  # global steps done before this process (where a resumed run goes on)
    run_dir: str
    writes: bool  # False: nothing is written (no -o with --fast-dev-run, bench without a folder)
    recipe: str | None  # the resolved recipe in one line


@dataclass(frozen=True, kw_only=True)
class RunSummary(RunInfo):
    """The finished run (``Reporter.finish``, ``Trainer.run``'s result, ``train --json``, run_log.json)."""

    total_time_s: float  # every epoch's training and evaluation, plus the final test
    train_time_s: float
    time_per_epoch_s: float | None
    images_per_s: float | None  # median over the epochs after the first (the only one if just one)
    warmup_s: float
    final_train_loss: float | None
    final_train_acc: float | None
    final_val_acc: float | None  # None when no validation split is held out
    test_accuracy: float
    test_loss: float
    test: dict[str, Any]  # engine.metrics.evaluate_logits of the final test (per class, confusion matrix)
    test_time_s: float | None = None  # the final test (TTA included)
    checkpoint: str | None  # the weights file, None when nothing is written
    class_names: tuple[str, ...]
    seed: int
    forward_macs: int | None  # per image (models.summary); None for another library's modules (tv:)
    train_flops_per_image: int | None
    train_pflops: float | None  # of the whole run, resumed parts included
