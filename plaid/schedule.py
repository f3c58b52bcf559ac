"""Plaid's learned noise schedule (spec §2).

γ_n(t) is a monotone one-hidden-layer MLP normalised so that γ_n(0) = 0 and γ_n(1) = 1; the
bounded schedule is γ(t) = γ_0 + (γ_1 − γ_0)·γ_n(t) with two learned scalars. Everything is
evaluated in float64, as in the official code, because the loss uses γ' = dγ/dt and the
sampler differences of γ between close times.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NoiseSchedule(nn.Module):
    """γ_n(t) = (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)), γ̃(t) = Σ_j w2_j tanh(w1_j (t − ½) + b_j).

    softplus keeps w1, w2 positive, so γ̃ and hence γ_n are strictly increasing.
    """

    def __init__(self, width: int = 1024):
        super().__init__()
        self.W1 = nn.Parameter(torch.randn(width, 1))
        self.b1 = nn.Parameter(torch.randn(width))
        self.W2 = nn.Parameter(torch.randn(1, width))

    def unnormalised(self, t: Tensor) -> Tensor:
        """γ̃(t) for any shape of t (float64 result)."""
        w1 = F.softplus(self.W1.double())[:, 0]
        w2 = 0.01 * F.softplus(self.W2.double())[0]
        return (w2 * torch.tanh(w1 * (t.double()[..., None] - 0.5) + self.b1.double())).sum(-1)

    def forward(self, t: Tensor) -> Tensor:
        """γ_n(t), float64, same shape as t."""
        ends = self.unnormalised(torch.tensor([0.0, 1.0], dtype=torch.float64, device=self.W1.device))
        return (self.unnormalised(t) - ends[0]) / (ends[1] - ends[0])

    def with_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(γ_n(t), γ_n'(t)) with γ_n' kept differentiable w.r.t. W1, b1, W2 (create_graph).

        The loss needs γ' as a function of the schedule parameters, so the derivative comes from
        autograd on a fresh leaf copy of t rather than from a hand-written formula.
        """
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            t = t.detach().double().requires_grad_(True)
            gamma_n = self(t)
            (dgamma_n,) = torch.autograd.grad(gamma_n.sum(), t, create_graph=keep_graph)
        if not keep_graph:
            return gamma_n.detach(), dgamma_n
        return gamma_n, dgamma_n


class GammaBounds(nn.Module):
    """The learned end points γ_0 = γ(0) and γ_1 = γ(1) (init −3 and 6; read, never hard-code)."""

    def __init__(self, gamma_0: float = -3.0, gamma_1: float = 6.0):
        super().__init__()
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_0)))
        self.gamma_1 = nn.Parameter(torch.tensor(float(gamma_1)))

    def forward(self, gamma_n: Tensor) -> Tensor:
        """γ = γ_0 + (γ_1 − γ_0)·γ_n, float64."""
        g0, g1 = self.gamma_0.double(), self.gamma_1.double()
        return g0 + (g1 - g0) * gamma_n
