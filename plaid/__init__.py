"""Plaid (continuous-embedding diffusion LM) as a DoT backbone.

`spec §N` in this package is section N of `shared/spec/plaid.md`, the reference notes kept
beside the checkout (`../shared/spec/` from the repository root).
"""
from plaid.weights import Plaid, load_weights, save_weights

__all__ = ["Plaid", "load_weights", "save_weights"]
