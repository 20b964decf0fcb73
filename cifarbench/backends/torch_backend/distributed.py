"""Data-parallel training over torch.distributed: one process per GPU (nccl) or CPU rank (gloo).

The engine hands every rank the same global step (order[start:stop]); this backend trains on
the rank's shard of it inside DistributedDataParallel and keeps the single-process meaning:

- gradients: DDP averages over ranks. Each rank backpropagates its loss *sum* times
  world / global_batch, so the average is exactly the mean over the global batch, even when
  the last batch splits unevenly (or leaves a rank empty);
- BatchNorm: on CUDA the model is converted to SyncBatchNorm, so batch statistics (and hence the
  forward pass and the running statistics) are those of the global batch, as in one process.
  torch's SyncBatchNorm refuses CPU tensors, so on gloo/CPU each rank normalises with its own
  shard's statistics (what plain DDP does): training then differs from one process by the
  usual small-batch BN effect, and the ranks' running statistics are averaged at every epoch end
  so evaluation and checkpoints use one consistent set;
- dropout: each rank draws masks from its own stream (seeded by the epoch seed and the rank);
- epoch statistics are all-reduced; evaluation is split over ranks and the logits gathered, so
  every rank returns the whole split's logits (the engine's metrics are the global truth).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cifarbench.backends.base import EpochStats, TrainOptions
from cifarbench.backends.torch_backend.backend import TorchBackend
from cifarbench.backends.ranks import DistEnv, shard
from cifarbench.errors import BackendUnavailable, UsageError
from cifarbench.models.spec import ModelSpec


def _ddp(module: nn.Module, device_ids: list[int] | None) -> nn.parallel.DistributedDataParallel:
    # Buffers are reconciled once per epoch (end_epoch), not broadcast from rank 0 at every forward.
    # torch 2.13 renamed the switch; older releases only know broadcast_buffers.
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    kw = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **kw)


class DistributedTorchBackend(TorchBackend):
    """TorchBackend on one rank of a torchrun job."""

    def __init__(self, device: str, options: TrainOptions, seed: int, env: DistEnv):
        if device not in ("cuda", "cpu"):
            raise UsageError(f"multi-process training runs on cuda (nccl) or cpu (gloo), not '{device}'")
        if device == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable("torch device 'cuda' is not available on this rank")
            if env.local_rank >= torch.cuda.device_count():
                raise UsageError(
                    f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPU(s) visible",
                    hint="torchrun --nproc-per-node must not exceed the GPUs on the node",
                )
            torch.cuda.set_device(env.local_rank)  # torch.device("cuda") now means this rank's GPU
        super().__init__(device, options, seed)
        self.env = env
        self._rank, self._world = env.rank, env.world_size
        if not dist.is_initialized():
            kw = {"device_id": torch.device("cuda", env.local_rank)} if device == "cuda" else {}
            dist.init_process_group("nccl" if device == "cuda" else "gloo", **kw)
        if dist.get_world_size() != self._world or dist.get_rank() != self._rank:
            raise UsageError("the process group disagrees with RANK/WORLD_SIZE")
        self._sync_bn = device == "cuda"
        self._train_call = None

    # ----- model -----------------------------------------------------------------------
    def build(self, spec: ModelSpec, state: dict[str, np.ndarray]) -> None:
        super().build(spec, state)
        net = self._net
        if self._sync_bn:
            converted = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            assert converted is net, "a model whose root is a BatchNorm cannot be converted in place"
            leaf = getattr(net, "_leaf", None)  # SpecNet calls its layers through this table: refresh it
            if isinstance(leaf, dict):
                net._leaf = {name: net.get_submodule(name) for name in leaf}
        device_ids = [self._dev.index if self._dev.index is not None else torch.cuda.current_device()] \
            if self._dev.type == "cuda" else None
        ddp = _ddp(net, device_ids)
        # self._call (the plain or compiled net) stays the eval path: no collectives in predict's forward
        self._train_call = torch.compile(ddp, mode=self._compile_mode) if self._compile else ddp

    # ----- steps -----------------------------------------------------------------------
    def begin_epoch(self, order: np.ndarray, offsets: np.ndarray | None, flips: np.ndarray | None, seed: int) -> None:
        super().begin_epoch(order, offsets, flips, seed)
        self._dropper.seed(int(np.random.SeedSequence([seed, self._rank]).generate_state(1)[0]))

    def _rows(self, start: int, stop: int) -> tuple[int, int]:
        return shard(start, stop, self._rank, self._world)

    def _loss(self, x: torch.Tensor, y: torch.Tensor, global_batch: int):
        logits = self._train_call(x)
        loss_sum = F.cross_entropy(logits.float(), y, label_smoothing=self.options.label_smoothing, reduction="sum")
        # DDP divides the summed gradients by the world size; this factor turns that into the global-batch mean
        return logits, loss_sum * (self._world / max(global_batch, 1)), loss_sum.detach()

    def end_epoch(self) -> EpochStats:
        if not self._sync_bn:
            self.average_buffers()
        totals = torch.stack([
            self._loss_sum.double(), self._correct.double(),
            torch.tensor(float(self._count), dtype=torch.float64, device=self._dev),
        ])
        dist.all_reduce(totals)
        loss_sum, correct, count = totals.tolist()  # synchronises
        self._reset_stats()
        return EpochStats(loss_sum=loss_sum, correct=int(round(correct)), count=int(round(count)))

    def average_buffers(self) -> None:
        """Make the ranks' BN running statistics one set (their mean), in one all-reduce."""
        bufs = [self._tensors[n] for n in self.spec.buffer_shapes() if self._tensors[n].is_floating_point()]
        if not bufs:
            return
        flat = torch.cat([b.detach().reshape(-1).float() for b in bufs])
        dist.all_reduce(flat)
        flat /= self._world
        with torch.no_grad():
            offset = 0
            for b in bufs:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()

    # ----- evaluation ------------------------------------------------------------------
    def _predict(self, split: str, batch_size: int) -> np.ndarray:
        """Each rank predicts its contiguous share of the split; all ranks return all logits."""
        n = self._data.size(split)
        lo, hi = shard(0, n, self._rank, self._world)
        rows, classes = -(-n // self._world), self.spec.num_classes
        local = torch.zeros((rows, classes), dtype=torch.float32, device=self._dev)
        self._set_mode(False)
        with torch.inference_mode(), self._autocast():
            for s in range(lo, hi, batch_size):
                e = min(s + batch_size, hi)
                local[s - lo:e - lo] = self._eval_call(self._data.eval_batch(split, s, e))
        gathered = [torch.empty_like(local) for _ in range(self._world)]
        dist.all_gather(gathered, local)
        sizes = [shard(0, n, r, self._world) for r in range(self._world)]
        logits = torch.cat([g[: b - a] for g, (a, b) in zip(gathered, sizes)])
        return np.ascontiguousarray(logits.cpu().numpy())

    def describe(self) -> str:
        return f"{super().describe()} x {self._world} ranks ({dist.get_backend()})"
