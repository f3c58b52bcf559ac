"""Sharded checkpoints (`training.checkpoint_format=sharded`, with `training.strategy=fsdp`).

Every process writes the local shards of its sharded tensors (model, EMA, Adam moments) to
`<stem>-shards-step<S>/rank<r>-of-<W>.pth`; process 0 then writes the usual checkpoint file,
in which each sharded tensor is a placeholder `{"__shard__": key, "shape": full shape}`. No
process ever holds the full state, the file that resuming looks for appears last (an
interrupted save leaves the previous checkpoint whole), and every file is a plain
`torch.save` of tensors, read with `weights_only=True` (torch.distributed.checkpoint would
unpickle its metadata, which a checkpoint from elsewhere must not get to do).

Reading: the same number of processes gets its own shards back (`LocalShard`, which
`dot.distributed.shaped_like` turns into the parameter's DTensor); anything else, one process
included, gets full tensors: FSDP2 shards dim 0 in rank order, so the shards concatenate.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class LocalShard:
    """This process's shard of a tensor, to be placed as its parameter is."""
    tensor: Tensor


def shard_dir(path: Path, step: int) -> Path:
    return path.with_name(f"{path.stem}-shards-step{step}")


def split(obj: Any, shards: dict[str, Tensor], key: str = "") -> Any:
    """`obj` with every DTensor replaced by a placeholder; its local shard goes to `shards`."""
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        shards[key] = obj.to_local().detach().cpu().clone()
        return {"__shard__": key, "shape": list(obj.shape)}
    if isinstance(obj, dict):
        return {k: split(v, shards, f"{key}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(split(v, shards, f"{key}/{i}") for i, v in enumerate(obj))
    return obj.detach().cpu().clone() if isinstance(obj, Tensor) else obj


def save_sharded(state: dict[str, Any], path: Path, rank: int, world_size: int) -> None:
    """Collective: each process writes its shards, then process 0 the checkpoint file."""
    import torch.distributed as dist

    from dot.checkpoint import save_atomic

    shards: dict[str, Tensor] = {}
    index = split(state, shards)
    folder = shard_dir(path, int(state["step"]))
    save_atomic(shards, folder / f"rank{rank}-of-{world_size}.pth")
    dist.barrier()  # every shard is on disk before the checkpoint file points at them
    if rank == 0:
        index["shards"] = {"folder": folder.name, "world_size": world_size}
        save_atomic(index, path)
        for old in path.parent.glob(f"{path.stem}-shards-step*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)


def resolve(index: dict[str, Any], path: Path, device: str | torch.device = "cpu",
            rank_of: tuple[int, int] | None = None) -> dict[str, Any]:
    """Fill the placeholders of a sharded checkpoint `path`: own shards for `rank_of` =
    (rank, world size) equal to the writer's, else full tensors."""
    from dot.checkpoint import CheckpointError, load_checkpoint

    meta = index.pop("shards")
    folder, world = path.parent / meta["folder"], int(meta["world_size"])
    files = [folder / f"rank{r}-of-{world}.pth" for r in range(world)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{path} is a sharded checkpoint but {missing[0]} is missing "
                              f"({len(missing)} of {world} shard files); copy the whole "
                              f"{folder.name}/ folder with it")
    own = rank_of is not None and rank_of[1] == world
    parts = [load_checkpoint(files[rank_of[0]], device)] if own else [
        load_checkpoint(f, device) for f in files]

    def fill(obj: Any) -> Any:
        if isinstance(obj, dict) and "__shard__" in obj:
            key, shape = obj["__shard__"], torch.Size(obj["shape"])
            if own:
                return LocalShard(parts[0][key])
            full = torch.cat([p[key] for p in parts], dim=0) if shape else parts[0][key]
            if full.shape != shape:
                raise CheckpointError(f"the shards of {key!r} in {folder} make {tuple(full.shape)}, "
                                      f"not {tuple(shape)}: the shard files do not belong together")
            return full
        if isinstance(obj, dict):
            return {k: fill(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(fill(v) for v in obj)
        return obj
    return fill(index)
