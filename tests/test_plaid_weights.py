"""Plaid's official four-file weights layout: round trip and clear errors (spec §1)."""
import pytest
import torch

from plaid import load_weights, save_weights
from plaid.weights import MODULE_NAMES, Plaid, WeightsError, load_weights_into

torch.set_num_threads(1)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    dims = dict(vocab_size=30, embed_dim=8, hidden_size=32, n_blocks=2, n_heads=4, schedule_width=16)
    dims.update(kw)
    return Plaid(**dims)


def test_round_trip(tmp_path):
    plaid = tiny()
    with torch.no_grad():
        plaid.model.output_linear.weight.normal_()
        plaid.gamma_bounds.gamma_1.fill_(5.5)
    save_weights(plaid, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.pt" for n in MODULE_NAMES)
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == set(plaid.model.state_dict())
    loaded = load_weights(tmp_path)
    assert loaded.model.rotary_emb.inv_freq.shape == (4,) and len(loaded.model.blocks) == 2
    for name in MODULE_NAMES:
        a, b = getattr(plaid, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    torch.testing.assert_close(loaded.reconst_ema, torch.full((5,), 1e-8, dtype=torch.float64))
    z = torch.randn(2, 5, 8)
    E = loaded.embedding_matrix()
    out_a = plaid.model(z, torch.tensor([0.0, 1.0]), plaid.embedding_matrix(), 1.0, torch.zeros_like(z))
    out_b = loaded.model(z, torch.tensor([0.0, 1.0]), E, 1.0, torch.zeros_like(z))
    torch.testing.assert_close(out_a[0], out_b[0])
    other = tiny(seed=1)
    load_weights_into(other, tmp_path)
    torch.testing.assert_close(other.gamma_bounds.gamma_1, torch.tensor(5.5))


def test_missing_files_are_named(tmp_path):
    save_weights(tiny(), tmp_path)
    (tmp_path / "gamma_bounds.pt").unlink()
    (tmp_path / "model.pt").unlink()
    with pytest.raises(WeightsError, match=r"gamma_bounds\.pt, model\.pt"):
        load_weights(tmp_path)


def test_wrong_key_and_shape_are_named(tmp_path):
    save_weights(tiny(), tmp_path)
    sd = torch.load(tmp_path / "model.pt", weights_only=True)
    sd["module.output_linear.bias"] = sd.pop("output_linear.bias")
    sd["blocks.1.attn_out.weight"] = torch.zeros(32, 31)
    torch.save(sd, tmp_path / "model.pt")
    with pytest.raises(WeightsError) as err:
        load_weights_into(tiny(), tmp_path)
    message = str(err.value)
    assert "missing key 'output_linear.bias'" in message
    assert "unexpected key 'module.output_linear.bias'" in message
    assert "'blocks.1.attn_out.weight' has shape [32, 31], expected [32, 32]" in message
    with pytest.raises(WeightsError):
        load_weights(tmp_path)


def test_config_mismatch_is_named(tmp_path):
    save_weights(tiny(), tmp_path)
    with pytest.raises(WeightsError, match=r"embedding_matrix\.pt: key 'matrix' has shape \[30, 8\], "
                                           r"expected \[31, 8\]"):
        load_weights_into(tiny(vocab_size=31), tmp_path)
