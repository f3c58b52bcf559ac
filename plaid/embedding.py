"""Plaid's token embeddings (spec §3): a raw matrix whose rows are used at unit length."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class EmbeddingMatrix(nn.Module):
    """E = matrix / (‖row‖ + 1e-8).

    Unit-norm rows make the output "bias" term (α/σ²)·z·e_v the exact single-token Gaussian
    posterior logit and fix the data scale the schedule is learned against.
    """

    def __init__(self, vocab_size: int, embed_dim: int):
        super().__init__()
        matrix = torch.randn(vocab_size, embed_dim)
        self.matrix = nn.Parameter(matrix / matrix.norm(dim=1, keepdim=True))

    def forward(self) -> Tensor:
        """The row-normalised matrix E, [V, D]."""
        return self.matrix / (self.matrix.norm(dim=1, keepdim=True) + 1e-8)
