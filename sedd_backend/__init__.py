"""SEDD (score entropy discrete diffusion) backbone of DoT: network, graphs, noise, loss, samplers.

Modules: `model` (DDiT), `noise` (schedules), `graph` (forward processes), `losses`
(training objective), `sampling` (predictors and the PC loop), `load` (checkpoints and hub
models), `backbone` (the `dot.backbone.Backbone` implementation).

`spec §N` in this package is section N of `shared/spec/sedd.md`, the reference notes kept
beside the checkout (`../shared/spec/` from the repository root).
"""
from sedd_backend.load import load_model

__all__ = ["load_model"]
