"""Plaid noise schedule (spec §2): hand-computed values, normalisation, monotonicity, γ'."""
import math

import torch

from plaid.schedule import GammaBounds, NoiseSchedule

torch.set_num_threads(1)


def softplus(x):
    return math.log1p(math.exp(x))


def test_hand_computed_values():
    sched = NoiseSchedule(width=2)
    with torch.no_grad():
        sched.W1.copy_(torch.tensor([[0.5], [-1.0]]))
        sched.b1.copy_(torch.tensor([0.25, -0.375]))
        sched.W2.copy_(torch.tensor([[1.0, 2.0]]))

    def tilde(t):
        return sum(0.01 * softplus(w2) * math.tanh(softplus(w1) * (t - 0.5) + b)
                   for w1, b, w2 in ((0.5, 0.25, 1.0), (-1.0, -0.375, 2.0)))

    for t in (0.0, 0.3, 0.75, 1.0):
        expected = (tilde(t) - tilde(0.0)) / (tilde(1.0) - tilde(0.0))
        got = sched(torch.tensor([t], dtype=torch.float64)).item()
        assert abs(got - expected) < 1e-12, (t, got, expected)
    bounds = GammaBounds(-2.0, 5.0)
    gamma = bounds(sched(torch.tensor([0.3], dtype=torch.float64))).item()
    expected = -2.0 + 7.0 * (tilde(0.3) - tilde(0.0)) / (tilde(1.0) - tilde(0.0))
    assert abs(gamma - expected) < 1e-12


def test_normalised_and_monotone():
    torch.manual_seed(0)
    sched = NoiseSchedule(width=64)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    g = sched(t).detach()
    assert g.dtype == torch.float64
    assert abs(g[0].item()) < 1e-12 and abs(g[-1].item() - 1) < 1e-12
    assert (g.diff() > 0).all()


def test_derivative_matches_finite_differences_and_keeps_graph():
    torch.manual_seed(1)
    sched = NoiseSchedule(width=32)
    t = torch.tensor([0.05, 0.4, 0.9], dtype=torch.float64)
    g, dg = sched.with_derivative(t)
    h = 1e-6
    fd = (sched(t + h) - sched(t - h)).detach() / (2 * h)
    torch.testing.assert_close(dg.detach(), fd, rtol=1e-6, atol=1e-9)
    assert dg.requires_grad  # γ' stays a function of the schedule parameters
    dg.sum().backward()
    assert sched.W1.grad is not None and sched.W1.grad.abs().sum() > 0
    with torch.no_grad():
        g2, dg2 = sched.with_derivative(t)
    assert not g2.requires_grad and not dg2.requires_grad
    torch.testing.assert_close(dg2, dg.detach())
