"""The autoregressive baseline: a causal transformer of the same size as the diffusion models,
decoded greedily with a KV cache, behind the same `Backbone` interface."""
from ar_backend.backbone import ARBackbone

__all__ = ["ARBackbone"]
