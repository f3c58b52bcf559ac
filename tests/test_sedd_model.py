"""DDiT network: official state-dict layout, parameter counts and a float64 reference forward."""
import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from sedd_backend.model import DDiT, apply_rotary, build_model, previous_ids

torch.set_num_threads(1)
CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def randomized(model: DDiT, seed: int = 0) -> DDiT:
    """Every parameter random (adaLN and the output layer start at zero otherwise)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "norm" in name else 0.3 * noise)
    return model


def official_layout(V, H, C, d, n_blocks):
    """(key, shape) in order, written from the table of spec §1.3."""
    keys = [("vocab_embed.embedding", (V, H)), ("sigma_map.mlp.0.weight", (C, 256)),
            ("sigma_map.mlp.0.bias", (C,)), ("sigma_map.mlp.2.weight", (C, C)),
            ("sigma_map.mlp.2.bias", (C,)), ("rotary_emb.inv_freq", (d // 2,))]
    for i in range(n_blocks):
        keys += [(f"blocks.{i}.{k}", s) for k, s in [
            ("norm1.weight", (H,)), ("attn_qkv.weight", (3 * H, H)), ("attn_out.weight", (H, H)),
            ("norm2.weight", (H,)), ("mlp.0.weight", (4 * H, H)), ("mlp.0.bias", (4 * H,)),
            ("mlp.2.weight", (H, 4 * H)), ("mlp.2.bias", (H,)),
            ("adaLN_modulation.weight", (6 * H, C)), ("adaLN_modulation.bias", (6 * H,))]]
    keys += [("output_layer.norm_final.weight", (H,)), ("output_layer.linear.weight", (V, H)),
             ("output_layer.linear.bias", (V,)), ("output_layer.adaLN_modulation.weight", (2 * H, C)),
             ("output_layer.adaLN_modulation.bias", (2 * H,))]
    return keys


def test_state_dict_and_parameter_order_follow_official_layout():
    model = DDiT(13, hidden_size=32, cond_dim=16, n_heads=4, n_blocks=2, dropout=0.0)
    expected = official_layout(13, 32, 16, 8, 2)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected
    # The official EMA is a positional list over model.parameters(): same order, no buffer.
    assert [k for k, _ in model.named_parameters()] == [k for k, _ in expected
                                                        if k != "rotary_emb.inv_freq"]
    assert torch.allclose(model.state_dict()["rotary_emb.inv_freq"],
                          torch.tensor([1.0, 10000 ** -0.25, 10000 ** -0.5, 10000 ** -0.75]))


@pytest.mark.parametrize("name,params,entries", [("small", 169_627_218, 131),
                                                 ("medium", 424_477_010, 251)])
def test_official_configs_give_official_parameter_counts(name, params, entries):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["backbone=sedd", f"model={name}"])
    assert cfg.backbone.name == "sedd" and cfg.graph.type == "absorb"
    assert cfg.noise.type == "loglinear" and cfg.model.type == "ddit"
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.graph.type, 50257)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == entries


def reference_forward(sd, x, sigma, n_heads, scale_by_sigma):
    """Spec §2, step by step, in float64 with explicit per-head attention."""
    P = {k: v.double() for k, v in sd.items()}
    V, H = P["vocab_embed.embedding"].shape
    d, (B, L) = H // n_heads, x.shape
    n_blocks = len({k.split(".")[1] for k in P if k.startswith("blocks.")})
    sigma = sigma.double()

    def lin(z, name, bias=True):
        out = z @ P[name + ".weight"].T
        return out + P[name + ".bias"] if bias else out

    def ln(z, w):
        mu = z.mean(-1, keepdim=True)
        return (z - mu) / torch.sqrt(((z - mu) ** 2).mean(-1, keepdim=True) + 1e-5) * w

    def silu(z):
        return z / (1 + torch.exp(-z))
    k = torch.arange(128, dtype=torch.float64)
    arg = sigma[:, None] * torch.exp(-math.log(10000) * k / 128)
    c = silu(lin(silu(lin(torch.cat([arg.cos(), arg.sin()], -1), "sigma_map.mlp.0")), "sigma_map.mlp.2"))

    theta = torch.arange(L, dtype=torch.float64)[:, None] / 10000 ** (2 * torch.arange(d // 2) / d)
    cos, sin = theta.cos()[:, None], theta.sin()[:, None]  # [L, 1, d/2]

    def rotate(u):  # [B, L, h, d]
        u1, u2 = u[..., : d // 2], u[..., d // 2:]
        return torch.cat([u1 * cos - u2 * sin, u2 * cos + u1 * sin], -1)

    h = P["vocab_embed.embedding"][x]
    for i in range(n_blocks):
        b = f"blocks.{i}."
        shift1, scale1, gate1, shift2, scale2, gate2 = (m[:, None] for m in lin(c, b + "adaLN_modulation").split(H, -1))
        qkv = lin(ln(h, P[b + "norm1.weight"]) * (1 + scale1) + shift1, b + "attn_qkv", bias=False)
        q, kk, v = (qkv[..., j * H:(j + 1) * H].reshape(B, L, n_heads, d) for j in range(3))
        q, kk = rotate(q), rotate(kk)
        att = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, kk) / math.sqrt(d), dim=-1)
        o = torch.einsum("bhij,bjhd->bihd", att, v).reshape(B, L, H)
        h = h + gate1 * lin(o, b + "attn_out", bias=False)
        z = lin(ln(h, P[b + "norm2.weight"]) * (1 + scale2) + shift2, b + "mlp.0")
        gelu = 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
        h = h + gate2 * lin(gelu, b + "mlp.2")
    shift, scale = (m[:, None] for m in lin(c, "output_layer.adaLN_modulation").split(H, -1))
    out = lin(ln(h, P["output_layer.norm_final.weight"]) * (1 + scale) + shift, "output_layer.linear")
    if scale_by_sigma:
        out = out - torch.log(torch.expm1(sigma))[:, None, None] - math.log(V - 1)
    for bi in range(B):
        for i in range(L):
            out[bi, i, x[bi, i]] = 0.0
    return out


@pytest.mark.parametrize("scale_by_sigma", [True, False])
def test_forward_matches_float64_reference(scale_by_sigma):
    model = randomized(DDiT(13, 32, 16, n_heads=4, n_blocks=2, dropout=0.1,
                            scale_by_sigma=scale_by_sigma)).eval()
    x = torch.randint(0, 13, (3, 7), generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.3, 1.2, 4.0])  # both sides of the expm1 switch at 0.5
    out = model(x, sigma)
    ref = reference_forward(model.state_dict(), x, sigma, 4, scale_by_sigma)
    assert out.dtype == torch.float32 and out.shape == (3, 7, 13)
    assert torch.allclose(out.double(), ref, atol=2e-5, rtol=1e-5), (out.double() - ref).abs().max()
    assert torch.equal(model(x, sigma[:, None]), out)  # sigma as [B, 1] too


def test_rotary_is_rotate_half_rotation_by_position():
    d, L = 8, 5
    u = torch.randn(1, L, 1, d, dtype=torch.float64)
    theta = torch.arange(L, dtype=torch.float64)[:, None] / 10000 ** (torch.arange(d // 2) * 2 / d)
    cos_LD, sin_LD = torch.cat([theta.cos()] * 2, -1), torch.cat([theta.sin()] * 2, -1)
    got = apply_rotary(u, cos_LD, sin_LD)
    # Pair k of the rotate-half convention is (u[k], u[k + d/2]), rotated as a complex number.
    z = torch.complex(u[..., : d // 2], u[..., d // 2:]) * torch.exp(1j * theta)[None, :, None]
    assert torch.allclose(got, torch.cat([z.real, z.imag], -1))
    # and the module's tables are these tables
    model = DDiT(11, 32, 16, n_heads=4, n_blocks=1)
    cos, sin = model.rotary_emb(torch.arange(L))
    assert torch.allclose(cos.double(), cos_LD, atol=1e-6) and torch.allclose(sin.double(), sin_LD, atol=1e-6)


def test_scale_by_sigma_shift_and_zero_current_token():
    scaled = randomized(DDiT(11, 32, 16, n_heads=4, n_blocks=1, dropout=0.0)).eval()
    plain = DDiT(11, 32, 16, n_heads=4, n_blocks=1, dropout=0.0, scale_by_sigma=False).eval()
    plain.load_state_dict(scaled.state_dict())
    x = torch.tensor([[0, 3, 10, 10], [5, 5, 1, 2]])
    sigma = torch.tensor([0.2, 3.0])
    a, b = scaled(x, sigma), plain(x, sigma)
    at_x = torch.nn.functional.one_hot(x, 11).bool()
    assert torch.all(a[at_x] == 0) and torch.all(b[at_x] == 0)
    shift = torch.log(torch.expm1(sigma.double())) + math.log(10)
    diff = (b - a).double()
    for row in range(2):
        assert torch.allclose(diff[row][~at_x[row]], shift[row].expand(int((~at_x[row]).sum())), atol=1e-5)


def test_dropout_only_in_training_mode():
    model = randomized(DDiT(11, 32, 16, n_heads=4, n_blocks=1, dropout=0.5))
    x, sigma = torch.randint(0, 11, (2, 6)), torch.tensor([1.0, 2.0])
    model.eval()
    assert torch.equal(model(x, sigma), model(x, sigma))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x, sigma), model(x, sigma))


def test_previous_token_embedding_adds_the_previous_ids_embedding():
    """`previous_token`: the input of position i is embed(x_i) + prev_embed(x_{i-1}), the mask
    id standing in before position 0; without the option the state dict is the official one."""
    assert previous_ids(torch.tensor([[5, 6, 7]]), 9).tolist() == [[9, 5, 6]]
    plain, prev = (randomized(DDiT(10, 32, 16, 4, 1, 0.0, previous_token=flag)) for flag in (False, True))
    assert set(prev.state_dict()) - set(plain.state_dict()) == {"prev_embed.embedding"}
    x = torch.tensor([[5, 6, 7]])
    seen = {}
    prev.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(h=args[0]))
    prev(x, torch.tensor([1.0]))
    expected = prev.vocab_embed.embedding[x] + prev.prev_embed.embedding[torch.tensor([[9, 5, 6]])]
    torch.testing.assert_close(seen["h"], expected)
    # explicit previous ids replace the ones derived from the row
    derived = prev(x, torch.tensor([1.0]))
    torch.testing.assert_close(prev(x, torch.tensor([1.0]), prev_BL=torch.tensor([[9, 5, 6]])), derived)
    assert not torch.allclose(prev(x, torch.tensor([1.0]), prev_BL=torch.tensor([[9, 9, 9]])), derived)


def test_previous_token_needs_the_absorbing_graph():
    cfg = {"hidden_size": 32, "cond_dim": 16, "n_heads": 4, "n_blocks": 1, "dropout": 0.0,
           "scale_by_sigma": False, "previous_token": True}
    with pytest.raises(ValueError, match="model.previous_token=true needs graph.type=absorb"):
        build_model(cfg, "uniform", 10)
    assert build_model(cfg, "absorb", 10).prev_embed is not None


def test_sigma_blind_network_skips_the_conditioning_without_changing_outputs():
    """time_conditioning=False: decoding (no autograd) uses each adaLN bias directly; the
    outputs equal the training path's, which feeds a zero vector through the adaLN layers."""
    torch.manual_seed(0)
    model = DDiT(12, hidden_size=32, cond_dim=8, n_heads=2, n_blocks=2, dropout=0.0)
    model.time_conditioning = False
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randint(0, 12, (2, 7))
    sigma = torch.tensor([0.5, 3.0])
    trained = model(x, sigma)
    with torch.no_grad():
        decoded = model(x, sigma)
    torch.testing.assert_close(decoded, trained.detach())
