"""Sliding block decoding (`sampling.sliding`): calls on a model whose answer is known, and the
prefix cache against recomputing every call from scratch."""
import pytest
import torch
from hydra import compose, initialize_config_dir

from dot.backbone import backbone_class
from dot.tokenization import load_tokenizer
from sedd_backend.blocks import block_causal_mask, causal_blocks, sample_blocks, sample_sliding
from sedd_backend.graph import get_graph
from sedd_backend.noise import LogLinearNoise
from sedd_backend.sampling import ParallelCommit

torch.set_num_threads(1)
CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
V, EOS, PAD = 9, 7, 8  # hand-built vocabulary: 0..6 digits, then EOS and PAD; mask = 9


def carry_network(answer, independent, lean=0.0, leaning=None):
    """A hand-built network with the cache's calling convention: the masked token at position
    p is sure to be answer[p] when p is `independent` or the token before it is written (its
    previous id is not the mask), and otherwise a digit waiting for its carry: uniform, or with
    `lean` > 0 leaning to `leaning` (default the answer; p = 0.48 at lean 2). A clean position
    predicts the next answer token, as the clean copy's next-token outputs do."""
    leaning = answer if leaning is None else leaning
    def log_score(x_BN, sigma, attn_mask, positions_BN, layers, prev_BN):
        positions_BN = positions_BN.clamp(max=len(answer) - 1)  # slots past the row's end
        ready_BN = independent[positions_BN] | (prev_BN != V)
        log = torch.where(ready_BN[..., None], -30.0, 0.0).expand(*x_BN.shape, V + 1).clone()
        log.scatter_(-1, torch.where(ready_BN, answer[positions_BN],
                                     leaning[positions_BN])[..., None],
                     torch.where(ready_BN, 10.0, lean)[..., None])
        following_BN = answer[(positions_BN + 1).clamp(max=len(answer) - 1)]
        head = torch.full_like(log, -30.0).scatter_(-1, following_BN[..., None], 10.0)
        return torch.where((x_BN != V)[..., None], head, log)
    return log_score


def decode(network, prompt, length, size, rule, sliding, drafts=False, draft_threshold=0.0):
    graph = get_graph("absorb", V)
    ids = torch.full((1, length), PAD)
    ids[0, :prompt] = 1
    fixed = torch.arange(length)[None] < prompt
    if sliding:
        return sample_sliding(network, rule, ids, fixed, size, n_layers=1, mask_id=V, eos_id=EOS,
                              pad_id=PAD, record_chain=True, drafts=drafts,
                              draft_threshold=draft_threshold)
    return sample_blocks(network, graph, LogLinearNoise(), ids, fixed, size, size,
                         torch.Generator(), eos_id=EOS, pad_id=PAD, predictor="left_to_right",
                         denoise=True, record_chain=True, skip_finished=True, commit=rule,
                         n_layers=1)


@pytest.mark.parametrize("rule", [ParallelCommit(threshold=0.9), ParallelCommit(margin=0.5)])
def test_sliding_spends_a_call_per_carry_and_none_on_block_tails(rule):
    """Target of 12 after a 2-token prompt, carries waiting at target positions 2 and 6.
    Sliding blocks of 4: [0 1] [2 3 4 5] [6 7 8 9] [10 11] = 4 calls; fixed blocks of 4 spend
    a second call on the first two blocks' tails: 5. Both write the answer."""
    target = [3, 1, 4, 1, 5, 2, 6, 5, 3, 5, 0, EOS]
    answer = torch.tensor([1, 1] + target)
    independent = torch.ones(14, dtype=torch.bool)
    independent[[2 + 2, 2 + 6]] = False
    network = carry_network(answer, independent)
    slid = decode(network, 2, 14, 4, rule, sliding=True)
    assert slid.ids[0].tolist() == answer.tolist()
    assert slid.nfe == 4 and slid.row_nfe.tolist() == [4]
    assert [int((frame[0, 2:] != V).sum()) for frame in slid.chain] == [2, 6, 10, 12]
    fixed = decode(network, 2, 14, 4, rule, sliding=False)
    assert fixed.ids[0].tolist() == answer.tolist() and fixed.nfe == 5


def test_drafts_write_a_checked_guess_and_a_new_block_in_one_call():
    """The carry digits lean to the right answer (p = 0.48 < 0.9), so sliding stops before
    each: [0 1] [2 3 4 5] [6 7 8 9] [10 11] = 4 calls. With drafts a call also writes the
    last call's unsure rest once the next-token head agrees with it: [0 1], [2 3 | 4 5],
    [6 7 | 8 9 10 11] = 3 calls, the same answer."""
    target = [3, 1, 4, 1, 5, 2, 6, 5, 3, 5, 0, EOS]
    answer = torch.tensor([1, 1] + target)
    independent = torch.ones(14, dtype=torch.bool)
    independent[[2 + 2, 2 + 6]] = False
    network = carry_network(answer, independent, lean=2.0)
    rule = ParallelCommit(threshold=0.9)
    plain = decode(network, 2, 14, 4, rule, sliding=True)
    drafted = decode(network, 2, 14, 4, rule, sliding=True, drafts=True)
    assert plain.ids[0].tolist() == drafted.ids[0].tolist() == answer.tolist()
    assert plain.nfe == 4 and drafted.nfe == 3
    assert [int((frame[0, 2:] != V).sum()) for frame in drafted.chain] == [2, 6, 12]
    # a draft threshold above the carry digits' 0.48 drafts nothing here: plain sliding again
    for draft_threshold, calls in ((0.4, 3), (0.5, 4)):
        out = decode(network, 2, 14, 4, rule, sliding=True, drafts=True,
                     draft_threshold=draft_threshold)
        assert out.ids[0].tolist() == answer.tolist() and out.nfe == calls
    wrong = answer.clone()
    wrong[2 + 6] = 0  # the block leans to a wrong carry digit: the head's token is written
    # instead, and the block that saw the wrong draft is dropped: one call more than plain
    out = decode(carry_network(answer, independent, 2.0, wrong), 2, 14, 4, rule, sliding=True,
                 drafts=True)
    assert out.ids[0].tolist() == answer.tolist() and out.nfe == 5
    assert [int((frame[0, 2:] != V).sum()) for frame in out.chain] == [2, 6, 7, 11, 12]


def test_sliding_stops_a_row_at_its_eos_and_pads_the_rest():
    answer = torch.tensor([1, 1, 3, 4, EOS, 2, 2, 2, 2, 2])
    network = carry_network(answer, torch.ones(10, dtype=torch.bool))
    out = decode(network, 2, 10, 8, ParallelCommit(threshold=0.9), sliding=True)
    assert out.ids[0].tolist() == [1, 1, 3, 4, EOS, PAD, PAD, PAD, PAD, PAD] and out.nfe == 1
    answer[3] = 5
    independent = torch.ones(10, dtype=torch.bool)
    independent[4] = False  # EOS only after a second call; nothing after it is written
    out = decode(carry_network(answer, independent), 2, 10, 2, ParallelCommit(threshold=0.9),
                 sliding=True)
    assert out.ids[0].tolist() == [1, 1, 3, 5, EOS, PAD, PAD, PAD, PAD, PAD] and out.nfe == 2


def causal_model(threshold):
    overrides = ["backbone=sedd_block", "model=tiny", "model.n_blocks=2",
                 "backbone.block_tokens=4", "backbone.clean_attention=causal",
                 "backbone.random_block_starts=true", "sampling.predictor=left_to_right",
                 f"sampling.threshold={threshold}", "sampling.sliding=true"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(0)
    bb = backbone_class("sedd").from_config(cfg, load_tokenizer("char"))
    with torch.no_grad():  # open the zero-initialised gates and output layer, make EOS likely
        for p in bb.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        bb.model.output_layer.linear.bias[bb.tokenizer.eos_id] += 3.0
    return bb


def recomputed_sliding(bb, ids, fixed, size, threshold, drafts=False, seen=None,
                       draft_threshold=0.0):
    """The sliding rule, one row at a time, every call run on the whole row from scratch: the
    prompt, the written tokens and the draft clean and causal, then `size` masks as one block.
    With `drafts`, the clean outputs before the draft's tokens are read as next-token guesses;
    `seen` counts the draft tokens kept and the drafts cut short."""
    mask_id, out, calls = bb.graph.dim - 1, ids.clone(), []
    ends = (bb.tokenizer.eos_id, bb.tokenizer.pad_id)
    for row in range(ids.shape[0]):
        n, length, row_calls, draft = int(fixed[row].sum()), ids.shape[1], 0, []
        while n < length:
            start = n + len(draft)
            end = min(start + size, length)
            view = torch.cat([out[row, :n], torch.tensor(draft, dtype=torch.long),
                              torch.full((end - start,), mask_id)])[None]
            blocks = causal_blocks(fixed[row:row + 1, :end]).clone()
            blocks[0, start:] = blocks[0, start - 1] + 1  # (empty when the draft ends the row)
            with torch.no_grad():
                logp = torch.log_softmax(bb.log_score(view, torch.ones(1), block_causal_mask(blocks))
                                         [0, :, :-1], -1)
            row_calls += 1
            guesses = logp[n - 1:start - 1].argmax(-1).tolist()
            agree = 0
            while agree < len(draft) and guesses[agree] == draft[agree]:
                agree += 1
            if seen is not None:
                seen["kept"] += agree
                seen["cut"] += agree < len(draft)
            if agree < len(draft):  # the head's token replaces the first wrong draft token
                written, draft = draft[:agree] + [guesses[agree]], []
            else:
                prob, token = logp[start:].exp().max(-1)
                run = int((prob < threshold).int().cumsum(0).eq(0).sum().clamp(min=min(1, end - start)))
                written = draft + token[:run].tolist()
                likely = int((prob[run:] < draft_threshold).int().cumsum(0).eq(0).sum())
                draft = token[run:run + likely].tolist() if drafts else []
            stop = [i for i, t in enumerate(written) if t in ends]
            if stop:
                written = written[:stop[0] + 1]
            if drafts and any(t in ends for t in draft):
                draft = draft[:next(i for i, t in enumerate(draft) if t in ends) + 1]
            out[row, n:n + len(written)] = torch.tensor(written)
            n += len(written)
            if stop:
                break
        out[row, n:] = bb.tokenizer.pad_id
        calls.append(row_calls)
    return out, calls


@pytest.mark.parametrize("threshold, drafts, draft_threshold", [
    (0.3, False, 0.0), (0.6, False, 0.0), (0.6, True, 0.0), (0.9, True, 0.0), (0.9, True, 0.2)])
def test_cached_sliding_equals_recomputing_every_call(threshold, drafts, draft_threshold):
    """With causal clean attention the cache is exact for runs of any length: rows of several
    prompt lengths decode in one batch to the ids and per-row calls of a from-scratch loop,
    with and without drafts (whose rejected tokens must leave no trace in the cache)."""
    bb = causal_model(threshold)
    tok, L = bb.tokenizer, 19
    ids = torch.full((3, L), tok.pad_id)
    fixed = torch.zeros(3, L, dtype=torch.bool)
    for row, n in enumerate((3, 5, 8)):
        ids[row, :n] = torch.arange(10, 10 + n)
        fixed[row, :n] = True
    out = bb.sample(ids, fixed, steps=4, generator=torch.Generator(), drafts=drafts,
                    draft_threshold=draft_threshold)
    seen = {"kept": 0, "cut": 0}
    want, calls = recomputed_sliding(bb, ids, fixed, 4, threshold, drafts, seen, draft_threshold)
    assert torch.equal(out.ids, want)
    assert out.row_nfe.tolist() == calls and out.nfe == max(calls)
    if drafts:  # draft tokens were both kept and rejected
        assert seen["kept"] > 0 and seen["cut"] > 0
    else:  # the rule did commit runs, and not everything at once
        assert 1 < max(calls) < L - 3


def test_sliding_refuses_models_it_does_not_fit():
    bb = causal_model(0.5)
    ids, fixed = torch.zeros(1, 8, dtype=torch.long), torch.arange(8)[None] < 3
    with pytest.raises(ValueError, match="left_to_right"):
        bb.sample(ids, fixed, 4, torch.Generator(), predictor="confidence")
    bb.cfg.backbone.clean_attention = "block"
    with pytest.raises(ValueError, match="clean_attention=causal"):
        bb.sample(ids, fixed, 4, torch.Generator())


@pytest.mark.parametrize("override, message", [
    ("backbone.clean_attention=casual", "must be block or causal"),
    ("backbone.next_token_loss=1.0", "clean_attention=causal"),
])
def test_block_options_are_checked_when_the_model_is_built(override, message):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["model=tiny", override])
    with pytest.raises(ValueError, match=message):
        backbone_class("sedd").from_config(cfg, load_tokenizer("char"))
