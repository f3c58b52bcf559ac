"""Autoregressive baseline: a causal transformer of the same size, greedy KV-cache decoding.

It trains through the same `finetune.py` on the same rows as the diffusion backbones
(`backbone=ar`): next-token cross-entropy on the target, its EOS, and the first PAD after it
(so a multi-pass thought learns where it ends). Decoding feeds rows with prefixes of different
lengths left-aligned by position: each row's tokens carry their own rotary positions and
padding keys are masked, so one batched forward per generated token serves every row.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dot.backbone import Backbone, Batch, SampleResult
from dot.rng import RowRandom
from dot.tokenization import Tokenizer


def rotate(x_BHTD: Tensor, pos_BT: Tensor) -> Tensor:
    """Rotary position embedding (rotate-half convention) at per-row positions."""
    d = x_BHTD.shape[-1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, device=x_BHTD.device).float() / d))
    angles = pos_BT[:, None, :, None].float() * inv_freq  # [B, 1, T, d/2]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x_BHTD[..., : d // 2], x_BHTD[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * dim, dim))

    def forward(self, h: Tensor, pos_BT: Tensor, mask_BTS: Tensor,
                cache: dict[str, Tensor] | None) -> Tensor:
        B, T, C = h.shape
        q, k, v = (self.qkv(self.norm1(h)).view(B, T, 3, self.n_heads, C // self.n_heads)
                   .permute(2, 0, 3, 1, 4))
        q, k = rotate(q, pos_BT), rotate(k, pos_BT)
        if cache is not None:  # append this call's keys/values to the cache
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        drop = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_BTS[:, None], dropout_p=drop)
        h = h + F.dropout(self.out(att.transpose(1, 2).reshape(B, T, C)), drop, self.training)
        return h + F.dropout(self.mlp(self.norm2(h)), drop, self.training)


class CausalTransformer(nn.Module):
    def __init__(self, vocab_size: int, dim: int, n_heads: int, n_blocks: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, n_heads, dropout) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, x_BT: Tensor, pos_BT: Tensor, mask_BTS: Tensor,
                caches: list[dict[str, Tensor]] | None = None) -> Tensor:
        h = self.embed(x_BT)
        for i, block in enumerate(self.blocks):
            h = block(h, pos_BT, mask_BTS, caches[i] if caches is not None else None)
        return self.head(self.norm(h))


class ARBackbone(Backbone):
    name = "ar"

    @classmethod
    def from_config(cls, cfg: Any, tokenizer: Tokenizer) -> "ARBackbone":
        if cfg.init != "scratch":
            raise ValueError(f"init={cfg.init!r}: the AR baseline only trains from scratch")
        m = cfg.model
        return cls(cfg, tokenizer, CausalTransformer(tokenizer.vocab_size, m.hidden_size,
                                                     m.n_heads, m.n_blocks, m.dropout))

    def loss(self, batch: Batch, rng: RowRandom) -> tuple[Tensor, dict[str, float]]:
        ids, B, L = batch.input_ids, *batch.input_ids.shape
        # Scored positions: target tokens and the first padding slot after them.
        first_pad = torch.zeros_like(batch.attention_mask)
        length = batch.attention_mask.sum(1)
        rows = torch.arange(B, device=ids.device)[length < L]
        first_pad[rows, length[length < L]] = True
        scored = (~batch.fixed_mask & batch.attention_mask) | first_pad
        pos = torch.arange(L, device=ids.device).expand(B, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril().expand(B, L, L)
        logits = self.model(ids[:, :-1], pos[:, :-1], causal[:, :-1, :-1])
        ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        mask = scored[:, 1:].float()
        per_row = (ce * mask).sum(1) / mask.sum(1).clamp_min(1)
        with torch.no_grad():
            acc = ((logits.argmax(-1) == ids[:, 1:]).float() * mask).sum() / mask.sum()
        return per_row.sum() / batch.global_batch_size, {"token_acc": acc.item()}

    @torch.no_grad()
    def sample(self, input_ids: Tensor, fixed_mask: Tensor, steps: int,
               generator: torch.Generator, record_chain: bool = False,
               **options: Any) -> SampleResult:
        """Greedy decoding after each row's prefix; `steps` is ignored (one call per token)."""
        self.check_sample_options(options)
        tok, (B, L), dev = self.tokenizer, input_ids.shape, input_ids.device
        plen = fixed_mask.sum(1)
        P = int(plen.max())
        # Right-align the prefixes so every row's next token is written at the same column.
        shift = P - plen
        cols = torch.arange(P, device=dev).expand(B, P)
        src = (cols - shift[:, None]).clamp_min(0)
        prefix = torch.where(cols >= shift[:, None], input_ids.gather(1, src), tok.pad_id)
        valid = cols >= shift[:, None]  # key validity
        pos = (cols - shift[:, None]).clamp_min(0)
        caches: list[dict[str, Tensor]] = [{} for _ in self.model.blocks]
        mask = valid[:, None, :] & torch.ones(P, P, dtype=torch.bool, device=dev).tril()
        logits = self.model(prefix, pos, mask, caches)[:, -1]
        out = input_ids.clone()
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        nfe, budget = 1, int((L - plen).max())
        row_nfe = torch.ones(B, dtype=torch.long, device=dev)
        chain = [] if record_chain else None
        for t in range(budget):
            nxt = logits.argmax(-1)
            write = ~done & (plen + t < L)
            cols_t = (plen + t).clamp_max(L - 1)
            out[write, cols_t[write]] = nxt[write]
            done |= ~write | (nxt == tok.eos_id) | (nxt == tok.pad_id) | (plen + t + 1 >= L)
            if record_chain:
                chain.append(out.clone())
            if done.all() or t == budget - 1:
                break
            valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool, device=dev)], 1)
            logits = self.model(nxt[:, None], (plen + t)[:, None], valid[:, None, :], caches)[:, -1]
            nfe += 1
            row_nfe += (~done).long()
        # Everything after a row's stop token is padding, as diffusion backbones would emit.
        cols = torch.arange(L, device=dev).expand(B, L)
        stop = torch.where((out == tok.eos_id) & ~fixed_mask, cols, L).min(1).values
        out = torch.where(cols > stop[:, None], tok.pad_id, out)
        return SampleResult(out, nfe, chain, row_nfe)
