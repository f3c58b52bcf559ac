"""Plaid samplers (spec §7) on a Gaussian toy with an exact denoiser, and through the backbone."""
import pytest
import torch

from dot.config import compose_config
from dot.tokenization import CharTokenizer
from plaid.backbone import PlaidBackbone
from plaid.sampling import ancestral, ancestral_grid, dpm_solver, tempered
from plaid.schedule import GammaBounds, NoiseSchedule

torch.set_num_threads(1)
MU, S = 1.5, 0.5  # data: every coordinate ~ N(MU, S²)


def schedule():
    torch.manual_seed(0)
    sched, bounds = NoiseSchedule(width=16), GammaBounds(-3.0, 6.0)
    return lambda t: bounds(sched(t)).detach()


class ExactDenoiser:
    """E[x | z] for Gaussian data: MU + α S²/(α² S² + σ²)·(z − α MU)."""

    def __init__(self):
        self.nfe = 0

    def __call__(self, z, gamma):
        self.nfe += 1
        a2, s2 = torch.sigmoid(-gamma), torch.sigmoid(gamma)
        return MU + a2.sqrt() * S**2 / (a2 * S**2 + s2) * (z - a2.sqrt() * MU)


def marginal(gamma, t):
    """Mean and variance of z_t = α x + σ ε."""
    g = gamma(torch.tensor(t, dtype=torch.float64))
    a2, s2 = torch.sigmoid(-g), torch.sigmoid(g)
    return a2.sqrt() * MU, a2 * S**2 + s2


def flow_map(gamma, z, t_from, t_to):
    """Exact probability-flow ODE solution: standardised coordinates are conserved."""
    (m0, v0), (m1, v1) = marginal(gamma, t_from), marginal(gamma, t_to)
    return m1 + (v1 / v0).sqrt() * (z - m0)


def test_tempered_prediction_formula():
    x_hat, z = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    a, s = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    torch.testing.assert_close(tempered(x_hat, z, a, s, 0.5), x_hat / 0.5 + (1 - 1 / 0.5) * z / a)
    torch.testing.assert_close(tempered(x_hat, z, a, s, 1.0), x_hat)


def test_ancestral_grids():
    times, moves = ancestral_grid(4, official=False)
    assert times == [1.0, 0.75, 0.5, 0.25, 0.0] and moves == [0.75, 0.5, 0.25, 0.0, None]
    times, moves = ancestral_grid(4, official=True)
    assert times == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0, 0.0])
    assert moves[:3] == pytest.approx([0.75, 2 / 3 - 0.25, 1 / 3 - 0.25]) and moves[3:] == [None, None]


@pytest.mark.parametrize("order", [1, 2])
def test_dpm_solver_converges_to_the_exact_flow(order):
    gamma = schedule()
    z1 = torch.randn(64, 1, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = flow_map(gamma, z1, 1.0, 1e-3)
    errors = []
    for steps in (5, 10, 20, 40, 80):
        denoiser = ExactDenoiser()
        x = dpm_solver(denoiser, gamma, z1, steps, order)
        assert denoiser.nfe == steps + 1
        errors.append((x - exact).abs().max().item())
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    if order == 1:  # first order: the error halves with every doubling of the steps
        assert all(later < 0.6 * earlier for earlier, later in zip(errors, errors[1:])), errors
    else:  # second order is far ahead of first order
        assert errors[-1] < 1e-3 and errors[-1] < errors[1] / 20, errors
        order1 = dpm_solver(ExactDenoiser(), gamma, z1, 40, 1)
        assert errors[3] < 0.1 * (order1 - exact).abs().max().item()


def test_dpm_solver_agrees_with_high_step_ancestral_reference():
    gamma = schedule()
    g = torch.Generator().manual_seed(2)
    shape = (4000, 1, 2)
    randn = lambda: torch.randn(shape, generator=g, dtype=torch.float64)  # noqa: E731
    reference = ancestral(ExactDenoiser(), gamma, randn(), 400, randn)
    mean_0, var_0 = marginal(gamma, 0.0)
    assert abs(reference.mean().item() - mean_0.item()) < 0.03
    assert abs(reference.var().item() - var_0.item()) < 0.03
    # the deterministic solver keeps any mismatch of its start, so start from the exact z_1
    for order, steps in ((1, 40), (2, 20)):
        mean_1, var_1 = marginal(gamma, 1.0)
        x = dpm_solver(ExactDenoiser(), gamma, mean_1 + var_1.sqrt() * randn(), steps, order)
        assert abs(x.mean().item() - reference.mean().item()) < 0.04
        assert abs(x.var().item() - reference.var().item()) < 0.04


def test_official_switches_run_and_count_calls():
    gamma = schedule()
    randn = lambda: torch.randn(8, 1, 2, dtype=torch.float64)  # noqa: E731
    denoiser = ExactDenoiser()
    x = dpm_solver(denoiser, gamma, randn(), 8, 2, official=True, solver_gamma=gamma)
    assert denoiser.nfe == 8 and torch.isfinite(x).all()
    denoiser = ExactDenoiser()
    ancestral(denoiser, gamma, randn(), 8, randn, official_grid=True)
    assert denoiser.nfe == 9


def tiny_backbone(fix_src=True):
    cfg = compose_config(["backbone=plaid", "model.hidden_size=32", "model.n_heads=4",
                          "model.n_blocks=2", "model.schedule_width=16", f"backbone.fix_src={fix_src}",
                          "sampling.steps=4", "training.n_iters=10"])
    torch.manual_seed(0)
    bb = PlaidBackbone.from_config(cfg, CharTokenizer())
    with torch.no_grad():  # a non-trivial readout so that argmax varies
        bb.model.model.output_linear.weight.normal_()
    return bb


@pytest.mark.parametrize("options", [
    {}, {"official_grid": True}, {"logit_sample": True, "logit_temp": 0.7},
    {"predictor": "dpm_solver"}, {"predictor": "dpm_solver", "dpm_order": 2},
    {"predictor": "dpm_solver", "official_dpm": True, "score_temp": 1.0}])
@pytest.mark.parametrize("fix_src", [True, False])
def test_backbone_sampling_keeps_fixed_positions(options, fix_src):
    bb = tiny_backbone(fix_src)
    ids = torch.randint(4, 90, (3, 12))
    fixed = torch.zeros(3, 12, dtype=torch.bool)
    fixed[:, :5] = True
    fixed[2, :8] = True
    out = bb.sample(ids, fixed, 6, torch.Generator().manual_seed(0), record_chain=True, **options)
    assert out.ids.shape == ids.shape
    assert torch.equal(out.ids[fixed], ids[fixed])
    official_dpm = options.get("official_dpm", False)
    assert out.nfe == (6 if official_dpm else 7) and len(out.chain) == out.nfe
    assert all(torch.equal(c[fixed], ids[fixed]) for c in out.chain)
    again = bb.sample(ids, fixed, 6, torch.Generator().manual_seed(0), **options)
    assert torch.equal(again.ids, out.ids)


def test_backbone_rejects_unknown_options():
    with pytest.raises(ValueError, match="do not apply to the plaid backbone"):
        tiny_backbone().sample(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool),
                               2, torch.Generator(), temperature=1.0)
