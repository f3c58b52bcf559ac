"""Plaid network (spec §4) against a float64 reference written from the spec formulas."""
import math

import torch

from plaid.model import DiffusionModel
from plaid.weights import Plaid

torch.set_num_threads(1)
V, D, DIM, N_BLOCKS, N_HEADS = 50, 8, 32, 2, 4


def reference_forward(sd, z, gamma, E, bias_scale, x_sc, x_embed=None, src_mask=None):
    """Spec §4.1-4.8 in float64, from the state dict alone."""
    sd = {k: v.double() for k, v in sd.items()}
    z, gamma, E, x_sc = z.double(), gamma.double(), E.double(), x_sc.double()
    B, L, _ = z.shape
    a2, s2 = 1 / (1 + torch.exp(gamma)), 1 / (1 + torch.exp(-gamma))
    u = z / torch.sqrt(a2 / D + s2)[:, None, None]
    if x_embed is not None:
        m = src_mask[..., None]
        u = torch.where(m, x_embed.double(), u)
        x_sc = torch.where(m, x_embed.double(), x_sc)
    freqs = torch.tensor([math.exp(-5 + 10 * k / 31) for k in range(32)], dtype=torch.float64)
    g = torch.cat([torch.sin(gamma[:, None] * freqs), torch.cos(gamma[:, None] * freqs)], 1)
    h = u @ sd["input_linear.weight"].T + (math.sqrt(D) * x_sc) @ sd["selfcond_linear.weight"].T \
        + (g @ sd["gamma_linear.weight"].T)[:, None]
    dh = DIM // N_HEADS
    rho = 1 / math.sqrt(N_BLOCKS)
    theta = torch.tensor([[p * 10000 ** (-2 * i / dh) for i in range(dh // 2)] for p in range(L)],
                         dtype=torch.float64)

    def rope(x):  # x [B, L, dh]
        x1, x2 = x[..., :dh // 2], x[..., dh // 2:]
        return torch.cat([x1 * theta.cos() - x2 * theta.sin(), x2 * theta.cos() + x1 * theta.sin()], -1)

    def rms(x, w):
        return x * w / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5)

    for i in range(N_BLOCKS):
        p = f"blocks.{i}."
        a = rms(h, sd[p + "rmsnorm1.weight"]) @ sd[p + "attn_qkv.weight"].T
        heads = []
        for hd in range(N_HEADS):
            q = rope(a[..., hd * dh:(hd + 1) * dh])
            k = rope(a[..., DIM + hd * dh:DIM + (hd + 1) * dh])
            v = a[..., 2 * DIM + hd * dh:2 * DIM + (hd + 1) * dh]
            att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh), -1)
            heads.append(att @ v)
        h = h + rho * torch.cat(heads, -1) @ sd[p + "attn_out.weight"].T
        n2 = rms(h, sd[p + "rmsnorm2.weight"]) @ sd[p + "mlp.fc1.weight"].T
        gelu = 0.5 * n2 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (n2 + 0.044715 * n2 ** 3)))
        h = h + rho * gelu @ sd[p + "mlp.fc2.weight"].T
    mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    hL = (256 / DIM) * (h - mu) / torch.sqrt(var + 1e-5) * sd["output_norm.weight"]
    logits = hL @ sd["output_linear.weight"].T + sd["output_linear.bias"] \
        + bias_scale * (torch.sqrt(a2) / s2)[:, None, None] * (z @ E.T)
    return logits, torch.softmax(logits, -1) @ E


def random_model(seed=0):
    torch.manual_seed(seed)
    model = DiffusionModel(V, D, DIM, N_BLOCKS, N_HEADS)
    with torch.no_grad():  # the zero-initialised and unit tensors would hide terms
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() == 2 else 1.0) + (1.0 if "norm" in name else 0.0))
    E = torch.randn(V, D)
    return model, E / E.norm(dim=1, keepdim=True)


def inputs(B=3, L=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, L, D, generator=g), torch.tensor([-2.5, 0.3, 4.0]),
            torch.randn(B, L, D, generator=g) * 0.2)


def test_forward_matches_float64_reference():
    model, E = random_model()
    z, gamma, x_sc = inputs()
    logits, x_hat = model(z, gamma, E, 0.7, x_sc)
    ref_logits, ref_x = reference_forward(model.state_dict(), z, gamma, E, 0.7, x_sc)
    torch.testing.assert_close(logits.double(), ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_hat.double(), ref_x, rtol=1e-5, atol=1e-5)


def test_forward_with_fix_src_matches_reference():
    model, E = random_model(2)
    z, gamma, x_sc = inputs(seed=3)
    ids = torch.randint(V, (3, 7))
    src = torch.zeros(3, 7, dtype=torch.bool)
    src[:, :3] = True
    logits, x_hat = model(z, gamma, E, 1.0, x_sc, None, E[ids], src)
    ref_logits, ref_x = reference_forward(model.state_dict(), z, gamma, E, 1.0, x_sc, E[ids], src)
    torch.testing.assert_close(logits.double(), ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_hat.double(), ref_x, rtol=1e-5, atol=1e-5)


def test_fix_src_source_positions_carry_their_embeddings():
    """With fix_src only the clean source embedding reaches the transformer at source positions:
    z and x_selfcond there cannot change the prediction at any target position."""
    model, E = random_model(4)
    z, gamma, x_sc = inputs(seed=5)
    ids = torch.randint(V, (3, 7))
    src = torch.zeros(3, 7, dtype=torch.bool)
    src[:, :3] = True
    out = model(z, gamma, E, 1.0, x_sc, None, E[ids], src)[0]
    z2, x_sc2 = z.clone(), x_sc.clone()
    z2[src] = torch.randn_like(z2[src])
    x_sc2[src] = torch.randn_like(x_sc2[src])
    out2 = model(z2, gamma, E, 1.0, x_sc2, None, E[ids], src)[0]
    torch.testing.assert_close(out[~src], out2[~src])
    # ... and substituting x_embed equals feeding the embedding as the scaled input itself
    scale = torch.sqrt(torch.sigmoid(-gamma) / D + torch.sigmoid(gamma))[:, None, None]
    z3 = torch.where(src[..., None], E[ids] * scale, z)
    x_sc3 = torch.where(src[..., None], E[ids], x_sc)
    out3 = model(z3, gamma, E, 0.0, x_sc3)[0]
    out_nobias = model(z, gamma, E, 0.0, x_sc, None, E[ids], src)[0]
    torch.testing.assert_close(out3, out_nobias, rtol=1e-5, atol=1e-5)


def test_selfcond_mask_routes_embedding_gradient():
    model, E = random_model(6)
    z, gamma, x_sc = inputs(seed=7)
    E = E.clone().requires_grad_(True)
    logits, x_hat = model(z, gamma, E, 1.0, x_sc, torch.tensor([1.0, 1.0, 1.0]))
    (logits.sum() + x_hat.sum()).backward()
    assert E.grad is None or E.grad.abs().sum() == 0
    logits, x_hat = model(z, gamma, E, 1.0, x_sc, torch.tensor([0.0, 1.0, 1.0]))
    (logits.sum() + x_hat.sum()).backward()
    assert E.grad.abs().sum() > 0


def test_plaid1b_keys_shapes_and_parameter_count():
    with torch.device("meta"):
        plaid = Plaid(32768, 16, 2048, 24, 32)
    assert sum(p.numel() for p in plaid.parameters()) == 1_275_925_506
    sd = plaid.model.state_dict()
    assert len(sd) == 151
    expected = {"input_linear.weight": (2048, 16), "selfcond_linear.weight": (2048, 16),
                "gamma_linear.weight": (2048, 64), "rotary_emb.inv_freq": (32,),
                "output_norm.weight": (2048,), "output_linear.weight": (32768, 2048),
                "output_linear.bias": (32768,)}
    for i in range(24):
        expected.update({f"blocks.{i}.rmsnorm1.weight": (2048,), f"blocks.{i}.rmsnorm2.weight": (2048,),
                         f"blocks.{i}.attn_qkv.weight": (6144, 2048),
                         f"blocks.{i}.attn_out.weight": (2048, 2048),
                         f"blocks.{i}.mlp.fc1.weight": (8192, 2048),
                         f"blocks.{i}.mlp.fc2.weight": (2048, 8192)})
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert {k: tuple(v.shape) for k, v in plaid.noise_schedule.state_dict().items()} == \
        {"W1": (1024, 1), "b1": (1024,), "W2": (1, 1024)}
    assert {k: tuple(v.shape) for k, v in plaid.gamma_bounds.state_dict().items()} == \
        {"gamma_0": (), "gamma_1": ()}
    assert tuple(plaid.embedding_matrix.state_dict()["matrix"].shape) == (32768, 16)
    assert plaid.model.output_mult == 0.125
    assert DiffusionModel(10, 16, 128, 1, 2).output_mult == 2.0


def test_initialisation():
    plaid = Plaid(40, 16, 32, 2, 4)
    assert plaid.gamma_bounds.gamma_0.item() == -3.0 and plaid.gamma_bounds.gamma_1.item() == 6.0
    torch.testing.assert_close(plaid.embedding_matrix.matrix.norm(dim=1), torch.ones(40))
    for name in ("selfcond_linear.weight", "gamma_linear.weight", "output_linear.weight",
                 "output_linear.bias"):
        assert plaid.model.state_dict()[name].abs().sum() == 0
    torch.testing.assert_close(plaid.model.rotary_emb.inv_freq,
                               torch.tensor([10000 ** (-2 * i / 8) for i in range(4)]))
