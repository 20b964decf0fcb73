"""A run directory belongs to one process: an exclusive lock, no silent overwrite, no leftovers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cifarbench import checkpoint as ckpt
from cifarbench.errors import UsageError

LOCK = ".lock"
# what a training run writes; --overwrite removes these and nothing else
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "run_log.json", ckpt.WEIGHTS, ckpt.OPTIMIZER,
             ckpt.SIDECAR)
TRACKER_FILES = ("tb", "csv", "mlruns", "wandb", "mlflow.json", "wandb.json")  # what --logger writes (trackers/)


class RunDirLock:
    """``fcntl.flock`` on ``<run>/.lock``, holding the owner's PID. The kernel drops the lock when
    its process dies, so a lock left by a killed run is simply taken over."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None
        self._made = False

    def acquire(self) -> "RunDirLock":
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs there are not locked (README)
            return self
        self._made = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(f"run directory {self.path.parent} is in use by another cifarbench process (PID {holder})",
                             hint="wait for it to finish, or choose another -o") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        if self._made and [p.name for p in self.path.parent.iterdir()] == [LOCK]:
            self.path.unlink()  # a run that failed before writing anything leaves no folder behind
            self.path.parent.rmdir()
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def refuse_existing(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """A new run never lands on an existing one unless told (checked before the lock, so a refused
    run touches nothing, and again under it)."""
    if not resume and not overwrite and ckpt.has_checkpoint(run_dir):
        raise UsageError(f"{run_dir} already holds a run (a checkpoint)",
                         hint=f"continue it with --resume {run_dir}, or pass --overwrite to replace it")


def prepare(run_dir: Path, resume: bool, overwrite: bool) -> list[str]:
    """Under the lock: refuse to train over an existing run unless told (or clear it for
    --overwrite), then sweep temp files. Returns the names of the leftovers removed."""
    run_dir = Path(run_dir)
    refuse_existing(run_dir, resume, overwrite)
    if not resume and ckpt.has_checkpoint(run_dir):
        _remove_run(run_dir)
    return ckpt.clean_temp(run_dir)


def _remove_run(run_dir: Path) -> None:
    (run_dir / ckpt.BEST).unlink(missing_ok=True)
    shutil.rmtree(run_dir / ckpt.GENERATIONS, ignore_errors=True)
    for name in RUN_FILES + TRACKER_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
