"""The PC loop: exactness with true scores, projection of fixed positions, nfe, chain, options."""
import pytest
import torch
from hydra import compose, initialize_config_dir

from dot.backbone import backbone_class
from dot.tokenization import load_tokenizer
from sedd_backend.graph import get_graph
from sedd_backend.noise import LogLinearNoise
from sedd_backend.sampling import pc_sample

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
    strong = lambda x, sigma: torch.full((*x.shape, N + 1), 1e6)  # unmasks everything at once
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
    with pytest.raises(ValueError, match="unknown SEDD sampler options"):
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
