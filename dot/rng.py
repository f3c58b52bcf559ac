"""Random numbers keyed by (seed, step, global row).

A training row draws the same noise whether the global batch runs in one process or is split
over several processes and accumulation steps, so data-parallel runs reproduce single-process
loss curves exactly (up to float summation order).
"""
from __future__ import annotations

import torch
from torch import Tensor

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant to spread (seed, step, row) over 63 bits


def seed_key(*parts: int) -> int:
    """One 63-bit seed from a tuple of integers (e.g. seed, step, row)."""
    h = 0
    for p in parts:
        h = (h * _MIX + int(p) + 1) % (2**63 - 1)
    return h


class RowRandom:
    """Per-row generators plus one generator shared by the whole global batch of a step."""

    def __init__(self, seed: int, step: int, rows: Tensor, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.rows = rows.tolist()
        self._gens = [torch.Generator().manual_seed(seed_key(seed, step, r)) for r in self.rows]
        # Same on every process: for quantities defined over the global batch.
        self.step_generator = torch.Generator().manual_seed(seed_key(seed, step, -1))

    def _stack(self, draw) -> Tensor:
        return torch.stack([draw(g) for g in self._gens]).to(self.device)

    def rand(self, *shape: int) -> Tensor:
        """Uniform [0, 1) of shape [B, *shape]."""
        return self._stack(lambda g: torch.rand(shape, generator=g))

    def randn(self, *shape: int) -> Tensor:
        """Standard normal of shape [B, *shape]."""
        return self._stack(lambda g: torch.randn(shape, generator=g))

    def randint(self, high: int, *shape: int) -> Tensor:
        """Integers in [0, high) of shape [B, *shape]."""
        return self._stack(lambda g: torch.randint(high, shape, generator=g))
