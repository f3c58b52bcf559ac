"""The DDiT network of SEDD: a bidirectional transformer conditioned on the total noise sigma.

`model(x_BL, sigma_B)` returns log-scores [B, L, V]: entry (i, y) estimates
log p_sigma(x with x_i := y) / p_sigma(x) (spec §2). Module and parameter names follow the
official code key for key (spec §1.3), so the released `louaaron/sedd-*` state dicts load
without renaming.

Numerics: float32 everywhere on CPU (the reference path). On CUDA the blocks and the output
layer run under bf16 autocast like the official GPU path, with layer norms kept in float32;
the returned log-scores are cast back to float32. Attention is
`F.scaled_dot_product_attention` (PyTorch picks a flash kernel on CUDA by itself).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sedd_backend.graph import expm1_sigma

SIGMA_FEATURES = 256  # sinusoidal features of sigma
MAX_PERIOD = 10_000


def modulate(z: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation z (1 + scale) + shift."""
    return z * (1 + scale) + shift


def modulation(layer: nn.Linear, c_BC: Tensor | None, batch: int) -> Tensor:
    """adaLN's output [B, k]; with no conditioning (`c_BC` None: a sigma-blind network) it is
    the layer's bias, which is what the layer gives for a zero input, without the calls."""
    return layer(c_BC) if c_BC is not None else layer.bias.expand(batch, -1)


def rotate_half(u: Tensor) -> Tensor:
    """[u1, u2] -> [-u2, u1] over the last axis (GPT-NeoX rotary, not interleaved)."""
    u1, u2 = u.chunk(2, dim=-1)
    return torch.cat([-u2, u1], dim=-1)


class LayerNorm(nn.Module):
    """Layer norm without bias, computed in float32 even under autocast."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, z: Tensor) -> Tensor:
        with torch.autocast(z.device.type, enabled=False):
            z = F.layer_norm(z.float(), [self.dim])
        return z * self.weight


class EmbeddingLayer(nn.Module):
    """Token embedding as a bare [V, H] parameter (official key `vocab_embed.embedding`)."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x_BL: Tensor) -> Tensor:
        return self.embedding[x_BL]


class SigmaEmbedder(nn.Module):
    """sigma -> 256 sinusoidal features (cosines first) -> Linear, SiLU, Linear."""

    def __init__(self, cond_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(SIGMA_FEATURES, cond_dim), nn.SiLU(),
                                 nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma_B: Tensor) -> Tensor:
        half = SIGMA_FEATURES // 2
        freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, device=sigma_B.device) / half)
        args_BF = sigma_B.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args_BF), torch.sin(args_BF)], dim=-1))


class Rotary(nn.Module):
    """Rotary position tables for given token positions (0..L-1 unless told otherwise)."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self.register_buffer("inv_freq", self._inv_freq(), persistent=True)  # official key

    def _inv_freq(self) -> Tensor:
        return 1.0 / self.base ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # inv_freq is a function of head_dim: recompute it rather than trust (or require) a
        # stored copy, so checkpoints load with or without it (spec §1.3).
        state_dict[prefix + "inv_freq"] = self._inv_freq().to(self.inv_freq.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin tables [..., d] for positions [L] or [B, L]: angle p * inv_freq_k,
        repeated for both halves."""
        angles = positions.float()[..., None] * self.inv_freq.float()
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()


def apply_rotary(u_BLhd: Tensor, cos_LD: Tensor, sin_LD: Tensor) -> Tensor:
    """Rotate by position; tables are [L, d] (shared by the rows) or [B, L, d] (per row)."""
    cos, sin = cos_LD.unsqueeze(-2), sin_LD.unsqueeze(-2)  # broadcast over heads
    return u_BLhd * cos + rotate_half(u_BLhd) * sin


class DDiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN (shift, scale, gate) from the sigma embedding."""

    def __init__(self, dim: int, n_heads: int, cond_dim: int, dropout: float, mlp_ratio: int = 4):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h_BLH: Tensor, rotary: tuple[Tensor, Tensor], c_BC: Tensor | None,
                attn_mask: Tensor | None = None, kv: dict[str, Tensor] | None = None) -> Tensor:
        """One block. `kv` (cached decoding) holds key and value buffers kv['k'], kv['v']
        [B, h, S, d] (S = kv['slots'], grown when full) whose first kv['n'] slots are earlier
        positions: this call's keys and values are written at slots n.. and the queries attend to slots 0..n+L-1
        (the key axis of `attn_mask`). The caller keeps them by advancing kv['n']."""
        B, L, H = h_BLH.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = \
            modulation(self.adaLN_modulation, c_BC, B)[:, None].chunk(6, dim=-1)

        qkv = self.attn_qkv(modulate(self.norm1(h_BLH), shift1, scale1))
        q, k, v = qkv.view(B, L, 3, self.n_heads, H // self.n_heads).unbind(2)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        q, k, v = (u.transpose(1, 2) for u in (q, k, v))  # [B, h, L, d]; v is not rotated
        if kv is not None:
            n, end = kv["n"], kv["n"] + L
            if "k" not in kv or kv["k"].shape[2] < end:  # allocate, or grow when full
                old_k, old_v = kv.get("k"), kv.get("v")
                slots = max(end, kv["slots"] if old_k is None else 2 * old_k.shape[2])
                kv["k"] = k.new_zeros(B, self.n_heads, slots, H // self.n_heads)
                kv["v"] = torch.zeros_like(kv["k"])
                if old_k is not None:
                    kv["k"][:, :, :n], kv["v"][:, :, :n] = old_k[:, :, :n], old_v[:, :, :n]
            kv["k"][:, :, n:end], kv["v"][:, :, n:end] = k, v
            k, v = kv["k"][:, :, :end], kv["v"][:, :, :end]
        o_BLH = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask) \
            .transpose(1, 2).reshape(B, L, H)
        h_BLH = h_BLH + gate1 * self.dropout(self.attn_out(o_BLH))

        mlp_out = self.mlp(modulate(self.norm2(h_BLH), shift2, scale2))
        return h_BLH + gate2 * self.dropout(mlp_out)


class DDitFinalLayer(nn.Module):
    """Modulated final norm and the output projection to V log-scores (zero-initialised)."""

    def __init__(self, dim: int, vocab_size: int, cond_dim: int):
        super().__init__()
        self.norm_final = LayerNorm(dim)
        self.linear = nn.Linear(dim, vocab_size)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim)
        for layer in (self.linear, self.adaLN_modulation):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h_BLH: Tensor, c_BC: Tensor | None) -> Tensor:
        shift, scale = modulation(self.adaLN_modulation, c_BC, h_BLH.shape[0])[:, None] \
            .chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(h_BLH), shift, scale))


class DDiT(nn.Module):
    """SEDD's diffusion transformer; `vocab_size` is the output size V (absorbing: tokens + 1).

    `time_conditioning=False` (`backbone.time_conditioning`; an option, not in SEDD) feeds a zero
    vector to every adaLN layer, so each modulation is its learned bias alone and the network
    ignores sigma. For the absorbing graph nothing is lost: the masks show how noisy a row is,
    and `scale_by_sigma` still adds the exact sigma-dependence of the log-score (MDLM drops
    time conditioning for the same reason). What is gained: adaLN's output depends on all
    cond_dim weights of its input, so Adam moves every shift, scale and gate about cond_dim
    times faster than an ordinary parameter; with a zero input those weights stay still.
    Measured on 3x3 multiplication (README, Results) this is what made the tiny DDiT learn as
    fast per step as a plain transformer. Parameters and state-dict keys are unchanged; like
    dropout the flag is a way of running the weights, set from the config, not stored in them.
    """

    def __init__(self, vocab_size: int, hidden_size: int = 768, cond_dim: int = 128,
                 n_heads: int = 12, n_blocks: int = 12, dropout: float = 0.1,
                 scale_by_sigma: bool = True, time_conditioning: bool = True,
                 previous_token: bool = False):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by n_heads {n_heads}")
        self.vocab_size = vocab_size
        self.scale_by_sigma = scale_by_sigma
        self.time_conditioning = time_conditioning
        self.arch = dict(hidden_size=hidden_size, cond_dim=cond_dim, n_heads=n_heads,
                         n_blocks=n_blocks, scale_by_sigma=scale_by_sigma,
                         previous_token=previous_token)  # for config checks
        self.vocab_embed = EmbeddingLayer(vocab_size, hidden_size)
        # An option, not in SEDD (`model.previous_token`): see `previous_ids`.
        self.prev_embed = EmbeddingLayer(vocab_size, hidden_size) if previous_token else None
        self.sigma_map = SigmaEmbedder(cond_dim)
        self.rotary_emb = Rotary(hidden_size // n_heads)
        self.blocks = nn.ModuleList(DDiTBlock(hidden_size, n_heads, cond_dim, dropout)
                                    for _ in range(n_blocks))
        self.output_layer = DDitFinalLayer(hidden_size, vocab_size, cond_dim)

    def forward(self, x_BL: Tensor, sigma: Tensor, attn_mask: Tensor | None = None,
                positions: Tensor | None = None,
                kv_cache: list[dict[str, Tensor]] | None = None,
                prev_BL: Tensor | None = None) -> Tensor:
        """Log-scores [B, L, V] for ids x_BL at total noise sigma (shape [], [B] or [B, 1]).

        Bidirectional by default (SEDD). Block diffusion (`sedd_backend.blocks`) passes a
        boolean `attn_mask` [B, 1, L, L] (True = may attend), the rotary `positions` ([L], or
        [B, L] per row) of its tokens, for cached decoding one `kv_cache` dict per block
        (see `DDiTBlock.forward`), and, with `previous_token`, the ids `prev_BL` each position
        sees before it when that is not simply `previous_ids(x_BL)`.
        """
        sigma_B = torch.as_tensor(sigma, device=x_BL.device).reshape(-1).expand(x_BL.shape[0])
        h_BLH = self.vocab_embed(x_BL)
        if self.prev_embed is not None:
            prev_BL = previous_ids(x_BL, self.vocab_size - 1) if prev_BL is None else prev_BL
            h_BLH = h_BLH + self.prev_embed(prev_BL)
        c_BC: Tensor | None = None  # sigma-blind decoding: each adaLN output is its bias
        if self.time_conditioning:
            c_BC = F.silu(self.sigma_map(sigma_B))
        elif torch.is_grad_enabled():  # training: a zero input keeps the adaLN weights in the
            # autograd graph (zero gradients), as DDP and the optimizer have always seen them
            c_BC = h_BLH.new_zeros(x_BL.shape[0], self.sigma_map.mlp[-1].out_features)
        if positions is None:
            positions = torch.arange(x_BL.shape[1], device=x_BL.device)
        rotary = self.rotary_emb(positions)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x_BL.is_cuda):
            for i, block in enumerate(self.blocks):
                h_BLH = block(h_BLH, rotary, c_BC, attn_mask,
                              kv_cache[i] if kv_cache is not None else None)
            out_BLV = self.output_layer(h_BLH, c_BC).float()
        if self.scale_by_sigma:
            # Centre the log-score of a masked position near 0: the true score there is of
            # order 1 / (e(sigma) (V - 1)).
            shift_B11 = torch.log(expm1_sigma(sigma_B.float()))[:, None, None]
            out_BLV = out_BLV - shift_B11 - math.log(self.vocab_size - 1)
        # The ratio p(x)/p(x) is 1: the current token's log-score is exactly 0.
        return out_BLV.scatter(-1, x_BL[..., None], 0.0)


def previous_ids(x_BL: Tensor, mask_id: int) -> Tensor:
    """The id before every position (the mask id before the first): `model.previous_token`.

    Why: a masked position holds no content of its own, so to predict it the network must
    first carry what it depends on into that position by attention, one layer an
    autoregressive model does not spend (it predicts from the last clean token, whose residual
    stream already holds it). Adding an embedding of the previous token to every position
    gives the mask that content at layer 0; measured in the README (Results).
    """
    return torch.cat([x_BL.new_full((x_BL.shape[0], 1), mask_id), x_BL[:, :-1]], dim=1)


MODEL_KEYS = ("hidden_size", "cond_dim", "n_heads", "n_blocks", "dropout", "scale_by_sigma")


def build_model(model_cfg: Any, graph_type: str, tokens: int) -> DDiT:
    """DDiT from a config's `model` section over `tokens` real tokens and the given graph."""
    absorb = graph_type == "absorb"
    if model_cfg["scale_by_sigma"] and not absorb:
        raise ValueError("model.scale_by_sigma=true only works with graph.type=absorb "
                         "(set model.scale_by_sigma=false for the uniform graph)")
    kwargs = {k: model_cfg[k] for k in MODEL_KEYS}
    previous_token = bool(model_cfg.get("previous_token", False))
    if previous_token and not absorb:
        raise ValueError("model.previous_token=true needs graph.type=absorb (its first position "
                         "sees the mask id)")
    return DDiT(tokens + 1 if absorb else tokens, **kwargs, previous_token=previous_token)
