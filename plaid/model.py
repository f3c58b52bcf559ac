"""Plaid's denoising transformer (spec §4).

A bidirectional pre-norm transformer that maps a noisy latent z (B, L, D) at noise level γ to
token logits and the expected clean embedding x̂ = softmax(logits)·E. Key names and shapes match
the official `model.pt`, so the released Plaid-1B weights load unchanged.

Attention uses PyTorch's scaled_dot_product_attention, which picks a fused kernel (flash or
memory-efficient) by itself on GPU; nothing outside PyTorch is needed. The μP readout multiplier
256/d_model is applied by hand, as the official code does, so `mup` is not a dependency.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MUP_BASE_WIDTH = 256  # width of the μP base model; width_mult = d_model / 256
NORM_EPS = 1e-5


def noise_level_features(gamma_B: Tensor) -> Tensor:
    """g(γ) = [sin(γ f_k), cos(γ f_k)], 32 frequencies f_k log-spaced over e^-5..e^5 (float64)."""
    freqs = torch.linspace(-5.0, 5.0, 32, dtype=torch.float64, device=gamma_B.device).exp()
    angles = gamma_B.double()[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class RMSNorm(nn.Module):
    """h·w / sqrt(mean(h²) + 1e-5): no mean subtraction (apex FusedRMSNorm semantics)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, h: Tensor) -> Tensor:
        h = h.float()
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + NORM_EPS) * self.weight


class RotaryEmbedding(nn.Module):
    """Non-interleaved ("rotate-half") rotary embedding over the full head dim, base 10000.

    `inv_freq` is a persistent buffer because the official state dict stores it.
    """

    def __init__(self, head_dim: int):
        super().__init__()
        inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, x_BHLd: Tensor) -> Tensor:
        positions = torch.arange(x_BHLd.shape[-2], device=x_BHLd.device, dtype=torch.float32)
        theta = torch.outer(positions, self.inv_freq.float())  # [L, d/2]
        cos, sin = theta.cos().repeat(1, 2), theta.sin().repeat(1, 2)  # [L, d]
        first, second = x_BHLd.chunk(2, dim=-1)
        rotated_half = torch.cat([-second, first], dim=-1)
        return x_BHLd * cos + rotated_half * sin


class MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim, bias=False)
        self.fc2 = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class Block(nn.Module):
    """RMSNorm → fused QKV → rotary → full (unmasked) attention → residual; RMSNorm → MLP → residual.

    Residual branches are scaled by 1/sqrt(n_blocks). No padding mask: the released weights were
    trained attending to PAD (spec §13.6).
    """

    def __init__(self, dim: int, n_heads: int, residual_scale: float):
        super().__init__()
        self.n_heads = n_heads
        self.residual_scale = residual_scale
        self.rmsnorm1 = RMSNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.rmsnorm2 = RMSNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, h_BLd: Tensor, rotary: RotaryEmbedding) -> Tensor:
        B, L, dim = h_BLd.shape
        # feature index = (which ∈ {q,k,v}, head, head dim), slowest first
        qkv = self.attn_qkv(self.rmsnorm1(h_BLd)).view(B, L, 3, self.n_heads, dim // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, L, d_h]
        attn = F.scaled_dot_product_attention(rotary(q), rotary(k), v)
        h_BLd = h_BLd + self.residual_scale * self.attn_out(attn.transpose(1, 2).reshape(B, L, dim))
        return h_BLd + self.residual_scale * self.mlp(self.rmsnorm2(h_BLd))


class DiffusionModel(nn.Module):
    """The network of spec §4; call as `model(z, gamma, E, bias_scale, x_selfcond, ...)`."""

    def __init__(self, vocab_size: int, embed_dim: int, dim: int, n_blocks: int, n_heads: int):
        super().__init__()
        assert dim % n_heads == 0, f"hidden_size {dim} is not a multiple of n_heads {n_heads}"
        self.embed_dim = embed_dim
        self.width_mult = dim / MUP_BASE_WIDTH
        self.output_mult = 1 / self.width_mult  # μP readout multiplier: output_mult (1) / width_mult
        self.input_linear = nn.Linear(embed_dim, dim, bias=False)
        self.selfcond_linear = nn.Linear(embed_dim, dim, bias=False)
        self.gamma_linear = nn.Linear(64, dim, bias=False)
        self.rotary_emb = RotaryEmbedding(dim // n_heads)
        self.blocks = nn.ModuleList(Block(dim, n_heads, 1 / math.sqrt(n_blocks)) for _ in range(n_blocks))
        self.output_norm = nn.LayerNorm(dim, eps=NORM_EPS, bias=False)
        self.output_linear = nn.Linear(dim, vocab_size)
        for zero_init in (self.selfcond_linear.weight, self.gamma_linear.weight,
                          self.output_linear.weight, self.output_linear.bias):
            nn.init.zeros_(zero_init)

    def forward(self, z: Tensor, gamma: Tensor, embedding_matrix: Tensor, bias_scale: float | Tensor,
                x_selfcond: Tensor, selfcond_mask: Tensor | None = None, x_embed: Tensor | None = None,
                src_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits [B, L, V] and x̂ = softmax(logits)·E [B, L, D], both float32.

        z [B, L, D] noisy latent; gamma [B] bounded γ; embedding_matrix E [V, D] normalised;
        x_selfcond [B, L, D]; selfcond_mask [B] (default ones) only routes gradients: rows with
        s = 1 see E through a stop-gradient in the output layer. With x_embed (and src_mask) the
        source positions of the scaled input and of x_selfcond are replaced by the clean
        embedding (DoT fix_src, §4.2; the output bias keeps the unsubstituted z, §13.7).
        """
        B, L, D = z.shape
        z = z.float()
        gamma64 = gamma.double().reshape(B)
        alpha_sq, sigma_sq = torch.sigmoid(-gamma64), torch.sigmoid(gamma64)
        # 1. input scaling: each coordinate of z has variance ≈ α²/D + σ²
        u = z / torch.sqrt(alpha_sq / D + sigma_sq).float()[:, None, None]
        # 2. DoT fix_src: clean source embeddings replace the scaled input and the self-cond input
        if x_embed is not None:
            keep = torch.ones_like(z, dtype=torch.bool) if src_mask is None else src_mask[..., None]
            u = torch.where(keep, x_embed.float(), u)
            x_selfcond = torch.where(keep, x_embed.float(), x_selfcond.float())
        # 3. input projections
        h = (self.input_linear(u) + self.selfcond_linear(math.sqrt(D) * x_selfcond.float())
             + self.gamma_linear(noise_level_features(gamma64).float())[:, None, :])
        # 4. transformer
        for block in self.blocks:
            h = block(h, self.rotary_emb)
        # 5-6. output LayerNorm (no bias) and μP multiplier
        h = self.output_norm(h.float()) * self.output_mult
        # 7. readout + the Gaussian posterior "bias" term bias_scale·(α/σ²)·z·Eᵀ
        s = torch.ones(B, device=z.device) if selfcond_mask is None else selfcond_mask.float()
        s = s[:, None, None]
        E, E_frozen = embedding_matrix.float(), embedding_matrix.float().detach()
        zb = bias_scale * (alpha_sq.sqrt() / sigma_sq).float()[:, None, None] * z
        logits = (F.linear(h, self.output_linear.weight, self.output_linear.bias)
                  + (zb * (1 - s)) @ E.T + (zb * s) @ E_frozen.T)
        # 8. reconstruction: the expected embedding under the predicted distribution
        probs = logits.softmax(-1)
        x_reconst = (probs * (1 - s)) @ E + (probs * s) @ E_frozen
        return logits, x_reconst
