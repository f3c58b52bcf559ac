"""Noise schedules, graphs, score entropy and sampler steps against brute-force definitions.

The reference for a graph is its generator matrix Q written down from spec §4 (column
convention: Q[y, x] = rate x -> y) and torch.linalg.matrix_exp for its transitions.
"""
import math

import pytest
import torch

from sedd_backend.graph import Absorbing, Uniform, get_graph
from sedd_backend.noise import GeometricNoise, LogLinearNoise, get_noise
from sedd_backend.sampling import AnalyticPredictor, Denoiser, EulerPredictor, sample_categorical

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def float64():
    """Brute force in float64."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


V = 6  # states, mask = 5 for the absorbing graph


def generator_matrix(graph):
    Q = torch.zeros(V, V, dtype=torch.float64)
    if graph.absorb:
        for x in range(V - 1):
            Q[V - 1, x], Q[x, x] = 1.0, -1.0
    else:
        Q += 1.0 / V
        Q -= torch.eye(V)
    return Q


GRAPHS = [Absorbing(V), Uniform(V)]
ids = pytest.mark.parametrize("graph", GRAPHS, ids=["absorb", "uniform"])


def all_states():
    return torch.arange(V)[None]  # [1, V]: one row holding every state


def test_loglinear_hand_values():
    noise = LogLinearNoise()
    t = torch.tensor([0.0, 0.25, 1.0])
    total, rate = noise(t)
    assert torch.allclose(total, torch.tensor([0.0, -math.log(1 - 0.999 * 0.25), -math.log(1e-3)]))
    assert torch.allclose(rate, torch.tensor([0.999, 0.999 / (1 - 0.999 * 0.25), 999.0]))
    assert torch.allclose(-torch.expm1(-total), 0.999 * t)  # masking probability linear in t
    assert isinstance(get_noise({"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20}), LogLinearNoise)


def test_geometric_hand_values_and_rate_is_derivative():
    noise = get_noise({"type": "geometric", "sigma_min": 1e-4, "sigma_max": 20})
    assert isinstance(noise, GeometricNoise)
    total, rate = noise(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(total, torch.tensor([1e-4, math.sqrt(1e-4 * 20), 20.0]))
    assert torch.allclose(rate, total * math.log(20 / 1e-4))
    t, h = torch.tensor([0.3]), 1e-6
    numeric = (noise.total_noise(t + h) - noise.total_noise(t - h)) / (2 * h)
    assert torch.allclose(noise.rate_noise(t), numeric, rtol=1e-6)
    with pytest.raises(ValueError, match="noise.type"):
        get_noise({"type": "cosine"})


@ids
def test_rates_and_transitions_match_generator(graph):
    Q = generator_matrix(graph)
    x = all_states()
    assert torch.allclose(graph.rate(x)[0], Q.T)          # row x = column x of Q
    assert torch.allclose(graph.transp_rate(x)[0], Q)     # row x = row x of Q
    sigma = torch.tensor([0.7])
    P = torch.linalg.matrix_exp(0.7 * Q)
    assert torch.allclose(graph.transition(x, sigma)[0], P.T)
    assert torch.allclose(graph.transp_transition(x, sigma)[0], P)


@ids
def test_staggered_score_is_inverse_transition_on_scores(graph):
    # p_{sigma - dsigma}(y) / p_sigma(x) = sum_z exp(-dsigma Q)[y, z] s_z
    Q = generator_matrix(graph)
    B = L = 3  # B == L: a [B] dsigma must not broadcast against positions (bug 10)
    score = torch.rand(B, L, V) + 0.1
    dsigma = torch.tensor([0.1, 0.6, 1.5])
    expected = torch.stack([score[b] @ torch.linalg.matrix_exp(-dsigma[b] * Q).T for b in range(B)])
    for shape in [(B,), (B, 1)]:
        assert torch.allclose(graph.staggered_score(score, dsigma.reshape(shape)), expected)
        got = graph.transp_transition(torch.randint(0, V, (B, L)).fill_(2), dsigma.reshape(shape))
        assert torch.allclose(got[:, 0], torch.stack([torch.linalg.matrix_exp(d * Q)[2] for d in dsigma]))


@ids
def test_reverse_rate_by_definition(graph):
    Q = generator_matrix(graph)
    x = torch.randint(0, V, (2, 4))
    score = torch.rand(2, 4, V) + 0.1
    got = graph.reverse_rate(x, score)
    for b in range(2):
        for i in range(4):
            xi = int(x[b, i])
            expected = torch.tensor([Q[xi, y] * score[b, i, y] if y != xi else 0.0 for y in range(V)])
            expected[xi] = -expected.sum()
            assert torch.allclose(got[b, i], expected)


def brute_score_entropy(Q, sigma, x, x0, log_score):
    """sum_{y != x} Q[x, y] (s_y - r_y log s_y + r_y (log r_y - 1)), r_y = p(y|x0) / p(x|x0)."""
    P = torch.linalg.matrix_exp(sigma * Q)
    total = 0.0
    for y in range(V):
        if y == x or Q[x, y] == 0:
            continue
        r = P[y, x0] / P[x, x0]
        K = r * (math.log(r) - 1) if r > 0 else 0.0
        total += Q[x, y] * (math.exp(log_score[y]) - r * log_score[y] + K)
    return float(total)


@ids
def test_score_entropy_by_definition_and_zero_at_true_score(graph):
    Q = generator_matrix(graph)
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.3, 2.0):  # both sides of the expm1 switch
        P = torch.linalg.matrix_exp(sigma * Q)
        x0 = torch.arange(V - 1 if graph.absorb else V)
        for x in range(V):
            x0_ok = x0[P[x, x0] > 0]  # only noisy states reachable from x0
            if len(x0_ok) == 0:
                continue
            n = len(x0_ok)
            log_score = torch.randn(n, V, generator=gen)
            got = graph.score_entropy(log_score[None], torch.tensor([sigma]),
                                      torch.full((1, n), x), x0_ok[None])[0]
            expected = torch.tensor([brute_score_entropy(Q, sigma, x, int(a), log_score[k])
                                     for k, a in enumerate(x0_ok)])
            assert torch.allclose(got, expected, atol=1e-9), (x, got, expected)
            # the true log-ratios give exactly 0, anything else more
            true = torch.log(P[:, x0_ok] / P[x, x0_ok]).T.clamp(min=-60.0)
            zero = graph.score_entropy(true[None], torch.tensor([sigma]), torch.full((1, n), x), x0_ok[None])
            assert torch.allclose(zero, torch.zeros_like(zero), atol=1e-9)
            off = graph.score_entropy(true[None] + 0.1, torch.tensor([sigma]), torch.full((1, n), x), x0_ok[None])
            assert torch.all(off >= 0) and (off.sum() > 0 or (graph.absorb and x != V - 1))


def true_score_fn(graph, p0):
    """Exact scores p_sigma(y) / p_sigma(x) of a one-position data distribution p0."""
    Q = generator_matrix(graph)

    def score_fn(x_BL, sigma_B):
        sigma_B = sigma_B.reshape(-1).expand(x_BL.shape[0]).double()
        pt_BV = torch.linalg.matrix_exp(sigma_B[:, None, None] * Q) @ p0
        return (pt_BV[:, None, :] / pt_BV.gather(-1, x_BL)[..., None])
    return score_fn, Q


def p0_for(graph):
    p0 = torch.tensor([0.1, 0.3, 0.05, 0.25, 0.2, 0.1])
    if graph.absorb:
        p0[-1] = 0.0
    return p0 / p0.sum()


@ids
def test_analytic_step_is_exact_reverse_conditional(graph):
    # For one position with exact scores the analytic step draws from
    # p(x_s = y | x_t = x) = p_s(y) P_{t|s}(x | y) / p_t(x).
    p0 = p0_for(graph)
    score_fn, Q = true_score_fn(graph, p0)
    noise = LogLinearNoise()
    t, dt = 0.8, 0.3
    sig_t, sig_s = (float(noise.total_noise(torch.tensor(v))) for v in (t, t - dt))
    ps = torch.linalg.matrix_exp(sig_s * Q) @ p0
    pt = torch.linalg.matrix_exp(sig_t * Q) @ p0
    step = torch.linalg.matrix_exp((sig_t - sig_s) * Q)
    x = all_states()
    probs = AnalyticPredictor(graph, noise).probs(score_fn, x, torch.tensor([t]), dt)[0]
    expected = ps[None, :] * step / pt[:, None]  # [x, y]
    assert torch.allclose(probs, expected, atol=1e-9)
    assert torch.allclose(probs.sum(-1), torch.ones(V))

    # Denoiser: straight to sigma = 0, so p0(y) P_t(x | y) / p_t(x); absorbing drops the mask
    den = Denoiser(graph, noise).probs(score_fn, x, torch.tensor([t]))[0]
    expected = p0[None, :] * torch.linalg.matrix_exp(sig_t * Q) / pt[:, None]
    assert torch.allclose(den, expected[:, :-1] if graph.absorb else expected, atol=1e-9)


@ids
def test_euler_step_by_definition(graph):
    p0 = p0_for(graph)
    score_fn, Q = true_score_fn(graph, p0)
    noise = LogLinearNoise()
    t, dt = 0.5, 0.01
    x = all_states()
    probs = EulerPredictor(graph, noise).probs(score_fn, x, torch.tensor([t]), dt)[0]
    sigma, rate = (float(v) for v in noise(torch.tensor(t)))
    s = score_fn(x, torch.tensor([sigma]))[0]
    R = Q * s  # R[x, y] = Q[x, y] s_x(y) off the diagonal
    R -= torch.diag(torch.diagonal(R))
    R -= torch.diag(R.sum(-1))
    assert torch.allclose(probs, torch.eye(V) + dt * rate * R, atol=1e-9)


def test_categorical_race_official_rule_and_frequencies():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, -0.2])
    n = 40_000
    gen = torch.Generator().manual_seed(3)
    draws = sample_categorical(probs.expand(1, n, 5), gen)[0]
    # the exact official rule on the same uniforms (negatives included, not clamped)
    u = torch.rand((1, n, 5), generator=torch.Generator().manual_seed(3))
    official = (probs / (1e-10 - torch.log(u + 1e-10))).argmax(-1)[0]
    assert torch.equal(draws, official)
    freq = torch.bincount(draws, minlength=5).double() / n
    assert torch.allclose(freq, torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0]), atol=0.01)
    assert freq[1] == 0 and freq[4] == 0


def test_corruption_respects_fixed_mask_and_rate():
    class Draws:
        def __init__(self):
            self.gen = torch.Generator().manual_seed(0)

        def rand(self, *shape):
            return torch.rand((4, *shape), generator=self.gen)

        def randint(self, high, *shape):
            return torch.randint(high, (4, *shape), generator=self.gen)

    x0 = torch.randint(0, 10, (4, 5000), generator=torch.Generator().manual_seed(1))
    fixed = torch.zeros_like(x0, dtype=torch.bool)
    fixed[:, :100] = True
    sigma = torch.tensor([0.1, 0.5, 1.0, 3.0])
    for graph in (get_graph("absorb", 10), get_graph("uniform", 10)):
        xt = graph.sample_transition(x0, sigma, Draws(), fixed)
        assert torch.equal(xt[fixed], x0[fixed])
        changed = (xt != x0)[:, 100:].double().mean(-1)
        move = -torch.expm1(-sigma)
        expected = move if graph.absorb else move * 9 / 10  # uniform may redraw the same token
        assert torch.allclose(changed, expected, atol=0.03)
        if graph.absorb:
            assert torch.all((xt == x0) | (xt == 10))
