"""Noise schedules: time t in [0, 1] -> total noise sigma(t) and its rate sigma'(t) (spec §3).

The network is conditioned on sigma, never on t; the loss weights by sigma'(t) and the samplers
step in t. The official schedule modules own one unused dummy parameter (it only shows up in
the optimizer); it has no effect, so these schedules are plain parameter-free objects.
"""
from __future__ import annotations

import abc
import math
from typing import Any

import torch
from torch import Tensor


class Noise(abc.ABC):
    """A schedule; `noise(t)` returns `(total, rate)` with t's shape, like SEDD's `noise_lib`."""

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.total_noise(t), self.rate_noise(t)

    @abc.abstractmethod
    def total_noise(self, t: Tensor) -> Tensor:
        """sigma(t), the integral of the rate from 0 to t."""

    @abc.abstractmethod
    def rate_noise(self, t: Tensor) -> Tensor:
        """sigma'(t)."""


class LogLinearNoise(Noise):
    """1 - exp(-sigma(t)) = (1 - eps) t: the masking probability grows linearly in t.

    eps = 1e-3 is fixed; like the official code the config's sigma_min/sigma_max are ignored
    (bug 19), so sigma(1) = -log(eps).
    """

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def total_noise(self, t: Tensor) -> Tensor:
        return -torch.log1p(-(1 - self.eps) * t)

    def rate_noise(self, t: Tensor) -> Tensor:
        return (1 - self.eps) / (1 - (1 - self.eps) * t)


class GeometricNoise(Noise):
    """sigma(t) = sigma_min^(1-t) sigma_max^t."""

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 1.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def total_noise(self, t: Tensor) -> Tensor:
        return self.sigma_min ** (1 - t) * self.sigma_max ** t

    def rate_noise(self, t: Tensor) -> Tensor:
        return self.total_noise(t) * (math.log(self.sigma_max) - math.log(self.sigma_min))


def get_noise(noise_cfg: Any) -> Noise:
    """Schedule from the config's `noise` section (`type`, and sigma_min/sigma_max for geometric)."""
    kind = noise_cfg["type"]
    if kind == "loglinear":
        return LogLinearNoise()
    if kind == "geometric":
        return GeometricNoise(float(noise_cfg["sigma_min"]), float(noise_cfg["sigma_max"]))
    raise ValueError(f"unknown noise type {kind!r}; use noise.type=loglinear or geometric")
