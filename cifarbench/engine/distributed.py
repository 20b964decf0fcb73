"""Multi-process training under torchrun: detection, the per-rank shard, and the backend factory.

torchrun starts one process per GPU with RANK, WORLD_SIZE and LOCAL_RANK in the environment.
Each process runs the same engine loop, so every rank draws the same seeded order and
augmentation; the global batch order[start:stop] keeps the config's batch size and rank r
trains on its contiguous slice of it (``shard``). The backend averages gradients so one
optimizer step equals the single-process step on the whole global batch, all-reduces the
epoch statistics and gathers evaluation logits, so every rank holds the global truth; rank 0
alone reports and writes the run directory.

This module is framework-free. A backend that can train on ranks says so (``Backend.for_rank``);
only the PyTorch backend does, in ``backends/torch_backend/distributed.py``, and
``backends.create_distributed`` is the one place that asks. Nothing here imports a backend.
"""

from __future__ import annotations

import os
from typing import Mapping

from cifarbench.backends.ranks import DistEnv, shard
from cifarbench.errors import UsageError

__all__ = ["DistEnv", "detect", "is_main_process", "shard", "shutdown"]


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


def shutdown() -> None:
    """Leave the process group (if this process joined one); a no-op otherwise."""
    import sys

    if "torch.distributed" not in sys.modules:  # never import torch just to find nothing to close
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
