"""Multi-process training under torchrun: detection, the per-rank shard, and the backend factory.

torchrun starts one process per GPU with RANK, WORLD_SIZE and LOCAL_RANK in the environment.
Each process runs the same engine loop, so every rank draws the same seeded order and
augmentation; the global batch order[start:stop] keeps the config's batch size and rank r
trains on its contiguous slice of it (``shard``). The backend averages gradients so one
optimizer step equals the single-process step on the whole global batch, all-reduces the
epoch statistics and gathers evaluation logits, so every rank holds the global truth; rank 0
alone reports and writes the run directory.

This module is framework-free: only the PyTorch backend (torch.distributed) implements the
collective side, in ``backends/torch_backend/distributed.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from cifarbench.errors import UsageError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The torchrun rank of this process, or None for an ordinary single-process run.

    WORLD_SIZE=1 (``torchrun --nproc-per-node 1``) is a plain run: nothing to share.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        bad = f"RANK={env.get('RANK')!r} WORLD_SIZE={env.get('WORLD_SIZE')!r}"
        raise UsageError(f"torchrun environment is malformed: {bad}") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"torchrun environment is inconsistent: RANK={rank} WORLD_SIZE={world}")
    return None if world == 1 else DistEnv(rank, world, local)


def is_main_process(environ: Mapping[str, str] | None = None) -> bool:
    """False on ranks > 0 of a torchrun job (they stay silent and write nothing)."""
    env = detect(environ)
    return env is None or env.is_main


def shard(start: int, stop: int, rank: int, world: int) -> tuple[int, int]:
    """Rank's contiguous slice of [start, stop): sizes differ by at most one, lower ranks take the extra.

    A global batch smaller than the world leaves some ranks an empty slice; they still join
    the gradient all-reduce (contributing zero), so every rank steps in lockstep.
    """
    n = stop - start
    base, extra = divmod(n, world)
    lo = start + rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def check_backend(backend: str, device: str | None) -> None:
    """Only the PyTorch backend speaks torch.distributed; say so in one line before loading data."""
    from cifarbench.backends import resolve

    name, _ = resolve(backend, device)
    if name != "torch":
        raise UsageError(
            f"multi-process training (torchrun) needs --backend torch; backend '{name}' trains in one process",
            hint=f"run `cifarbench train --backend {name} ...` without torchrun",
        )


def create_backend(env: DistEnv, backend: str, device: str, options, seed: int):
    """The torch backend wrapped for data-parallel training on this rank."""
    from cifarbench.backends import resolve

    check_backend(backend, device)
    _, dev = resolve(backend, device)
    from cifarbench.backends.torch_backend.distributed import DistributedTorchBackend

    if dev in (None, "auto"):
        dev = DistributedTorchBackend.auto_device()
    return DistributedTorchBackend(dev, options, seed, env)


def shutdown() -> None:
    """Leave the process group (if this process joined one); a no-op otherwise."""
    import sys

    if "torch.distributed" not in sys.modules:  # never import torch just to find nothing to close
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
