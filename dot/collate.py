"""Token pairs -> fixed-length tensors: input_ids, fixed_mask (prefix) and attention_mask.

Every row has exactly `seq_len` positions, in training and at test time, so a diffusion model
always sees the length it will be asked to fill. Training keeps the target (cut to fit) and
drops tokens from the *start* of the prefix; at test time a prefix that leaves no room to
generate is an error naming the example.
"""
from __future__ import annotations

import torch
from torch import Tensor


class SequenceTooLongError(ValueError):
    pass


def collate(pairs: list[tuple[list[int], list[int]]], seq_len: int,
            pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Training rows: [B, seq_len] ids, fixed mask, attention mask (padding False)."""
    ids = torch.full((len(pairs), seq_len), pad_id, dtype=torch.long)
    fixed = torch.zeros((len(pairs), seq_len), dtype=torch.bool)
    attn = torch.zeros((len(pairs), seq_len), dtype=torch.bool)
    for row, (prefix, target) in enumerate(pairs):
        target = target[: seq_len - 1]  # leave at least the prefix's last token (SEP)
        room = seq_len - len(target)
        prefix = prefix[-room:] if len(prefix) > room else prefix
        seq = prefix + target
        ids[row, : len(seq)] = torch.tensor(seq)
        fixed[row, : len(prefix)] = True
        attn[row, : len(seq)] = True
    return ids, fixed, attn


def collate_prompts(prompts: list[list[int]], seq_len: int, pad_id: int,
                    names: list[str] | None = None) -> tuple[Tensor, Tensor]:
    """Test rows: the prefix (ending in SEP) then PAD to generate into; [B, seq_len] each."""
    ids = torch.full((len(prompts), seq_len), pad_id, dtype=torch.long)
    fixed = torch.zeros((len(prompts), seq_len), dtype=torch.bool)
    for row, prefix in enumerate(prompts):
        if len(prefix) >= seq_len:
            name = names[row] if names else f"row {row}"
            raise SequenceTooLongError(
                f"{name}: the prompt has {len(prefix)} tokens, leaving no room to generate in "
                f"seq_len={seq_len}; raise training.block_size / --seq_len")
        ids[row, : len(prefix)] = torch.tensor(prefix)
        fixed[row, : len(prefix)] = True
    return ids, fixed
