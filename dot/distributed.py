"""Data parallelism through `torchrun` (gloo on CPU, nccl on GPU) with plain all-reduce.

Gradients are summed across processes after the local backward passes: every backbone's loss
is already its share of the global-batch mean, so the sum is the global gradient. This keeps
any backbone (one module or several) data-parallel without wrapping it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Context:
    """Join the process group when launched by torchrun; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Context(rank, world, dev)


def all_reduce_sum_(tensors: list[torch.Tensor]) -> None:
    """In-place sum over processes (no-op in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


def sync_gradients(model: nn.Module) -> None:
    """Sum gradients over processes; a parameter without a gradient counts as zero, so every
    process reduces the same tensors."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_sum_([p.grad for p in params])


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
