"""A torchrun rank and its share of a global batch: framework-free, imported by backends and engine alike."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def shard(start: int, stop: int, rank: int, world: int) -> tuple[int, int]:
    """Rank's contiguous slice of [start, stop): sizes differ by at most one, lower ranks take the extra.

    A global batch smaller than the world leaves some ranks an empty slice; they still join
    the gradient all-reduce (contributing zero), so every rank steps in lockstep.
    """
    n = stop - start
    base, extra = divmod(n, world)
    lo = start + rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)
