"""The PC loop: exactness with true scores, projection of fixed positions, nfe, chain, options."""
import pytest
import torch
from hydra import compose, initialize_config_dir

from dot.backbone import backbone_class
from dot.tokenization import load_tokenizer
from sedd_backend.graph import get_graph
from sedd_backend.noise import LogLinearNoise
from sedd_backend.sampling import ParallelCommit, pc_sample

torch.set_num_threads(1)
CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
N = 5  # real tokens


def exact_score_fn(graph, p0):
    """True scores of a data distribution p0 with independent positions (brute force via expm)."""
    V = graph.dim
    if graph.absorb:
        Q = torch.zeros(V, V, dtype=torch.float64)
        Q[V - 1, : V - 1] = 1.0
        Q[range(V - 1), range(V - 1)] = -1.0
    else:
        Q = torch.full((V, V), 1.0 / V, dtype=torch.float64) - torch.eye(V, dtype=torch.float64)

    def score_fn(x_BL, sigma_B):
        sigma_B = sigma_B.reshape(-1).expand(x_BL.shape[0]).double()
        pt_BV = torch.linalg.matrix_exp(sigma_B[:, None, None] * Q) @ p0
        return (pt_BV[:, None, :] / pt_BV.gather(-1, x_BL)[..., None]).float()
    return score_fn


@pytest.mark.parametrize("graph_type,predictor,steps,tol", [
    ("absorb", "analytic", 3, 0.015), ("uniform", "analytic", 4, 0.015),
    ("absorb", "euler", 64, 0.03)])
def test_samples_follow_data_distribution_with_true_scores(graph_type, predictor, steps, tol):
    # One position per row: with exact scores the analytic sampler is exact for any step count.
    graph = get_graph(graph_type, N)
    p0 = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15] + ([0.0] if graph.absorb else []),
                      dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    out = pc_sample(exact_score_fn(graph, p0), graph, LogLinearNoise(), (8000, 1), steps, gen,
                    predictor=predictor)
    assert out.nfe == steps + 1
    freq = torch.bincount(out.ids.flatten(), minlength=graph.dim).double() / 8000
    assert torch.allclose(freq, p0, atol=tol), freq


def test_skip_finished_same_ids_fewer_calls():
    graph = get_graph("absorb", N)
    def strong(x, sigma):
        return torch.full((*x.shape, N + 1), 1e6)  # unmasks everything at once
    runs = [pc_sample(strong, graph, LogLinearNoise(), (3, 4), 10, torch.Generator().manual_seed(1),
                      skip_finished=skip, record_chain=True) for skip in (False, True)]
    assert torch.equal(runs[0].ids, runs[1].ids)
    assert (runs[0].nfe, runs[1].nfe) == (11, 1)
    assert len(runs[1].chain) == len(runs[0].chain) == 11


def tiny_backbone(*overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["backbone=sedd", "model=tiny", "model.n_blocks=1", *overrides])
    torch.manual_seed(0)
    bb = backbone_class("sedd").from_config(cfg, load_tokenizer("char"))
    with torch.no_grad():  # the zero-initialised output would make every score equal
        for p in bb.model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return bb


@pytest.mark.parametrize("predictor,steps,denoise", [("analytic", 1, True), ("analytic", 5, False),
                                                     ("euler", 3, True)])
def test_backbone_sampler_keeps_fixed_positions(predictor, steps, denoise):
    bb = tiny_backbone()
    B, L = 3, 12
    ids = torch.randint(0, bb.tokenizer.vocab_size, (B, L))
    fixed = torch.zeros(B, L, dtype=torch.bool)
    fixed[0, :4], fixed[1, :9], fixed[2, 3] = True, True, True
    bb.model.train()
    res = bb.sample(ids, fixed, steps, torch.Generator().manual_seed(0), record_chain=True,
                    predictor=predictor, noise_removal=denoise)
    assert bb.model.training  # mode restored
    assert res.ids.shape == (B, L) and torch.equal(res.ids[fixed], ids[fixed])
    assert res.nfe == steps + denoise and len(res.chain) == steps + denoise
    assert all(torch.equal(c[fixed], ids[fixed]) for c in res.chain)
    if denoise:
        assert not (res.ids == bb.tokenizer.mask_id).any()
    again = bb.sample(ids, fixed, steps, torch.Generator().manual_seed(0), predictor=predictor,
                      noise_removal=denoise)
    assert torch.equal(again.ids, res.ids) and again.chain is None


def test_backbone_rejects_unknown_option():
    bb = tiny_backbone()
    with pytest.raises(ValueError, match="do not apply to the sedd backbone"):
        bb.sample(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool), 2,
                  torch.Generator(), temperature=0.5)


def test_confidence_and_left_to_right_reveal_order():
    """One step from all-masked: confidence reveals the most peaked positions, left_to_right
    the first ones; both write the argmax token and keep everything else masked."""
    from sedd_backend.graph import get_graph
    from sedd_backend.noise import LogLinearNoise
    from sedd_backend.sampling import ConfidencePredictor, LeftToRightPredictor

    V = 5
    graph, noise = get_graph("absorb", V), LogLinearNoise()
    peak = torch.tensor([1.0, 4.0, 0.5, 3.0])  # position 1 most confident, then 3
    best = torch.tensor([2, 0, 4, 1])

    def score_fn(x_BL, sigma_B):
        log = torch.zeros(1, 4, V + 1)
        log[0, torch.arange(4), best] = peak
        return log.exp()

    x = torch.full((1, 4), V)
    t = torch.tensor([1.0])
    dt = 0.5  # loglinear: half of the 4 masked positions are revealed
    conf = ConfidencePredictor(graph, noise).probs(score_fn, x, t, dt).argmax(-1)
    assert conf.tolist() == [[V, 0, V, 1]]
    ltr = LeftToRightPredictor(graph, noise).probs(score_fn, x, t, dt).argmax(-1)
    assert ltr.tolist() == [[2, 0, V, V]]


def chain_score_fn(V, answer, independent):
    """A hand-built absorbing 'network' whose answer is known: position i is sure of
    answer[i] (probability ~1) when it is independent or position i - 1 is revealed, and
    knows nothing (uniform) otherwise, like a digit waiting for its carry."""
    def score_fn(x_BL, sigma_B):
        B, L = x_BL.shape
        ready_BL = independent[None].expand(B, L).clone()
        ready_BL[:, 1:] |= x_BL[:, :-1] != V
        log = torch.zeros(B, L, V + 1)
        log[..., :V] = torch.where(ready_BL[..., None], -30.0, 0.0)
        rows, cols = torch.arange(B)[:, None].expand(B, L), torch.arange(L).expand(B, L)
        log[rows, cols, answer.expand(B, L)] = torch.where(ready_BL, 10.0, 0.0)
        return log.exp()
    return score_fn


@pytest.mark.parametrize("independent, calls", [
    ([1, 1, 1, 1, 1, 1], 1),                 # every position sure at once: one call
    ([1, 0, 1, 0, 1, 0], 2),                 # each odd position waits for its left neighbour
    ([1, 0, 0, 0, 0, 0], 6),                 # a full carry chain: one position per call
])
def test_threshold_commit_reveals_every_sure_position_per_call(independent, calls):
    """Fast-dLLM's rule on a model whose answer is known: each call reveals exactly the
    positions the model is sure of (and at least one), the ids are the answer, and the calls
    are the length of the longest dependency chain, however many steps T allows."""
    V, answer = 7, torch.tensor([3, 1, 4, 1, 5, 2])
    graph = get_graph("absorb", V)
    score_fn = chain_score_fn(V, answer, torch.tensor(independent, dtype=torch.bool))
    for commit in (ParallelCommit(threshold=0.9), ParallelCommit(margin=0.5)):
        out = pc_sample(score_fn, graph, LogLinearNoise(), (2, 6), 6, torch.Generator(),
                        predictor="confidence", skip_finished=True, commit=commit,
                        record_chain=True)
        assert out.ids.tolist() == [answer.tolist()] * 2
        assert out.nfe == calls and out.row_nfe.tolist() == [calls, calls]
        # plain confidence at the same T reveals one position per step: 6 calls
        plain = pc_sample(score_fn, graph, LogLinearNoise(), (1, 6), 6, torch.Generator(),
                          predictor="confidence", skip_finished=True)
        assert plain.nfe == 6 and plain.ids.tolist() == [answer.tolist()]


def test_threshold_commit_reveals_at_least_one_and_respects_the_schedule():
    """A model that is never sure (uniform): the threshold never fires, so each call reveals
    the schedule's count raised to at least one; T = 2 still ends after two calls with no
    mask left, and T = 4 reveals the 6 positions in 4 calls, never fewer than one a call."""
    V = 5
    graph = get_graph("absorb", V)

    def unsure(x_BL, sigma_B):
        return torch.ones(*x_BL.shape, V + 1)

    for steps in (2, 4, 12):
        out = pc_sample(unsure, graph, LogLinearNoise(), (1, 6), steps, torch.Generator(),
                        predictor="confidence", skip_finished=True, record_chain=True,
                        commit=ParallelCommit(threshold=0.99), denoise=False)
        masked = [int((s == V).sum()) for s in out.chain]
        assert masked[-1] == 0 and out.nfe == min(steps, 6)
        assert all(a > b for a, b in zip([6] + masked, masked[: out.nfe]))


def test_parallel_commit_rejects_bad_values_and_sampling_predictors():
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="sampling.threshold"):
            ParallelCommit(threshold=bad)
    with pytest.raises(ValueError, match="sampling.margin"):
        ParallelCommit(margin=2.0)
    with pytest.raises(ValueError, match="confidence predictor"):
        pc_sample(lambda x, s: torch.ones(*x.shape, 6), get_graph("absorb", 5), LogLinearNoise(),
                  (1, 3), 2, torch.Generator(), predictor="analytic",
                  commit=ParallelCommit(threshold=0.9))


def test_left_to_right_commit_reveals_the_sure_run_and_keeps_a_clean_prefix():
    """Reading-order parallel commit on the hand-built model: positions 2..5 are sure from the
    start but wait behind the unsure position 1, so the clean positions always form a prefix;
    two calls (plain left-to-right at T = 6: six)."""
    V, answer = 7, torch.tensor([3, 1, 4, 1, 5, 2])
    graph = get_graph("absorb", V)
    score_fn = chain_score_fn(V, answer, torch.tensor([1, 0, 1, 1, 1, 1], dtype=torch.bool))
    out = pc_sample(score_fn, graph, LogLinearNoise(), (1, 6), 6, torch.Generator(),
                    predictor="left_to_right", skip_finished=True, record_chain=True,
                    commit=ParallelCommit(threshold=0.9))
    assert out.ids.tolist() == [answer.tolist()] and out.nfe == 2
    assert [int((s != V).sum()) for s in out.chain[:2]] == [1, 6]
    for state in out.chain:
        clean = (state[0] != V).int()
        assert (clean.diff() <= 0).all()
    confidence_order = pc_sample(score_fn, graph, LogLinearNoise(), (1, 6), 6, torch.Generator(),
                                 predictor="confidence", skip_finished=True, record_chain=True,
                                 commit=ParallelCommit(threshold=0.9))
    assert int((confidence_order.chain[0] != V).sum()) == 5  # holes: 0, 2..5 at once
