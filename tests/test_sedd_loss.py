"""The §5 objective: hand computation, the fixed source, and per-row reproducible noise."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from dot.rng import RowRandom
from sedd_backend.graph import get_graph
from sedd_backend.losses import score_entropy_loss
from sedd_backend.noise import LogLinearNoise

torch.set_num_threads(1)
N = 7  # real tokens; absorbing mask = 7


class FixedLogits:
    """A stand-in network: returns given log-scores (a leaf with grad) and records its input."""

    def __init__(self, logits_BLV):
        self.logits = logits_BLV.clone().requires_grad_(True)
        self.seen = None

    def __call__(self, x_BL, sigma_B):
        self.seen = (x_BL, sigma_B)
        return self.logits


def setup(graph_type, B=3, L=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    graph = get_graph(graph_type, N)
    x0 = torch.randint(0, N, (B, L), generator=gen)
    fixed = torch.zeros(B, L, dtype=torch.bool)
    fixed[:, :2] = True
    logits = torch.randn(B, L, graph.dim, generator=gen)
    return graph, x0, fixed, logits


def test_absorbing_loss_by_hand():
    graph, x0, fixed, logits = setup("absorb")
    model = FixedLogits(logits)
    loss = score_entropy_loss(model, graph, LogLinearNoise(), x0, fixed, RowRandom(5, 2, torch.arange(3)))
    # the same draws, consumed in the same order per row: t first, then one uniform per position
    rng = RowRandom(5, 2, torch.arange(3))
    u_t, u_pos = rng.rand(), rng.rand(6)
    expected = []
    for b in range(3):
        t = (1 - 1e-3) * float(u_t[b]) + 1e-3
        sigma, rate = -math.log(1 - 0.999 * t), 0.999 / (1 - 0.999 * t)
        total = 0.0
        for i in range(6):
            masked = (not fixed[b, i]) and float(u_pos[b, i]) < 1 - math.exp(-sigma)
            assert int(model.seen[0][b, i]) == (N if masked else int(x0[b, i]))
            if masked:
                r = 1 / math.expm1(sigma)
                ell = logits[b, i].double()
                total += (ell[:N].exp().sum() - r * ell[x0[b, i]] + r * (math.log(r) - 1)).item()
        expected.append(rate * total)
    assert torch.allclose(loss.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(model.seen[1].double(), torch.tensor(
        [-math.log(1 - 0.999 * ((1 - 1e-3) * float(u) + 1e-3)) for u in u_t], dtype=torch.float64))


@pytest.mark.parametrize("graph_type", ["absorb", "uniform"])
def test_source_positions_never_corrupted_and_never_scored(graph_type):
    graph, x0, fixed, logits = setup(graph_type, B=4, L=8)
    model = FixedLogits(logits)
    loss = score_entropy_loss(model, graph, LogLinearNoise(), x0, fixed, RowRandom(1, 0, torch.arange(4)))
    assert torch.equal(model.seen[0][fixed], x0[fixed])
    loss.sum().backward()
    assert torch.all(model.logits.grad[fixed] == 0)
    assert model.logits.grad[~fixed].abs().sum() > 0
    # changing the source-position outputs changes nothing
    other = logits.clone()
    other[fixed] = torch.randn_like(other[fixed]) * 5
    again = score_entropy_loss(FixedLogits(other), graph, LogLinearNoise(), x0, fixed,
                               RowRandom(1, 0, torch.arange(4)))
    assert torch.equal(again, loss.detach())


def test_row_noise_independent_of_batch_split():
    graph, x0, fixed, logits = setup("absorb", B=4, L=8)
    whole = score_entropy_loss(FixedLogits(logits), graph, LogLinearNoise(), x0, fixed,
                               RowRandom(9, 3, torch.arange(4)))
    halves = [score_entropy_loss(FixedLogits(logits[s]), graph, LogLinearNoise(), x0[s], fixed[s],
                                 RowRandom(9, 3, torch.arange(4)[s])) for s in (slice(0, 2), slice(2, 4))]
    assert torch.allclose(whole, torch.cat(halves))


def test_flat_weighting_is_the_elbo_times_t():
    """For the log-linear schedule e(sigma)/sigma' = t: flat = t * ELBO row by row."""
    graph, x0, fixed, logits = setup("absorb", B=4)
    def rng():
        return RowRandom(3, 1, torch.arange(4))
    elbo = score_entropy_loss(FixedLogits(logits), graph, LogLinearNoise(), x0, fixed, rng())
    flat = score_entropy_loss(FixedLogits(logits), graph, LogLinearNoise(), x0, fixed, rng(),
                              weighting="flat")
    t = (1 - 1e-3) * RowRandom(3, 1, torch.arange(4)).rand() + 1e-3  # the loss's first draw
    assert torch.allclose(flat, elbo * t, rtol=1e-5)


def test_left_to_right_order_masks_a_suffix_of_the_free_positions():
    from sedd_backend.losses import mask_suffix

    B, L = 200, 12
    x0 = torch.randint(0, N, (B, L))
    fixed = torch.zeros(B, L, dtype=torch.bool)
    fixed[:, :3] = True
    sigma = torch.full((B,), -math.log(0.5))  # half of the 9 free positions masked on average
    xt = mask_suffix(x0, sigma, RowRandom(0, 0, torch.arange(B)), fixed, N)
    masked = xt == N
    assert not masked[:, :3].any()
    # once masked, every later position is masked too (a suffix)
    assert (masked[:, 3:].int().diff(dim=1) >= 0).all()
    assert masked.sum(1).float().mean().item() == pytest.approx(4.5, abs=0.3)
    assert torch.equal(xt[~masked], x0[~masked])


def test_left_to_right_counts_real_tokens_and_always_masks_padding():
    from sedd_backend.losses import mask_suffix

    x0 = torch.arange(10).expand(50, 10)
    fixed = torch.zeros(50, 10, dtype=torch.bool)
    fixed[:, :2] = True
    real = torch.zeros(50, 10, dtype=torch.bool)
    real[:, :6] = True  # 4 target tokens, then 4 padding slots
    sigma = torch.full((50,), 1e-6)  # almost nothing to mask
    xt = mask_suffix(x0, sigma, RowRandom(0, 0, torch.arange(50)), fixed, N, real)
    assert (xt[:, 6:] == N).all() and (xt[:, :6] == x0[:, :6]).all()


def test_left_to_right_masks_a_suffix_of_every_block():
    """Blocks of 4 after a 2-token prompt (block ids from `block_ids`): each block gets its own
    suffix, of floor(4 e^-sigma + u) kept tokens with the row's one uniform u, so for
    e^-sigma = 0.5 two or three clean tokens open every full block; the cut last block of 2
    keeps one or two."""
    from sedd_backend.blocks import block_ids
    from sedd_backend.losses import mask_suffix

    B, L = 64, 12
    x0 = torch.randint(0, N, (B, L))
    fixed = torch.zeros(B, L, dtype=torch.bool)
    fixed[:, :2] = True
    segments = block_ids(fixed, 4)  # 0 0 | 1 1 1 1 | 2 2 2 2 | 3 3
    rng = RowRandom(5, 0, torch.arange(B))
    u = RowRandom(5, 0, torch.arange(B)).rand()
    xt = mask_suffix(x0, torch.full((B,), math.log(2.0)), rng, fixed, N, segments_BL=segments)
    masked = xt == N
    assert not masked[:, :2].any() and torch.equal(xt[~masked], x0[~masked])
    for lo, hi in ((2, 6), (6, 10), (10, 12)):
        block = masked[:, lo:hi]
        assert (block.int().diff(dim=1) >= 0).all()  # a suffix of the block
        kept = (~block).sum(1)
        assert torch.equal(kept, torch.floor((hi - lo) * 0.5 + u).long())


def test_cross_entropy_objective_by_hand_and_its_scores():
    from sedd_backend.graph import expm1_sigma
    from sedd_backend.losses import denoiser_log_score

    graph, x0, fixed, logits = setup("absorb", B=3)
    loss = score_entropy_loss(FixedLogits(logits), graph, LogLinearNoise(), x0, fixed,
                              RowRandom(2, 4, torch.arange(3)), objective="cross_entropy")
    model = FixedLogits(logits)
    score_entropy_loss(model, graph, LogLinearNoise(), x0, fixed, RowRandom(2, 4, torch.arange(3)))
    xt, sigma = model.seen  # the same draws: same noisy input and sigma
    expected = []
    for b in range(3):
        total = 0.0
        for i in range(x0.shape[1]):
            if xt[b, i] == N and not fixed[b, i]:
                total += -torch.log_softmax(logits[b, i, :N], -1)[x0[b, i]].item()
        expected.append(LogLinearNoise()(torch.tensor([(1 - torch.exp(-sigma[b])).item() / (1 - 1e-3)]))[1].item()
                        / expm1_sigma(sigma[b]).item() * total)
    assert loss.tolist() == pytest.approx(expected, rel=1e-4)
    scores = denoiser_log_score(logits, sigma).exp()
    # at any position the real-token scores sum to 1/e(sigma); the mask column is 1
    assert torch.allclose(scores[..., :N].sum(-1), (1 / expm1_sigma(sigma))[:, None].expand(3, 6),
                          rtol=1e-5)
    assert torch.allclose(scores[..., N], torch.ones(3, 6))


def test_token_accuracy_counts_masked_target_positions_only():
    graph, x0, fixed, logits = setup("absorb", B=4, L=10)
    perfect = torch.full_like(logits, -5.0).scatter(-1, x0[..., None], 5.0)
    wrong = torch.full_like(logits, -5.0).scatter(-1, ((x0 + 1) % N)[..., None], 5.0)
    for scores, expected in ((perfect, 1.0), (wrong, 0.0)):
        stats = {}
        model = FixedLogits(scores)
        score_entropy_loss(model, graph, LogLinearNoise(), x0, fixed,
                           RowRandom(2, 0, torch.arange(4)), stats=stats)
        assert ((model.seen[0] == N) & ~fixed).any() and stats["token_acc"] == expected
    # half right: right on the first five positions (two are fixed), wrong after
    mixed = torch.cat([perfect[:, :5], wrong[:, 5:]], dim=1)
    stats, model = {}, FixedLogits(mixed)
    score_entropy_loss(model, graph, LogLinearNoise(), x0, fixed,
                       RowRandom(2, 0, torch.arange(4)), stats=stats)
    masked = (model.seen[0] == N) & ~fixed
    assert stats["token_acc"] == pytest.approx(masked[:, :5].sum().item() / masked.sum().item())


def test_next_token_loss_by_hand():
    """Position i's logits score token i + 1, only where that token is a real target token:
    row 0 (prompt of 2, length 4, no padding) scores tokens 2 and 3 from positions 1 and 2."""
    from sedd_backend.losses import next_token_loss

    out = torch.zeros(2, 4, 4)  # V = 3 real tokens + the mask column (never scored)
    out[0, 1] = torch.tensor([2.0, 0.0, 0.0, 9.0])
    out[0, 2] = torch.tensor([0.0, 0.0, 0.0, 9.0])
    x0 = torch.tensor([[1, 1, 0, 2], [1, 2, 1, 2]])
    fixed = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    real = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    stats = {}
    got = next_token_loss(out, x0, fixed, real, stats)
    log3 = math.log(3.0)
    first = -(2.0 - math.log(math.exp(2.0) + 2))  # token 0 from logits [2, 0, 0]
    torch.testing.assert_close(got, torch.tensor([first + log3, 2 * log3]))
    assert stats["next_token_acc"] == pytest.approx(1 / 4)  # only row 0's token 0 is an argmax


def test_causal_clean_copy_reads_no_later_token():
    """clean_attention=causal: the clean copy's output at position i (the next-token logits)
    is unchanged when a later target token changes, and changes with an earlier one."""
    from dot.tokenization import load_tokenizer
    from sedd_backend.blocks import block_ids, two_copy_model
    from sedd_backend.model import build_model

    cfg = OmegaConf.create({"hidden_size": 32, "cond_dim": 16, "n_heads": 2, "n_blocks": 2,
                            "dropout": 0.0, "scale_by_sigma": False, "previous_token": True})
    torch.manual_seed(0)
    model = build_model(cfg, "absorb", load_tokenizer("char").vocab_size)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x0 = torch.randint(0, 50, (1, 10))
    fixed = torch.arange(10)[None] < 3
    blocks = block_ids(fixed, 4)
    xt = torch.where(fixed, x0, model.vocab_size - 1)

    def clean(x):
        out = {}
        two_copy_model(model, x, fixed, blocks, causal=True, clean_out=out)(xt, torch.ones(1))
        return out["out"][0]
    base = clean(x0)
    later, earlier = x0.clone(), x0.clone()
    later[0, 8], earlier[0, 4] = (later[0, 8] + 1) % 50, (earlier[0, 4] + 1) % 50
    torch.testing.assert_close(clean(later)[:8], base[:8])
    assert not torch.allclose(clean(earlier)[4:8], base[4:8])
