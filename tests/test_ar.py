"""The AR baseline: batched KV-cache greedy decoding equals decoding each row from scratch,
and each row's network calls are its generated tokens."""
import torch

from ar_backend import ARBackbone
from dot.config import compose_config
from dot.tokenization import CharTokenizer


def _naive_greedy(model, prefix, n_new, stop_ids):
    seq = list(prefix)
    for _ in range(n_new):
        x = torch.tensor([seq])
        L = len(seq)
        logits = model(x, torch.arange(L)[None], torch.ones(L, L, dtype=torch.bool).tril()[None])
        nxt = int(logits[0, -1].argmax())
        seq.append(nxt)
        if nxt in stop_ids:
            break
    return seq[len(prefix):]


def test_kv_cache_decoding_matches_full_recompute():
    torch.manual_seed(0)
    tok = CharTokenizer()
    cfg = compose_config(["backbone=ar", "model.hidden_size=32", "model.n_blocks=2"])
    backbone = ARBackbone.from_config(cfg, tok)
    backbone.model.eval()
    with torch.no_grad():  # sharpen the random model so greedy choices are well separated
        backbone.model.head.weight.mul_(20)
    L = 16
    prefixes = [[5, 6, 7, tok.sep_id], [8, tok.sep_id], [9, 10, 11, 12, 13, 14, tok.sep_id]]
    ids = torch.full((3, L), tok.pad_id)
    fixed = torch.zeros((3, L), dtype=torch.bool)
    for r, p in enumerate(prefixes):
        ids[r, : len(p)] = torch.tensor(p)
        fixed[r, : len(p)] = True
    result = backbone.sample(ids, fixed, steps=1, generator=torch.Generator())
    out = result.ids
    for r, p in enumerate(prefixes):
        with torch.no_grad():
            expected = _naive_greedy(backbone.model, p, L - len(p), {tok.eos_id, tok.pad_id})
        got = out[r, len(p):].tolist()
        assert len(expected) > 3  # a long enough continuation to exercise the cache
        assert got[: len(expected)] == expected
        assert out[r, : len(p)].tolist() == p
        # one call per generated token, the stop token included, as when decoded alone
        assert int(result.row_nfe[r]) == len(expected)
    assert result.nfe == int(result.row_nfe.max())


def test_a_sampler_option_is_refused_not_ignored():
    import pytest

    backbone = ARBackbone.from_config(compose_config(["backbone=ar", "model.hidden_size=32",
                                                      "model.n_blocks=1"]), CharTokenizer())
    ids, fixed = torch.zeros((1, 4), dtype=torch.long), torch.tensor([[True, False, False, False]])
    with pytest.raises(ValueError, match="threshold do not apply to the ar backbone"):
        backbone.sample(ids, fixed, steps=1, generator=torch.Generator(), threshold=0.9)
