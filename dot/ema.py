"""Exponential moving average of parameters, stored by name (not by position)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn


class EMA:
    """shadow <- shadow - (1 - d_n)(shadow - param) after every optimizer step.

    With `warmup` the decay of the n-th update is min(decay, (1 + n) / (10 + n)) (SEDD's rule),
    so early averages are not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        n = self.num_updates
        decay = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].sub_((1 - decay) * (self.shadow[name] - p.detach()))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow_params": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state["shadow_params"]
        if set(shadow) != set(self.shadow):
            raise KeyError(f"EMA names differ from the model: missing {sorted(set(self.shadow) - set(shadow))[:5]}, "
                           f"unexpected {sorted(set(shadow) - set(self.shadow))[:5]}")
        self.num_updates = state["num_updates"]
        for name, t in shadow.items():
            self.shadow[name].copy_(t)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Temporarily run `model` with the averaged weights."""
        params = dict(model.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, t in self.shadow.items():
                params[n].copy_(t)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, t in saved.items():
                    params[n].copy_(t)
