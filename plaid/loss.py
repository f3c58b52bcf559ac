"""The DoT / Plaid training objective (spec §5): a continuous-time VDM bound with Plaid's tricks.

Per global batch of B_g rows (one step), rows 0..r−1 are reconstruction rows at t = 0 and the
rest diffusion rows with low-discrepancy times; every fourth row (random offset) is
self-conditioned. One call handles one chunk (micro-batch on one process) of that global batch,
identified by its global row indices, and returns the chunk's contribution to the global
objective, so summing over chunks gives

  loss = Σ_{b<r} reconst_b / r + Σ_{b≥r} L_b / (B_g − r) + mean over chunks of prior,

which equals the official per-rank loss averaged over ranks and accumulation steps
(r̄ = r / #chunks there). All global draws (time offset u, self-cond offset, eval r) come from
`rng.step_generator`, every per-row draw from the row's own generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dot.rng import RowRandom
from plaid.sampling import NetworkDenoiser, ancestral, decode
from plaid.weights import EMA_INIT, Plaid


@dataclass
class LossOptions:
    selfcond: bool = True  # self-condition every fourth row (§5.3)
    fix_src: bool = True  # DoT: the network sees the clean source embeddings (§4.2)
    bias_warmup_steps: int = 50  # bias_scale ramps 0 -> 1 over these steps (§5.8)
    min_prob: float = 1.0  # scheduled sampling's final gold probability; 1 = off (§5.6)
    total_steps: int = 1  # training length, for the scheduled-sampling decay
    ss_steps: int = 16  # sampler steps used by scheduled sampling
    ss_score_temp: float = 0.5


@dataclass
class LossOutput:
    loss: Tensor  # this chunk's contribution to the global objective
    metrics: dict[str, float]  # per-chunk values (contribution × B_g/B): their mean over equal
    # chunks, which is what the trainer logs, is the global value
    ema_sums: Tensor  # [4] Σ reconst_b, Σ reconst_b², Σ L_b, Σ L_b² over this chunk's rows


def reconst_batch_size(ema: Tensor, global_batch_size: int) -> int:
    """r ∝ std of the reconstruction term / (std_r + std_d), clamped to [1, B_g − 1] (§5.2).

    Before the first EMA update the statistics are undefined and r = 1, as in the official code
    (there 0/1e-8 rounds to 0 and is clamped).
    """
    bias, m_r, q_r, m_d, q_d = ema.tolist()
    if bias <= EMA_INIT:
        return 1
    c = 1 / bias
    std_r = math.sqrt(max(c * q_r - (c * m_r) ** 2, 0.0))
    std_d = math.sqrt(max(c * q_d - (c * m_d) ** 2, 0.0))
    r = round(global_batch_size * std_r / (1e-8 + std_r + std_d))
    return min(max(r, 1), global_batch_size - 1)


def update_reconst_ema(ema: Tensor, sums: Tensor, r: int, global_batch_size: int,
                       beta: float) -> None:
    """One EMA step towards the global-batch means of reconst, reconst², L and L² (in place).

    The official code updates per rank and accumulation step with chunk targets Σ/r̄ and then
    averages the EMAs over ranks; averaged over chunks those targets are exactly these global
    means, so this equals the official rule with one accumulation step and, unlike it, does not
    depend on how the batch is split.
    """
    n_diff = global_batch_size - r
    targets = torch.stack([torch.ones((), dtype=torch.float64, device=ema.device),
                           sums[0] / r, sums[1] / r, sums[2] / n_diff, sums[3] / n_diff])
    ema += (1 - beta) * (targets.to(ema) - ema)


@torch.no_grad()
def scheduled_sampling_tokens(plaid: Plaid, x: Tensor, src_mask: Tensor, t: Tensor,
                              embedding: Tensor, step: int, rng: RowRandom,
                              opts: LossOptions) -> Tensor:
    """Replace the tokens of some rows by the model's own ancestral samples (§5.6).

    Row b is chosen when ratio_b > gold_prob(step) and n_b = ceil(ss_steps·t_b) − 1 > 0; it runs
    n_b sampler iterations from t = 1 and is decoded at its own final time. (The official code
    indexes n by the wrong rows and decodes every row at one time, §13.5; not reproduced.)
    """
    gold_prob = (1 - opts.min_prob) * (opts.total_steps - step) / opts.total_steps + opts.min_prob
    ratio = rng.rand().to(x.device)
    togo = torch.ceil(opts.ss_steps * t).long() - 1
    chosen = (ratio > gold_prob) & (togo > 0)  # runs even if empty: see `diffusion_loss` step 4
    L, D = x.shape[1], embedding.shape[1]
    src = src_mask[chosen]
    denoiser = NetworkDenoiser(plaid.model, embedding, embedding[x[chosen]],
                               src if opts.fix_src else None, decode_at=togo[chosen])
    randn = lambda: rng.randn(L, D).to(x.device).double()[chosen]  # noqa: E731 (all rows draw)
    ancestral(denoiser, plaid.gamma, randn(), opts.ss_steps, randn, score_temp=opts.ss_score_temp)
    sampled = torch.where(src, x[chosen], decode(denoiser.logits))
    x0 = x.clone()
    x0[chosen] = sampled
    return x0


def diffusion_loss(plaid: Plaid, x: Tensor, attn_mask: Tensor, src_mask: Tensor, rows: Tensor,
                   global_batch_size: int, step: int, rng: RowRandom, opts: LossOptions,
                   train: bool = True) -> LossOutput:
    """The §5 objective on one chunk: x, attn_mask, src_mask [B, L]; rows [B] global indices.

    train=False is the validation bound of §5.10: r = ⌊B_g/8⌋ + Bernoulli, divisor B_g/8, all
    rows self-conditioned, bias_scale 1, no scheduled sampling.
    """
    B, L = x.shape
    Bg, device = global_batch_size, x.device
    rows = rows.to(device)
    g = rng.step_generator

    # 1. global split: reconstruction rows, times, self-conditioned rows, bias warm-up
    if train:
        r = reconst_batch_size(plaid.reconst_ema, Bg)
        recon_div, diff_div = r, Bg - r
        u = torch.rand((), generator=g, dtype=torch.float64).item()
        offset = int(torch.randint(4, (), generator=g))
        s = (rows % 4 == offset) & opts.selfcond
        bias_scale = min(1.0, (step + 1e-8) / (opts.bias_warmup_steps + 1e-8))
    else:
        r = Bg // 8 + int(torch.rand((), generator=g).item() < (Bg % 8) / 8)
        recon_div, diff_div = Bg / 8, Bg - Bg / 8
        u = torch.rand((), generator=g, dtype=torch.float64).item()
        s = torch.full((B,), opts.selfcond, device=device)
        bias_scale = 1.0
    recon = rows < r
    # float64 from the start, as the official code (float64 default dtype): `rows - r + u` on an
    # int tensor would round to float32 first (up to 3e-8 off) before the division.
    t = torch.where(recon, 0.0, ((rows - r).double() + u) / max(Bg - r, 1))

    def frozen_if_selfcond(v: Tensor) -> Tensor:
        return torch.where(s.view(-1, *[1] * (v.dim() - 1)), v.detach(), v)

    # 2. schedule, with the variance-minimising hook on γ_n and γ_n' of the diffusion rows
    gamma_n, dgamma_n = plaid.noise_schedule.with_derivative(t)
    gamma_n = torch.where(recon, gamma_n.detach(), gamma_n)
    dgamma_n = torch.where(recon, 0.0, dgamma_n)
    hook_scale: dict[str, Tensor] = {}  # 2·L_b, known only after the forward pass
    if gamma_n.requires_grad:
        for tensor in (gamma_n, dgamma_n):
            tensor.register_hook(lambda grad: grad * hook_scale["2L"])
    g0, g1 = plaid.gamma_bounds.gamma_0.double(), plaid.gamma_bounds.gamma_1.double()
    gamma = frozen_if_selfcond(g0 + (g1 - g0) * gamma_n)
    dgamma = frozen_if_selfcond((g1 - g0) * dgamma_n)
    alpha_sq_1 = frozen_if_selfcond(torch.sigmoid(-g1).expand(B))
    sigma_sq_1 = frozen_if_selfcond(torch.sigmoid(g1).expand(B))

    # 3. noisy latent z = α e(x') + σ ε (x' = x, or the model's own sample under scheduled sampling)
    embedding = plaid.embedding_matrix()
    x_embed = frozen_if_selfcond(embedding[x])
    noised_embed = x_embed
    if train and opts.min_prob < 1:
        x0 = scheduled_sampling_tokens(plaid, x, src_mask, t, embedding.detach(), step, rng, opts)
        noised_embed = frozen_if_selfcond(embedding[x0])
    eps = rng.randn(L, embedding.shape[1]).to(device)
    alpha, sigma = torch.sigmoid(-gamma).sqrt()[:, None, None], torch.sigmoid(gamma).sqrt()[:, None, None]
    z = (alpha * noised_embed + sigma * eps).float()

    # 4. self-conditioning pass (no grad) on s rows, then the main pass
    fix = dict(x_embed=x_embed, src_mask=src_mask) if opts.fix_src else {}
    # Both passes run on every process even when s selects no row here: FSDP gathers the
    # weights at every forward, so all processes must make the same network calls.
    x_selfcond = torch.zeros_like(z)
    with torch.no_grad():
        fix_s = {k: v[s] for k, v in fix.items()}
        _, x_selfcond[s] = plaid.model(z[s], gamma[s], embedding, bias_scale,
                                       torch.zeros_like(z[s]), **fix_s)
    # γ reaches the network in float64 (it derives α, σ and its noise features from it, as the
    # official float64 code does); the activations stay float32.
    logits, x_hat = plaid.model(z, gamma, embedding, bias_scale, x_selfcond,
                                selfcond_mask=s.float(), **fix)

    # 5. per-term losses: means over all positions for the loss, over target tokens for the nll
    target = (attn_mask & ~src_mask).double()

    def mean_all(v_BL: Tensor) -> Tensor:
        return v_BL.double().sum(1) / (L + 0.01)

    def mean_target(v_BL: Tensor) -> Tensor:
        return (v_BL.double() * target).sum(1) / (target.sum(1) + 0.01)

    ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")  # [B, L]
    reconst, nll_reconst = mean_all(ce), mean_target(ce)
    mse = (x_embed - x_hat).pow(2).sum(-1)  # [B, L]
    snr_prime = -torch.exp(-gamma) * dgamma  # d SNR / dt < 0
    diff, nll_diff = -0.5 * snr_prime * mean_all(mse), -0.5 * snr_prime * mean_target(mse)
    kl = (-0.5 * sigma_sq_1.log()[:, None, None] + (sigma_sq_1[:, None, None]
          + alpha_sq_1[:, None, None] * x_embed.double().pow(2)) / 2 - 0.5).sum(-1)  # [B, L]
    prior = kl.sum() / (B * L + 0.01)
    nll_prior = (kl * target).sum() / (target.sum() + 0.01)
    if gamma_n.requires_grad:
        hook_scale["2L"] = torch.where(recon, 1.0, 2 * diff.detach())

    # 6. this chunk's share of the global objective
    chunk = B / Bg
    is_recon, is_diff = recon.double(), (~recon).double()
    reconst_term = (is_recon * reconst).sum() / recon_div
    loss = reconst_term + (is_diff * diff).sum() / diff_div + chunk * prior
    selfcond_frac = 0.25 if (train and opts.selfcond) else 1.0
    weight = s.double() if opts.selfcond else torch.ones_like(is_recon)
    nll = ((is_recon * weight * nll_reconst).sum() / (recon_div * selfcond_frac)
           + (is_diff * weight * nll_diff).sum() / (diff_div * selfcond_frac) + chunk * nll_prior)
    metrics = dict(loss=loss.item() / chunk, nll=nll.item() / chunk, reconst=reconst_term.item() / chunk,
                   prior=prior.item(), gamma_0=g0.item(), gamma_1=g1.item(), reconst_bs=r)
    ema_sums = torch.stack([(is_recon * reconst).sum(), (is_recon * reconst ** 2).sum(),
                            (is_diff * diff).sum(), (is_diff * diff ** 2).sum()]).detach()
    return LossOutput(loss.float(), metrics, ema_sums)
