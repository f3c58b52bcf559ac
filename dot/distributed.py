"""Data parallelism on torch's own engine, launched by `torchrun` (gloo on CPU, nccl on GPU).

`training.strategy` (docs/SCALING.md):
  none  one process;
  ddp   `DistributedDataParallel`: bucketed all-reduce overlapped with backward, `no_sync`
        during gradient accumulation (the default under torchrun);
  zero  DDP plus `ZeroRedundancyOptimizer`: each process keeps the Adam state of its share of
        the parameters, as the official Plaid trainer does;
  fsdp  FSDP2 `fully_shard` on every transformer block and on the root: parameters, gradients
        and optimizer state sharded; bf16 compute with float32 reduction on GPU.

Every backbone's loss is already its share of the global-batch mean (see `Backbone.loss`), so
the gradient wanted is the *sum* over processes; DDP gets a summing communication hook and
FSDP a divide factor of 1, instead of their default mean. The backbone's loss is called through
`LossModule`, one module whose forward the wrappers see, whatever number of sub-modules the
backbone has. Checkpoints always hold full (unsharded) tensors in the one-process layout, so
any strategy resumes any other and the backbones' official exports read them unchanged.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dot.sharded import LocalShard

STRATEGIES = ("auto", "none", "ddp", "zero", "fsdp")


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup(device: str = "auto") -> Context:
    """Join the process group when launched by torchrun; pick the device.

    The timeout is long because the other processes wait at their next collective while
    process 0 decodes the periodic and final evaluations.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if world == 1 and device != "auto":
        dev = torch.device(device)  # one process: the device asked for, e.g. cuda:1
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(hours=2))
    return Context(rank, world, dev)


def resolve_strategy(name: str, world_size: int) -> str:
    """`auto` is ddp under torchrun and none in one process; a multi-process strategy in one
    process is none (nothing to split)."""
    if name not in STRATEGIES:
        raise ValueError(f"training.strategy={name!r}: use one of {', '.join(STRATEGIES)}")
    if world_size == 1:
        return "none"
    if name == "none":
        raise ValueError(f"training.strategy=none with {world_size} processes would train "
                         "unsynchronised copies; use ddp, zero or fsdp (or auto)")
    return "ddp" if name == "auto" else name


def all_reduce_sum_(tensors: list[Tensor]) -> None:
    """In-place sum over processes (no-op in a single process)."""
    if not is_initialized() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_initialized() else (0, 1)


def gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order, on every process."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def teardown() -> None:
    if is_initialized():
        dist.destroy_process_group()


class LossModule(nn.Module):
    """`backbone.loss` (or `eval_loss`) as the forward of one module holding `model`, so a
    DDP / FSDP wrapper sees one forward per micro-batch."""

    def __init__(self, model: nn.Module, loss: Callable, eval_loss: Callable):
        super().__init__()
        self.model = model
        self._loss, self._eval_loss = loss, eval_loss

    def forward(self, batch: Any, rng: Any, train: bool = True) -> tuple[Tensor, dict[str, float]]:
        return (self._loss if train else self._eval_loss)(batch, rng)


def _sum_hook(_state, bucket):  # no annotations: DDP checks them against its own types
    """DDP communication hook: sum the bucket over processes (DDP's default divides by the
    world size)."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def full_tensors(obj: Any) -> Any:
    """Copy of a (nested) state with every sharded DTensor gathered into a plain CPU tensor.

    Collective under FSDP: every process must call it on states of the same structure.
    """
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        return obj.full_tensor().cpu()
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: full_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(full_tensors(v) for v in obj)
    return obj


def shaped_like(value: Tensor | LocalShard, ref: Tensor) -> Tensor:
    """A full tensor (or this process's `LocalShard` of one) placed as `ref` is: the same
    shard of the same mesh for a DTensor `ref`."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(value, LocalShard):
        return DTensor.from_local(value.tensor.to(ref.device, ref.dtype), ref.device_mesh,
                                  ref.placements, shape=ref.shape, stride=ref.stride())
    if isinstance(ref, DTensor):
        return distribute_tensor(value.to(ref.device, ref.dtype), ref.device_mesh, ref.placements)
    return value.to(ref.device)


class Engine:
    """What the trainer asks of a parallel strategy: the module to call, the optimizer,
    gradient sync control, the gradient norm and full (unsharded) states."""

    def __init__(self, strategy: str, ctx: Context, model: nn.Module, loss: Callable,
                 eval_loss: Callable, shard_units: list[nn.Module],
                 activation_checkpointing: bool = False):
        self.strategy, self.ctx, self.model = strategy, ctx, model
        self.replicated: list[Tensor] = []  # parameters outside FSDP (fsdp only)
        self.module: nn.Module = LossModule(model, loss, eval_loss)
        if activation_checkpointing:
            from torch.distributed._composable import checkpoint
            for unit in shard_units:
                checkpoint(unit)
        if strategy in ("ddp", "zero"):
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            # buffers (Plaid's loss-statistics EMAs) are kept equal by the backbones themselves
            self.module = DDP(self.module, device_ids=ids, broadcast_buffers=False)
            self.module.register_comm_hook(None, _sum_hook)
        elif strategy == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
            mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if ctx.device.type == "cuda" else MixedPrecisionPolicy())
            # FSDP cannot shard 0-d parameters (Plaid's γ bounds, kept 0-d for the official
            # layout): they stay replicated and their few gradients are summed by hand.
            self.replicated = [p for p in model.parameters() if p.dim() == 0]
            ignored = set(self.replicated)
            for unit in shard_units:
                fully_shard(unit, mp_policy=mp, ignored_params=ignored)
            fully_shard(self.module, mp_policy=mp, ignored_params=ignored)
            for m in self.module.modules():
                if hasattr(m, "set_gradient_divide_factor"):
                    m.set_gradient_divide_factor(1.0)
                    m.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
        elif strategy != "none":
            raise ValueError(f"unknown strategy {strategy!r}")

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

    def optimizer(self, groups: list[dict[str, Any]], **kwargs: Any) -> torch.optim.Optimizer:
        if self.strategy == "zero":
            from torch.distributed.optim import ZeroRedundancyOptimizer
            return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, **kwargs)
        return torch.optim.AdamW(groups, **kwargs)

    @contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """Skip the gradient sync on every micro-batch but the last of a step."""
        if last or self.strategy == "none":
            yield
        elif self.strategy == "fsdp":
            self.module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.module.set_requires_gradient_sync(True)
        else:
            with self.module.no_sync():
                yield

    def finish_backward(self) -> None:
        """After the last micro-batch's backward: sum the gradients FSDP does not manage."""
        if self.replicated:
            for p in self.replicated:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            all_reduce_sum_([p.grad for p in self.replicated])

    def grad_norm(self, params: list[Tensor]) -> Tensor:
        """Global L2 norm of the gradients; shards are summed over processes, replicated
        gradients counted once."""
        from torch.distributed.tensor import DTensor

        sharded = torch.zeros((), dtype=torch.float32, device=self.ctx.device)
        replicated = torch.zeros_like(sharded)
        for p in params:
            if isinstance(p.grad, DTensor):
                sharded = sharded + p.grad.to_local().float().pow(2).sum()
            elif p.grad is not None:
                replicated = replicated + p.grad.float().pow(2).sum()
        if self.sharded:
            dist.all_reduce(sharded)
        return (sharded + replicated).sqrt()

    # -- full states (checkpoints, evaluation) ------------------------------------------------
    def full(self, state: Any) -> Any:
        """`state` with sharded tensors gathered (collective under fsdp)."""
        return full_tensors(state) if self.sharded else state

    def localize(self, state: dict[str, Tensor], refs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Full tensors from a checkpoint, each placed as its counterpart in `refs` is; a name
        missing on either side is left for `load_state_dict` to report."""
        if not self.sharded:
            return state
        return {k: shaped_like(v, refs[k]) if k in refs else v for k, v in state.items()}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """The optimizer state in the one-process layout; collective (None off process 0 for
        zero, whose state is consolidated on process 0)."""
        if self.strategy == "zero":
            optimizer.consolidate_state_dict(to=0)
            return optimizer.state_dict() if self.ctx.is_main else None
        state = optimizer.state_dict()
        return full_tensors(state) if self.sharded else state

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                             params: list[Tensor]) -> None:
        if self.sharded:  # per-parameter moments become shards of their parameter
            def moment(v: Any, p: Tensor) -> bool:
                return isinstance(v, LocalShard) or isinstance(v, Tensor) and v.shape == p.shape
            state = dict(state, state={
                i: {k: shaped_like(v, params[int(i)]) if moment(v, params[int(i)]) else v
                    for k, v in s.items()}
                for i, s in state["state"].items()})
        optimizer.load_state_dict(state)
