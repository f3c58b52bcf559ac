"""Plaid samplers (spec §7): ancestral with score temperature, and multistep DPM-Solver++.

Both samplers work on latents only. They call `denoise(z, γ) -> x̂` (float64 [B, L, D]); for the
network that is `NetworkDenoiser`, which also holds the self-conditioning state, the logits of
every call (decoded by the caller), the call count (NFE) and optionally the token chain. With an
exact denoiser the same functions sample a toy Gaussian, which is how they are tested.

Corrected behaviour is the default; `official_*` switches reproduce DoT's code (spec §13):
* ancestral, §13.4: DoT's grid is linspace(1, 0, T) but every step jumps by 1/T, so each latent
  is treated as if it sat at the next grid point and t = 0 is evaluated twice. Default: step
  between consecutive points of linspace(1, 0, T+1). Both make T+1 network calls.
* DPM-Solver++, §13.1-3: DoT builds the solver's α, σ, λ from the unbounded γ_n, replaces the
  latent by the data prediction after each call, decodes the logits of the last call (at
  τ_{N−1}) and ignores score_temp. Default: α, σ, λ from the bounded γ the network is
  conditioned on, the latent state is kept (standard DPM-Solver++), and tokens are decoded from
  one more call at the final state τ_N (N+1 calls instead of N).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Denoise = Callable[[Tensor, Tensor], Tensor]  # (z [B, L, D], γ scalar) -> x̂ [B, L, D]
Schedule = Callable[[Tensor], Tensor]  # t (float64) -> γ(t)
Clamp = Callable[[Tensor, Tensor], Tensor]  # (state, t) -> state with the fixed positions reset

DPM_T_END = 1e-3  # last solver time (time-uniform grid from 1 to 1/total_N, total_N = 1000)


def _f64(t: float, like: Tensor) -> Tensor:
    return torch.tensor(t, dtype=torch.float64, device=like.device)


def tempered(x_hat: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor, score_temp: float) -> Tensor:
    """x̃ = (z − σ ε̂/score_temp)/α with ε̂ = (z − α x̂)/σ: divides the predicted score by score_temp."""
    eps = (z - alpha * x_hat) / sigma / score_temp
    return (z - sigma * eps) / alpha


def ancestral_grid(steps: int, official: bool) -> tuple[list[float], list[float | None]]:
    """Network-call times and, for each call, the time the latent then moves to (None = stay).

    Both grids make steps + 1 calls and end with a call at t = 0 used for decoding.
    """
    if official:  # linspace(1, 0, T), jump t -> t − 1/T, the t = 0 call only refreshes x_sc
        times = torch.linspace(1, 0, steps, dtype=torch.float64).tolist()
        return times + [0.0], [t - 1 / steps for t in times[:-1]] + [None, None]
    times = torch.linspace(1, 0, steps + 1, dtype=torch.float64).tolist()
    return times, times[1:] + [None]


@torch.no_grad()
def ancestral(denoise: Denoise, gamma: Schedule, z: Tensor, steps: int,
              randn: Callable[[], Tensor], score_temp: float = 1.0, official_grid: bool = False,
              clamp: Clamp | None = None) -> Tensor:
    """VDM ancestral sampling from z ~ N(0, I) at t = 1; returns the final latent (t = 0).

    Each step draws z_s ~ q(z_s | z_t, x = x̃) with c = 1 − SNR_t/SNR_s:
    z_s = (1 − c)(α_s/α_t) z_t + c α_s x̃ + sqrt(c σ_s²) ε.
    """
    z = z.double()
    for t, s in zip(*ancestral_grid(steps, official_grid)):
        gamma_t = gamma(_f64(t, z))
        x_hat = denoise(z, gamma_t)
        if s is None:
            continue
        gamma_s = gamma(_f64(s, z))
        alpha_t, sigma_t = torch.sigmoid(-gamma_t).sqrt(), torch.sigmoid(gamma_t).sqrt()
        alpha_s, sigma_sq_s = torch.sigmoid(-gamma_s).sqrt(), torch.sigmoid(gamma_s)
        x_tilde = tempered(x_hat, z, alpha_t, sigma_t, score_temp)
        c = -torch.expm1(gamma_s - gamma_t)
        z = (1 - c) * (alpha_s / alpha_t) * z + c * alpha_s * x_tilde + (c * sigma_sq_s).sqrt() * randn()
        if clamp is not None:
            z = clamp(z, _f64(s, z))
    return z


@torch.no_grad()
def dpm_solver(denoise: Denoise, gamma: Schedule, x: Tensor, steps: int, order: int = 1,
               score_temp: float = 1.0, clamp: Clamp | None = None, official: bool = False,
               solver_gamma: Schedule | None = None) -> Tensor:
    """Multistep DPM-Solver++ (data prediction, "dpmsolver" second-order type, lower order final)
    on the time-uniform grid τ_k = linspace(1, 1e-3, N+1); returns the state at τ_N.

    In the solver's variables α(τ) = sqrt(sigmoid(−γ)), σ(τ) = sqrt(sigmoid(γ)), λ = −γ/2,
    with h = λ(τ) − λ(τ_prev) and φ = e^(−h) − 1 the updates are
      order 1: x ← σ(τ)/σ(τ_prev)·x − α(τ)·φ·D_prev
      order 2: … − ½·α(τ)·φ·(D_prev − D_prev2)/r, r = h_prev/h.
    `official=True` reproduces DoT (§13.1-3): pass `solver_gamma` = the unbounded γ_n, the
    state is replaced by each data prediction, no call is made at τ_N, score_temp is ignored.
    """
    if order not in (1, 2):
        raise ValueError(f"dpm_order must be 1 or 2, got {order}")
    solver_gamma = solver_gamma or gamma
    score_temp = 1.0 if official else score_temp
    clamp = clamp or (lambda state, t: state)

    def coefficients(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g = solver_gamma(t)
        return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt(), -g / 2

    def data_prediction(state: Tensor, t: Tensor) -> Tensor:
        alpha, sigma, _ = coefficients(t)
        return tempered(denoise(state, gamma(t)), state, alpha, sigma, score_temp)

    times = torch.linspace(1, DPM_T_END, steps + 1, dtype=torch.float64, device=x.device)
    x = clamp(x.double(), times[0])
    history = [(times[0], data_prediction(x, times[0]))]  # (τ, D) of the last two calls
    if official:
        x = clamp(history[-1][1], times[0])
    for k in range(1, steps + 1):
        step_order = 1 if k == 1 else (min(order, steps + 1 - k) if steps < 10 else order)
        t = times[k]
        t_prev, d_prev = history[-1]
        alpha, sigma, lam = coefficients(t)
        _, sigma_prev, lam_prev = coefficients(t_prev)
        h = lam - lam_prev
        phi = torch.expm1(-h)
        update = sigma / sigma_prev * x - alpha * phi * d_prev
        if step_order == 2:
            t_prev2, d_prev2 = history[-2]
            ratio = (lam_prev - coefficients(t_prev2)[2]) / h
            update = update - 0.5 * alpha * phi * (d_prev - d_prev2) / ratio
        x = clamp(update, t)
        if k < steps:
            history = history[-1:] + [(t, data_prediction(x, t))]
            if official:
                x = clamp(history[-1][1], t)
    if not official:
        denoise(x, gamma(times[-1]))  # the decoding call at the final state
    return x


class NetworkDenoiser:
    """The Plaid network as a sampler's denoiser, with the state kept between calls.

    Holds the self-conditioning input (the previous raw x̂), counts calls, keeps the logits for
    decoding and optionally the argmax token chain. `decode_at` [B] (scheduled sampling) keeps,
    for row b, the logits of call number decode_at[b] instead of the last call's. With a
    `src_mask` the network substitutes the clean source embeddings (fix_src).
    """

    def __init__(self, network: torch.nn.Module, embedding: Tensor, x_embed: Tensor,
                 src_mask: Tensor | None, record_chain: bool = False,
                 decode_at: Tensor | None = None):
        self.network, self.embedding = network, embedding
        self.x_embed, self.src_mask = x_embed, src_mask
        self.x_selfcond = torch.zeros_like(x_embed, dtype=torch.float32)
        self.decode_at = decode_at
        self.logits: Tensor | None = None
        self.nfe = 0
        self.chain: list[Tensor] | None = [] if record_chain else None

    def __call__(self, z: Tensor, gamma: Tensor) -> Tensor:
        B = z.shape[0]
        fix = self.src_mask is not None
        logits, x_hat = self.network(z.float(), gamma.expand(B), self.embedding, 1.0,
                                     self.x_selfcond, None, self.x_embed if fix else None,
                                     self.src_mask)
        self.x_selfcond = x_hat
        if self.decode_at is None or self.logits is None:
            self.logits = logits
        else:
            self.logits = torch.where((self.decode_at == self.nfe)[:, None, None], logits, self.logits)
        self.nfe += 1
        if self.chain is not None:
            self.chain.append(logits.argmax(-1))
        return x_hat.double()


def decode(logits: Tensor, logit_sample: bool = False, logit_temp: float = 0.0,
           generator: torch.Generator | None = None) -> Tensor:
    """Argmax tokens, or one draw per position from softmax(logits / logit_temp)."""
    if not (logit_sample and logit_temp > 0):
        return logits.argmax(-1)
    probs = (logits.double() / logit_temp).softmax(-1).flatten(0, -2).cpu()
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1]).to(logits.device)
