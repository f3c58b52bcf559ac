"""The SEDD / DoT training objective: sigma'-weighted denoising score entropy (spec §5).

DoT conditions on a fixed source: it is never corrupted and never scored. The official code
relies on the absorbing graph scoring only masked positions; for the uniform graph it would
score (and crash on) the source (spec §10 bug 2), so fixed positions are excluded explicitly.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from sedd_backend.graph import Draws, Graph, expm1_sigma
from sedd_backend.noise import Noise

SAMPLING_EPS = 1e-3  # t ~ U[eps, 1): avoids sigma = 0, where the absorbing weight 1/e(sigma) blows up


def mask_suffix(x0_BL: Tensor, sigma_B: Tensor, rng: Draws, fixed_BL: Tensor, mask: int,
                real_BL: Tensor | None = None, segments_BL: Tensor | None = None) -> Tensor:
    """Ordered absorbing corruption: mask the *last* ~(1 - e^-sigma) of the free positions.

    The expected number of masks matches the independent corruption, but the clean positions
    always form a prefix (stochastic rounding with one uniform per row). A model trained on it
    is decoded left to right (`predictor=left_to_right`): DoT's thoughts are then written in
    reading order, which for least-significant-digit-first arithmetic is the order of carries.
    With `real_BL` (False on padding) the suffix is counted over the real target tokens and
    padding is always masked, so short targets in long rows are not mostly left clean.
    With `segments_BL` (non-decreasing ids along the row: block diffusion's blocks) every
    segment gets its own suffix: each block learns "the rest of the block, given the clean
    part before", the view a left-to-right parallel decoder gives it.
    """
    free_BL = ~fixed_BL if real_BL is None else ~fixed_BL & real_BL
    seg_BL = torch.zeros_like(x0_BL) if segments_BL is None else segments_BL.long()
    n_BS = torch.zeros(x0_BL.shape[0], int(seg_BL.max()) + 1, dtype=torch.long,
                       device=x0_BL.device).scatter_add_(1, seg_BL, free_BL.long())
    before_BS = n_BS.cumsum(1) - n_BS  # free positions in earlier segments
    rank_BL = free_BL.long().cumsum(1) - 1 - before_BS.gather(1, seg_BL)  # rank in its segment
    n_BL = n_BS.gather(1, seg_BL)
    u_B1 = rng.rand().to(x0_BL.device)[:, None]
    keep_BL = torch.minimum(torch.floor(n_BL * torch.exp(-sigma_B)[:, None] + u_B1), n_BL)
    masked_BL = free_BL & (rank_BL >= keep_BL)
    if real_BL is not None:
        masked_BL |= ~fixed_BL & ~real_BL
    return torch.where(masked_BL, mask, x0_BL)


def score_entropy_loss(model: Callable[[Tensor, Tensor], Tensor], graph: Graph, noise: Noise,
                       x0_BL: Tensor, fixed_BL: Tensor, rng: Draws,
                       sampling_eps: float = SAMPLING_EPS, weighting: str = "elbo",
                       order: str = "random", real_BL: Tensor | None = None,
                       objective: str = "score_entropy", stats: dict | None = None,
                       t_range: tuple[float | Tensor, float | Tensor] = (0.0, 1.0),
                       segments_BL: Tensor | None = None) -> Tensor:
    """Per-row loss [B]: sum over positions of sigma'(t) * score entropy at a random t.

    `fixed_BL` is True on the conditioning source (DoT's input_mask == 0). Random numbers come
    from `rng` (per-row draws), so a row's noise does not depend on how the batch is split.

    Options beyond SEDD (absorbing graph; defaults reproduce the official objective):
    * `weighting='flat'` multiplies a row by e(sigma)/sigma' (= t for the log-linear schedule),
      turning the ELBO's 1/t-weighted cross-entropy into a plain mean over masked tokens
      (MaskGIT-style); lower gradient variance, not a likelihood bound.
    * `order='left_to_right'` masks a suffix of the real target tokens and all padding
      (`mask_suffix`; `real_BL` is the attention mask), of every segment in `segments_BL`
      (block diffusion's blocks) when given.
    * `objective='cross_entropy'` trains the output as denoiser logits (MDLM's mean
      parametrisation): softmax over the real tokens, cross-entropy at masked positions with
      the same ELBO weight sigma'/e(sigma) (or flat). Sample with `denoiser_log_score`.

    * `t_range=(lo, hi)` draws t from U[lo, hi] instead of U[0, 1] (the lower end is raised to
      `sampling_eps`): BD3-LM's clipped schedule. With the log-linear schedule t is the mask
      rate, so a high range spends the batch on the heavily masked rows that decoding starts
      from; the bound is no longer the full ELBO.

    With a `stats` dict (absorbing graph), stats['token_acc'] receives the share of masked
    target tokens whose highest-scoring token is the clean one: the training accuracy that
    is comparable across objectives (and with an autoregressive model's).
    """
    if (weighting, order, objective) != ("elbo", "random", "score_entropy") and not graph.absorb:
        raise ValueError("loss weighting / mask order / objective options need the absorbing graph")
    if weighting not in ("elbo", "flat"):
        raise ValueError(f"unknown loss weighting {weighting!r}: use elbo or flat")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: use {' or '.join(OBJECTIVES)}")
    t_B = draw_times(t_range, rng, sampling_eps, x0_BL.device)
    sigma_B, dsigma_B = noise(t_B)
    xt_BL = corrupt(order, graph, x0_BL, sigma_B, rng, fixed_BL, real_BL, segments_BL)
    log_score_BLV = model(xt_BL, sigma_B)
    if stats is not None and graph.absorb:
        stats["token_acc"] = masked_token_accuracy(log_score_BLV, xt_BL, x0_BL, fixed_BL, graph)
    return OBJECTIVES[objective](log_score_BLV, graph, xt_BL, x0_BL, fixed_BL, sigma_B,
                                 dsigma_B, weighting)


def draw_times(t_range: tuple[float | Tensor, float | Tensor], rng: Draws, sampling_eps: float,
               device: torch.device) -> Tensor:
    """A time per row from U[lo, hi] (two floats, or two [B] tensors), away from 0."""
    lo, hi = t_range
    lo = lo.clamp(min=sampling_eps) if isinstance(lo, Tensor) else max(float(lo), sampling_eps)
    hi = hi if isinstance(hi, Tensor) else float(hi)
    if not bool(((torch.as_tensor(lo) <= hi) & (torch.as_tensor(hi) <= 1)).all()):
        raise ValueError(f"backbone.t_range={list(t_range)} must satisfy 0 <= lo <= hi <= 1")
    return (hi - lo) * rng.rand().to(device) + lo


def corrupt(order: str, graph: Graph, x0_BL: Tensor, sigma_B: Tensor, rng: Draws,
            fixed_BL: Tensor, real_BL: Tensor | None, segments_BL: Tensor | None) -> Tensor:
    """The noisy target at noise level sigma; the source (fixed_BL) stays clean."""
    if order == "left_to_right":
        return mask_suffix(x0_BL, sigma_B, rng, fixed_BL, graph.dim - 1, real_BL, segments_BL)
    if order == "random":
        return graph.sample_transition(x0_BL, sigma_B, rng, fixed_BL)
    raise ValueError(f"unknown mask order {order!r}: use random or left_to_right")


@torch.no_grad()
def masked_token_accuracy(log_score_BLV: Tensor, xt_BL: Tensor, x0_BL: Tensor, fixed_BL: Tensor,
                          graph: Graph) -> float:
    """Share of masked target tokens whose highest-scoring token is the clean one."""
    masked_BL = (xt_BL == graph.dim - 1) & ~fixed_BL
    hit_BL = log_score_BLV[..., :-1].argmax(-1) == x0_BL
    return (hit_BL & masked_BL).sum().item() / max(int(masked_BL.sum()), 1)


def score_entropy_objective(log_score_BLV: Tensor, graph: Graph, xt_BL: Tensor, x0_BL: Tensor,
                            fixed_BL: Tensor, sigma_B: Tensor, dsigma_B: Tensor,
                            weighting: str) -> Tensor:
    """SEDD: score entropy on the non-fixed positions, weighted by sigma'(t), summed [B]."""
    se_BL = graph.score_entropy(log_score_BLV, sigma_B, xt_BL, x0_BL).masked_fill(fixed_BL, 0.0)
    loss_B = (dsigma_B[:, None] * se_BL).sum(-1)
    return loss_B * expm1_sigma(sigma_B) / dsigma_B if weighting == "flat" else loss_B


def denoiser_objective(log_score_BLV: Tensor, graph: Graph, xt_BL: Tensor, x0_BL: Tensor,
                       fixed_BL: Tensor, sigma_B: Tensor, dsigma_B: Tensor,
                       weighting: str) -> Tensor:
    """MDLM-style: cross-entropy of the clean token at masked positions, ELBO-weighted [B]."""
    masked_BL = (xt_BL == graph.dim - 1) & ~fixed_BL
    logp_BLV = torch.log_softmax(log_score_BLV[..., :-1], dim=-1)
    ce_BL = -logp_BLV.gather(-1, x0_BL[..., None]).squeeze(-1) * masked_BL
    weight_B = torch.ones_like(sigma_B) if weighting == "flat" else dsigma_B / expm1_sigma(sigma_B)
    return weight_B * ce_BL.sum(-1)


def next_token_loss(out_BLV: Tensor, x0_BL: Tensor, fixed_BL: Tensor, real_BL: Tensor,
                    stats: dict | None = None) -> Tensor:
    """Cross-entropy [B] of every target token given the clean row up to the token before it.

    `out_BLV` is the network's output on the clean row of block diffusion with causal clean
    attention (`backbone.clean_attention=causal`), read as next-token logits: position i
    predicts token i + 1, an autoregressive lesson at every target token of every row, where
    the block loss gives one next-token lesson per block (its first masked position sees
    exactly what clean position i sees). `backbone.next_token_loss` weights it. Why: on CPU
    budgets the arithmetic is learned from these lessons; the blocks learn to look ahead.
    """
    logp_BLV = torch.log_softmax(out_BLV[:, :-1, :-1], dim=-1)
    target_BL = x0_BL[:, 1:]
    scored_BL = ~fixed_BL[:, 1:] & real_BL[:, 1:].bool()
    ce_BL = -logp_BLV.gather(-1, target_BL[..., None]).squeeze(-1) * scored_BL
    if stats is not None:
        hit_BL = (logp_BLV.argmax(-1) == target_BL) & scored_BL
        stats["next_token_acc"] = hit_BL.sum().item() / max(int(scored_BL.sum()), 1)
    return ce_BL.sum(-1)


OBJECTIVES = {"score_entropy": score_entropy_objective, "cross_entropy": denoiser_objective}


def denoiser_log_score(logits_BLV: Tensor, sigma_B: Tensor) -> Tensor:
    """Absorbing log-scores of a model trained with `objective='cross_entropy'`.

    At a masked position the score of token j is p(x0 = j | x_t) / e(sigma); the mask column
    keeps log-score 0 (score 1), as the network's own output does. Only masked positions move
    under the absorbing reverse process, so other positions need no score.
    """
    logp_BLV = torch.log_softmax(logits_BLV[..., :-1], dim=-1)
    shift_B11 = torch.log(expm1_sigma(sigma_B.reshape(-1).float()))[:, None, None]
    return torch.cat([logp_BLV - shift_B11, torch.zeros_like(logits_BLV[..., -1:])], dim=-1)
