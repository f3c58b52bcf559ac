"""The SEDD / DoT training objective: sigma'-weighted denoising score entropy (spec §5).

DoT conditions on a fixed source: it is never corrupted and never scored. The official code
relies on the absorbing graph scoring only masked positions; for the uniform graph it would
score (and crash on) the source (spec §10 bug 2), so fixed positions are excluded explicitly.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from sedd_backend.graph import Draws, Graph
from sedd_backend.noise import Noise

SAMPLING_EPS = 1e-3  # t ~ U[eps, 1): avoids sigma = 0, where the absorbing weight 1/e(sigma) blows up


def score_entropy_loss(model: Callable[[Tensor, Tensor], Tensor], graph: Graph, noise: Noise,
                       x0_BL: Tensor, fixed_BL: Tensor, rng: Draws,
                       sampling_eps: float = SAMPLING_EPS) -> Tensor:
    """Per-row loss [B]: sum over positions of sigma'(t) * score entropy at a random t.

    `fixed_BL` is True on the conditioning source (DoT's input_mask == 0). Random numbers come
    from `rng` (per-row draws), so a row's noise does not depend on how the batch is split.
    """
    # 1. a time per row, away from 0
    t_B = (1 - sampling_eps) * rng.rand().to(x0_BL.device) + sampling_eps
    # 2. total noise and its rate
    sigma_B, dsigma_B = noise(t_B)
    # 3. corrupt the target, keep the source clean
    xt_BL = graph.sample_transition(x0_BL, sigma_B, rng, fixed_BL)
    # 4. log-scores of the noisy sequence
    log_score_BLV = model(xt_BL, sigma_B)
    # 5. score entropy on the non-fixed positions, weighted by sigma'(t), summed over positions
    se_BL = graph.score_entropy(log_score_BLV, sigma_B, xt_BL, x0_BL)
    se_BL = se_BL.masked_fill(fixed_BL, 0.0)
    return (dsigma_B[:, None] * se_BL).sum(-1)
