"""SEDD (score entropy discrete diffusion) backbone of DoT: network, graphs, noise, loss, samplers.

Modules: `model` (DDiT), `noise` (schedules), `graph` (forward processes), `losses`
(training objective), `sampling` (predictors and the PC loop), `load` (checkpoints and hub
models), `backbone` (the `dot.backbone.Backbone` implementation).
"""
from sedd_backend.load import load_model

__all__ = ["load_model"]
