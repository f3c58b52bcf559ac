"""Plaid / DoT training objective (spec §5) and optimiser groups (§6)."""
import math

import pytest
import torch
import torch.nn.functional as F

from dot.backbone import Batch
from dot.config import compose_config
from dot.rng import RowRandom
from dot.tokenization import CharTokenizer
from plaid.backbone import PlaidBackbone
from plaid.loss import (
    LossOptions,
    diffusion_loss,
    reconst_batch_size,
    scheduled_sampling_tokens,
    update_reconst_ema,
)
from plaid.weights import Plaid

torch.set_num_threads(1)
V, L, D = 20, 10, 4
SEED, STEP = 3, 100


def tiny_plaid(seed=0):
    torch.manual_seed(seed)
    plaid = Plaid(V, D, 16, 1, 2, schedule_width=8)
    with torch.no_grad():  # leave the zero init so every term matters
        for name, p in plaid.model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.3)
    return plaid


def data(B=8):
    g = torch.Generator().manual_seed(7)
    x = torch.randint(V, (B, L), generator=g)
    src = torch.zeros(B, L, dtype=torch.bool)
    src[:, :3] = True
    attn = torch.ones(B, L, dtype=torch.bool)
    attn[:, 8:] = False
    return x, attn, src


def ema_for(r_target_ratio):
    """EMAs whose standard deviations give std_r / (std_r + std_d) = r_target_ratio."""
    std_r, std_d = r_target_ratio, 1 - r_target_ratio
    return torch.tensor([1.0, 1.0, 1.0 + std_r**2, 2.0, 4.0 + std_d**2], dtype=torch.float64)


def run(plaid, rows, opts, step=STEP, train=True, Bg=8):
    x, attn, src = data(Bg)
    return diffusion_loss(plaid, x[rows], attn[rows], src[rows], rows, Bg, step,
                          RowRandom(SEED, step, rows), opts, train=train)


def test_reconst_batch_size_and_ema_rule():
    ema = torch.full((5,), 1e-8, dtype=torch.float64)
    assert reconst_batch_size(ema, 128) == 1  # first step
    assert reconst_batch_size(ema_for(0.25), 128) == 32
    assert reconst_batch_size(ema_for(1.0), 128) == 127  # clamped to B_g - 1
    # bias-corrected: c = 1/bias rescales the raw EMAs
    ema = torch.tensor([0.5, 0.5, 0.5 + 0.5 * 0.09, 1.0, 2.0 + 0.5 * 0.01], dtype=torch.float64)
    assert reconst_batch_size(ema, 100) == round(100 * 0.3 / (0.3 + 0.1))
    ema = torch.full((5,), 1e-8, dtype=torch.float64)
    update_reconst_ema(ema, torch.tensor([6.0, 20.0, 10.0, 30.0], dtype=torch.float64), 2, 7, 0.9)
    expected = 1e-8 + 0.1 * (torch.tensor([1.0, 3.0, 10.0, 2.0, 6.0], dtype=torch.float64) - 1e-8)
    torch.testing.assert_close(ema, expected)


def test_terms_match_an_independent_computation():
    plaid = tiny_plaid()
    plaid.reconst_ema.copy_(ema_for(3 / 8))  # r = 3
    opts = LossOptions(bias_warmup_steps=200)  # bias_scale = 0.5 at STEP 100
    rows = torch.arange(8)
    out = run(plaid, rows, opts)
    x, attn, src = data()
    # independent re-derivation of the step's draws and of every term
    rng = RowRandom(SEED, STEP, rows)
    u = torch.rand((), generator=rng.step_generator, dtype=torch.float64).item()
    offset = int(torch.randint(4, (), generator=rng.step_generator))
    r, n = 3, 5
    t = torch.tensor([0.0] * r + [(i + u) / n for i in range(n)], dtype=torch.float64)
    s = torch.arange(8) % 4 == offset
    with torch.no_grad():
        gamma = plaid.gamma(t)
        h = 1e-6
        dgamma = (plaid.gamma(t + h) - plaid.gamma(t - h)) / (2 * h)
        dgamma[:r] = 0
        E = plaid.embedding_matrix()
        e = E[x]
        eps = rng.randn(L, D)
        a, sg = torch.sigmoid(-gamma).sqrt()[:, None, None], torch.sigmoid(gamma).sqrt()[:, None, None]
        z = (a * e + sg * eps).float()
        x_sc = torch.zeros_like(z)
        x_sc[s] = plaid.model(z[s], gamma[s].float(), E, 0.5, torch.zeros_like(z[s]), None, e[s], src[s])[1]
        logits, x_hat = plaid.model(z, gamma.float(), E, 0.5, x_sc, s.float(), e, src)
        ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none").double()
        reconst = ce.sum(1) / (L + 0.01)
        mse = ((e - x_hat) ** 2).sum(-1).double().sum(1) / (L + 0.01)
        diff = 0.5 * torch.exp(-gamma) * dgamma * mse
        g1 = plaid.gamma_bounds.gamma_1.double()
        a1sq, s1sq = torch.sigmoid(-g1), torch.sigmoid(g1)
        kl = (D * (-0.5 * torch.log(s1sq) + s1sq / 2 - 0.5) + a1sq * (e.double() ** 2).sum(-1) / 2)
        prior = kl.sum() / (8 * L + 0.01)
        expected = reconst[:r].sum() / r + diff[r:].sum() / n + prior
        tgt = (attn & ~src).double()
        nll_r = (ce * tgt).sum(1) / (tgt.sum(1) + 0.01)
        nll_mse = (((e - x_hat) ** 2).sum(-1).double() * tgt).sum(1) / (tgt.sum(1) + 0.01)
        nll_d = 0.5 * torch.exp(-gamma) * dgamma * nll_mse
        sw = s.double()
        nll = ((sw * nll_r)[:r].sum() / (r / 4) + (sw * nll_d)[r:].sum() / (n / 4)
               + (kl * tgt).sum() / (tgt.sum() + 0.01))
    assert out.metrics["reconst_bs"] == r
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.metrics["nll"] == pytest.approx(nll.item(), rel=1e-5)
    torch.testing.assert_close(out.ema_sums, torch.stack([reconst[:r].sum(), (reconst[:r] ** 2).sum(),
                                                          diff[r:].sum(), (diff[r:] ** 2).sum()]),
                               rtol=1e-5, atol=1e-7)


def test_network_gets_float64_gamma_of_the_float64_time_grid():
    """Issue 17: the time grid and γ fed to the network stay float64, as in the official code
    (float64 default dtype); rounding either through float32 moves γ by up to 4e-7."""
    plaid = tiny_plaid()
    plaid.reconst_ema.copy_(ema_for(3 / 8))  # r = 3
    seen = []
    network = plaid.model.forward
    plaid.model.forward = lambda z, gamma, *a, **k: seen.append(gamma.detach()) or network(z, gamma, *a, **k)
    rows = torch.arange(8)
    run(plaid, rows, LossOptions())
    rng = RowRandom(SEED, STEP, rows)
    u = torch.rand((), generator=rng.step_generator, dtype=torch.float64).item()
    r, n = 3, 5
    t = torch.tensor([0.0] * r + [(i + u) / n for i in range(n)], dtype=torch.float64)  # Python floats
    with torch.no_grad():
        expected = plaid.gamma(t)
    main = seen[-1]  # the pass with gradients comes after the self-conditioning pass
    assert main.dtype == torch.float64 and seen[0].dtype == torch.float64
    assert (main - expected).abs().max().item() < 1e-12
    rounded = plaid.gamma(t.float().double()).detach()  # what a float32 grid would have given
    assert (rounded - expected).abs().max().item() > 1e-10  # so the check above can fail


def test_chunks_sum_to_the_global_objective():
    opts = LossOptions()
    grads = []
    for chunks in ([torch.arange(8)], [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5, 6, 7])]):
        plaid = tiny_plaid()
        plaid.reconst_ema.copy_(ema_for(0.3))
        outs = [run(plaid, rows, opts) for rows in chunks]
        sum(o.loss for o in outs).backward()
        grads.append(([sum(o.loss.item() for o in outs),
                       sum(o.metrics["nll"] * len(rows) / 8 for o, rows in zip(outs, chunks))],
                      [p.grad.clone() for p in plaid.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    for whole, split in zip(grads[0][1], grads[1][1]):  # equal up to float32 summation order
        assert (whole - split).abs().max() <= 1e-4 * whole.abs().max() + 1e-7


def test_schedule_descends_sum_of_squared_losses():
    """Hook (§5.5): W1, b1, W2 get ∇ Σ_b L_b² / (B_g − r); everything else, γ_1 included, ∇ loss.
    Checked against central finite differences of the two objectives."""
    opts = LossOptions(selfcond=False)
    plaid = tiny_plaid(1)
    plaid.reconst_ema.copy_(ema_for(0.3))
    rows = torch.arange(8)
    r = reconst_batch_size(plaid.reconst_ema, 8)
    run(plaid, rows, opts).loss.backward()

    def objectives():
        with torch.no_grad():
            out = run(plaid, rows, opts)
        return out.ema_sums[3].item() / (8 - r), out.loss.item()

    def central(param, index, which, h):
        with torch.no_grad():
            param[index] += h
            plus = objectives()[which]
            param[index] -= 2 * h
            minus = objectives()[which]
            param[index] += h
        return (plus - minus) / (2 * h)

    sched = plaid.noise_schedule
    for param, index in ((sched.W2, (0, 1)), (sched.W1, (2, 0)), (sched.b1, (5,))):
        fd = central(param, index, 0, 1e-2)
        assert param.grad[index].item() == pytest.approx(fd, rel=2e-2, abs=1e-4)
        fd_loss = central(param, index, 1, 1e-2)  # the plain loss gradient differs
        assert abs(fd_loss - fd) > 0.1 * abs(fd)
    for param, index, h in ((plaid.gamma_bounds.gamma_1, (), 1e-3),
                            (plaid.model.output_linear.bias, (3,), 1e-2)):
        assert param.grad[index].item() == pytest.approx(central(param, index, 1, h), rel=2e-2, abs=1e-4)


def test_scheduled_sampling_replaces_targets_of_chosen_rows_only():
    plaid = tiny_plaid()
    x, attn, src = data()
    t = torch.tensor([0.0, 0.01, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99], dtype=torch.float64)
    opts = LossOptions(min_prob=0.0, total_steps=10)
    x0 = scheduled_sampling_tokens(plaid, x, src, t, plaid.embedding_matrix().detach(), 10,
                                   RowRandom(0, 10, torch.arange(8)), opts)
    assert torch.equal(x0[src], x[src])
    assert torch.equal(x0[:2], x[:2])  # ceil(16 t) - 1 <= 0: never replaced
    assert not torch.equal(x0[2:], x[2:])
    out = run(plaid, torch.arange(8), opts, step=10)
    assert torch.isfinite(out.loss)
    assert out.loss.item() != run(plaid, torch.arange(8), LossOptions(), step=10).loss.item()


def test_eval_loss_is_deterministic_and_leaves_state():
    plaid = tiny_plaid()
    before = plaid.reconst_ema.clone()
    with torch.no_grad():
        a = run(plaid, torch.arange(8), LossOptions(), train=False)
        b = run(plaid, torch.arange(8), LossOptions(), train=False)
    assert a.loss.item() == b.loss.item() and math.isfinite(a.metrics["nll"])
    torch.testing.assert_close(plaid.reconst_ema, before)


def backbone():
    cfg = compose_config(["backbone=plaid", "model.hidden_size=512", "model.n_heads=4",
                          "model.n_blocks=1", "model.schedule_width=8",
                          "backbone.module_lr.gamma_bounds=2e-2", "optim.lr=3e-4",
                          "training.n_iters=10"])
    return PlaidBackbone.from_config(cfg, CharTokenizer())


def test_param_groups_mup_lrs_and_per_step_decay():
    bb = backbone()
    groups = {g["name"]: g for g in bb.param_groups()}
    assert set(groups) == {"model", "model_mup", "noise_schedule", "gamma_bounds", "embedding_matrix"}
    assert groups["model_mup"]["lr"] == pytest.approx(3e-4 / 2)  # width_mult = 512 / 256
    assert len(groups["model_mup"]["params"]) == 4
    assert groups["model"]["lr"] == 3e-4 and groups["gamma_bounds"]["lr"] == 2e-2
    for name, wd in (("model", 4e-5), ("model_mup", 4e-5), ("gamma_bounds", 1e-3), ("noise_schedule", 0)):
        assert groups[name]["lr"] * groups[name]["weight_decay"] == pytest.approx(wd)
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(bb.model.parameters()))


def test_backbone_step_updates_emas_once_per_step():
    bb = backbone()
    x, attn, src = data()
    x = x + 4  # char ids
    for chunk in (torch.arange(4), torch.arange(4, 8)):
        loss, metrics = bb.loss(Batch(x[chunk], src[chunk], attn[chunk], chunk, 8, 0), RowRandom(0, 0, chunk))
        loss.backward()
    bb.after_optimizer_step(0)
    assert bb.model.reconst_ema[0].item() == pytest.approx(1e-8 + 0.003 * (1 - 1e-8))
    assert "reconst_ema" in bb.model.state_dict()
