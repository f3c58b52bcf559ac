"""Plaid (continuous-embedding diffusion LM) as a DoT backbone; see /work/shared/spec/plaid.md."""
from plaid.weights import Plaid, load_weights, save_weights

__all__ = ["Plaid", "load_weights", "save_weights"]
