"""Forward processes ("graphs") of SEDD: the absorbing (mask) and the uniform graph (spec §4).

A graph defines the generator Q of a continuous-time Markov chain acting independently on
every position, column convention: Q[y, x] is the rate of jumping from x to y. All methods
act on the last axis, position by position; token ids are x_BL, scores score_BLV.

Per-row quantities (sigma, dsigma) may be scalars, [B] or [B, 1]: `_per_row` reshapes them
explicitly. The official code needs [B, 1] and silently broadcasts a [B] vector against the
sequence axis (spec §10 bug 10).
"""
from __future__ import annotations

import abc
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class Draws(Protocol):
    """Per-row random draws of shape [B, *shape] (`dot.rng.RowRandom` is one)."""

    def rand(self, *shape: int) -> Tensor: ...

    def randint(self, high: int, *shape: int) -> Tensor: ...


def _per_row(v: Tensor, ndim: int) -> Tensor:
    """A scalar, [B] or [B, 1] tensor as [B, 1, ...] with `ndim` axes (scalars unchanged)."""
    v = torch.as_tensor(v)
    return v if v.dim() == 0 else v.reshape(v.shape[0], *[1] * (ndim - 1))


def expm1_sigma(sigma: Tensor) -> Tensor:
    """e(sigma) = exp(sigma) - 1, switching from expm1 at 0.5 as the official code does."""
    return torch.where(sigma < 0.5, torch.expm1(sigma), torch.exp(sigma) - 1)


def _onehot(x_BL: Tensor, dim: int) -> Tensor:
    return F.one_hot(x_BL, dim).to(torch.get_default_dtype())


class Graph(abc.ABC):
    """One forward process over `dim` states."""

    absorb: bool

    def __init__(self, dim: int):
        self.dim = dim

    @abc.abstractmethod
    def rate(self, x_BL: Tensor) -> Tensor:
        """Column x of Q (rates out of x), [B, L, dim]."""

    @abc.abstractmethod
    def transp_rate(self, x_BL: Tensor) -> Tensor:
        """Row x of Q (rates into x), [B, L, dim]."""

    @abc.abstractmethod
    def transition(self, x_BL: Tensor, sigma: Tensor) -> Tensor:
        """Column x of exp(sigma Q): the distribution of the noised token given x."""

    @abc.abstractmethod
    def transp_transition(self, x_BL: Tensor, sigma: Tensor) -> Tensor:
        """Row x of exp(sigma Q): entry y is P(noised = x | clean = y)."""

    @abc.abstractmethod
    def sample_transition(self, x_BL: Tensor, sigma: Tensor, rng: Draws,
                          fixed_BL: Tensor | None = None) -> Tensor:
        """Noise x with total noise sigma; positions where `fixed_BL` is True stay clean."""

    @abc.abstractmethod
    def sample_limit(self, *shape: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
        """A draw from the t = 1 limit distribution."""

    @abc.abstractmethod
    def staggered_score(self, score_BLV: Tensor, dsigma: Tensor) -> Tensor:
        """exp(-dsigma Q) applied to the score vector: p_{sigma - dsigma}(y) / p_sigma(x)."""

    @abc.abstractmethod
    def score_entropy(self, log_score_BLV: Tensor, sigma: Tensor, x_BL: Tensor,
                      x0_BL: Tensor) -> Tensor:
        """Denoising score entropy per position [B, L]; 0 exactly at the true score."""

    def reverse_rate(self, x_BL: Tensor, score_BLV: Tensor) -> Tensor:
        """Reverse-time rate out of x: R_y = Q[x, y] s_y for y != x, R_x = -sum of the others."""
        rate_BLV = self.transp_rate(x_BL) * score_BLV
        rate_BLV = rate_BLV.scatter(-1, x_BL[..., None], 0.0)
        return rate_BLV.scatter(-1, x_BL[..., None], -rate_BLV.sum(-1, keepdim=True))


class Absorbing(Graph):
    """Every token jumps to the mask m = dim - 1 at rate 1; the mask is absorbing (§4.1)."""

    absorb = True

    @property
    def mask(self) -> int:
        return self.dim - 1

    def _onehot(self, x_BL: Tensor) -> Tensor:
        return _onehot(x_BL, self.dim)

    def rate(self, x_BL: Tensor) -> Tensor:
        return self._onehot(torch.full_like(x_BL, self.mask)) - self._onehot(x_BL)

    def transp_rate(self, x_BL: Tensor) -> Tensor:
        into_mask_BLV = 1.0 - self._onehot(torch.full_like(x_BL, self.mask))
        return torch.where((x_BL == self.mask)[..., None], into_mask_BLV, -self._onehot(x_BL))

    def transition(self, x_BL: Tensor, sigma: Tensor) -> Tensor:
        keep_B11 = torch.exp(-_per_row(sigma, 3))
        stay_BLV = keep_B11 * self._onehot(x_BL)
        out_BLV = stay_BLV + (1 - keep_B11) * self._onehot(torch.full_like(x_BL, self.mask))
        return torch.where((x_BL == self.mask)[..., None], self._onehot(x_BL), out_BLV)

    def transp_transition(self, x_BL: Tensor, sigma: Tensor) -> Tensor:
        keep_B11 = torch.exp(-_per_row(sigma, 3))
        from_any_BLV = (1 - keep_B11).expand(*x_BL.shape, self.dim).clone()
        from_any_BLV[..., self.mask] = 1.0
        return torch.where((x_BL == self.mask)[..., None], from_any_BLV,
                           keep_B11 * self._onehot(x_BL))

    def sample_transition(self, x_BL: Tensor, sigma: Tensor, rng: Draws,
                          fixed_BL: Tensor | None = None) -> Tensor:
        u_BL = rng.rand(x_BL.shape[1]).to(x_BL.device)
        move_BL = u_BL < -torch.expm1(-_per_row(sigma, 2))
        if fixed_BL is not None:
            move_BL &= ~fixed_BL
        return torch.where(move_BL, self.mask, x_BL)

    def sample_limit(self, *shape: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
        return torch.full(shape, self.mask, dtype=torch.long, device=device)

    def staggered_score(self, score_BLV: Tensor, dsigma: Tensor) -> Tensor:
        dsigma_B11 = _per_row(dsigma, 3)
        to_mask_BL1 = (1 - torch.exp(dsigma_B11)) * score_BLV.sum(-1, keepdim=True)
        out_BLV = torch.exp(dsigma_B11) * score_BLV
        return torch.cat([out_BLV[..., :-1], out_BLV[..., -1:] + to_mask_BL1], dim=-1)

    def score_entropy(self, log_score_BLV: Tensor, sigma: Tensor, x_BL: Tensor,
                      x0_BL: Tensor) -> Tensor:
        # At a masked position the true ratios are r = 1/e(sigma) at x0 and 0 elsewhere.
        ratio_B1 = 1 / expm1_sigma(_per_row(sigma, 2))
        neg_BL = ratio_B1 * log_score_BLV.gather(-1, x0_BL[..., None]).squeeze(-1)
        pos_BL = log_score_BLV[..., :-1].exp().sum(-1)
        const_B1 = ratio_B1 * (ratio_B1.log() - 1)
        return torch.where(x_BL == self.mask, pos_BL - neg_BL + const_B1, 0.0)


class Uniform(Graph):
    """Every token jumps to each other token at rate 1/dim; no mask state (§4.2)."""

    absorb = False

    def rate(self, x_BL: Tensor) -> Tensor:
        return torch.full((*x_BL.shape, self.dim), 1 / self.dim, device=x_BL.device) \
            - _onehot(x_BL, self.dim)

    transp_rate = rate  # Q is symmetric

    def transition(self, x_BL: Tensor, sigma: Tensor) -> Tensor:
        move_B11 = -torch.expm1(-_per_row(sigma, 3))
        off_BLV = (move_B11 / self.dim).expand(*x_BL.shape, self.dim)
        off_BLV = off_BLV.scatter(-1, x_BL[..., None], 0.0)
        return off_BLV.scatter(-1, x_BL[..., None], 1 - off_BLV.sum(-1, keepdim=True))

    transp_transition = transition  # exp(sigma Q) is symmetric

    def sample_transition(self, x_BL: Tensor, sigma: Tensor, rng: Draws,
                          fixed_BL: Tensor | None = None) -> Tensor:
        u_BL = rng.rand(x_BL.shape[1]).to(x_BL.device)
        new_BL = rng.randint(self.dim, x_BL.shape[1]).to(x_BL.device)
        move_BL = u_BL < -torch.expm1(-_per_row(sigma, 2))
        if fixed_BL is not None:
            move_BL &= ~fixed_BL
        return torch.where(move_BL, new_BL, x_BL)

    def sample_limit(self, *shape: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
        gen_device = generator.device if generator is not None else "cpu"
        return torch.randint(self.dim, shape, generator=generator, device=gen_device).to(device)

    def staggered_score(self, score_BLV: Tensor, dsigma: Tensor) -> Tensor:
        dsigma_B11 = _per_row(dsigma, 3)
        spread_BL1 = (1 - torch.exp(dsigma_B11)) / self.dim * score_BLV.sum(-1, keepdim=True)
        return torch.exp(dsigma_B11) * score_BLV + spread_BL1

    def score_entropy(self, log_score_BLV: Tensor, sigma: Tensor, x_BL: Tensor,
                      x0_BL: Tensor) -> Tensor:
        # True ratios: `ratio` at every y != x when x = x0; else 1/ratio at x0 and 1 elsewhere.
        n = self.dim
        esigm1_B1 = expm1_sigma(_per_row(sigma, 2))
        ratio_B1 = 1 - n / (esigm1_B1 + n)
        unchanged_BL = x_BL == x0_BL
        at_x_BL = log_score_BLV.gather(-1, x_BL[..., None]).squeeze(-1)
        neg_BL = log_score_BLV.mean(-1) - at_x_BL / n
        at_x0_BL = log_score_BLV.gather(-1, x0_BL[..., None]).squeeze(-1)
        neg_BL = torch.where(unchanged_BL, ratio_B1 * neg_BL, at_x0_BL / esigm1_B1 + neg_BL)
        const_BL = torch.where(unchanged_BL,
                               (n - 1) / n * ratio_B1 * (ratio_B1.log() - 1),
                               ((-ratio_B1.log() - 1) / ratio_B1 - (n - 2)) / n)
        pos_BL = log_score_BLV.exp().mean(-1) - at_x_BL.exp() / n
        return pos_BL - neg_BL + const_BL


def get_graph(graph_type: str, tokens: int) -> Graph:
    """Graph over `tokens` real tokens (absorbing adds the mask state as the last index)."""
    if graph_type == "absorb":
        return Absorbing(tokens + 1)
    if graph_type == "uniform":
        return Uniform(tokens)
    raise ValueError(f"unknown graph type {graph_type!r}; use graph.type=absorb or uniform")
