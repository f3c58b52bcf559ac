"""Block diffusion: block layout, the training/decoding view equivalence, and block decoding."""
import pytest
import torch
from hydra import compose, initialize_config_dir

from dot.backbone import backbone_class
from dot.tokenization import load_tokenizer
from sedd_backend.blocks import block_causal_mask, block_ids, causal_blocks, training_mask, two_copy_model

torch.set_num_threads(1)
CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def make(block_tokens, predictor="confidence", previous_token=False):
    overrides = ["backbone=sedd", "model=tiny", "model.n_blocks=2", f"backbone.block_tokens={block_tokens}",
                 f"sampling.predictor={predictor}", f"model.previous_token={previous_token}"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(0)
    bb = backbone_class("sedd").from_config(cfg, load_tokenizer("char"))
    with torch.no_grad():  # open the zero-initialised gates and output layer
        for p in bb.model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return bb


def test_block_ids_by_hand():
    fixed = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert block_ids(fixed, 2).tolist() == [[0, 0, 0, 1, 1, 2, 2, 3], [0, 1, 1, 2, 2, 3, 3, 4]]
    assert block_ids(fixed, 100).tolist() == [[0, 0, 0, 1, 1, 1, 1, 1], [0] + [1] * 7]


def test_block_ids_with_a_size_per_row():
    fixed = torch.tensor([[1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert block_ids(fixed, torch.tensor([2, 4])).tolist() == [[0, 0, 1, 1, 2, 2, 3],
                                                               [0, 1, 1, 1, 1, 2, 2]]
    with pytest.raises(ValueError, match="block_tokens must be >= 1"):
        block_ids(fixed, torch.tensor([2, 0]))


def test_training_on_a_mixture_of_block_layouts():
    """backbone.train_blocks: each row draws its layout (block size and t range) from the
    row's own random stream, so a row's loss is the one it gets when trained in that layout
    alone: a batch split into rows gives the same per-row losses."""
    from omegaconf import OmegaConf

    from dot.backbone import Batch
    from dot.rng import RowRandom

    bb = make(2, previous_token=True)
    bb.model.time_conditioning = False
    bb.cfg.backbone.objective, bb.cfg.backbone.mask_order = "cross_entropy", "left_to_right"
    bb.cfg.backbone.train_blocks = OmegaConf.create(
        [{"tokens": 2, "t_range": [0.8, 1.0]}, {"tokens": 5, "t_range": [0.0, 1.0]}])
    tok = bb.tokenizer
    ids, fixed = prompt_rows(tok, (3, 4, 5, 3), 14)
    ids[~fixed] = torch.randint(0, 10, (int((~fixed).sum()),), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(fixed)

    def loss_of(rows):
        batch = Batch(ids[rows], fixed[rows], attn[rows], torch.tensor(rows), 4, 0)
        return bb.loss(batch, RowRandom(1, 0, torch.tensor(rows)))[0]
    whole = loss_of([0, 1, 2, 3])
    assert whole.item() == pytest.approx(sum(loss_of([r]).item() for r in range(4)), rel=1e-4)
    picks = RowRandom(1, 0, torch.arange(4)).randint(2).tolist()
    assert 0 < sum(picks) < 4  # both layouts occur in this batch
    bb.cfg.backbone.train_blocks = OmegaConf.create([{"tokens": 2, "t_range": [0.8, 1.0]}] * 2)
    assert loss_of([0, 1, 2, 3]).item() != pytest.approx(whole.item(), rel=1e-3)


def test_masks_by_hand():
    blocks = torch.tensor([[0, 1, 1, 2]])
    causal = block_causal_mask(blocks)[0, 0].int().tolist()
    assert causal == [[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    two = training_mask(blocks)[0, 0].int()
    # noisy token of block 1 sees its own (noisy) block and the clean prefix only
    assert two[1].tolist() == [0, 1, 1, 0, 1, 0, 0, 0]
    # noisy token of block 2 sees only itself among noisy tokens, clean blocks 0 and 1
    assert two[3].tolist() == [0, 0, 0, 1, 1, 1, 1, 0]
    # clean tokens never see noisy ones; among clean tokens the mask is block-causal
    assert two[4:, :4].sum() == 0 and two[4:, 4:].tolist() == causal
    # one-token blocks: the clean half is an ordinary causal mask over the target
    ones = training_mask(torch.tensor([[0, 1, 2, 3]]))[0, 0, 4:, 4:]
    assert torch.equal(ones, torch.tril(torch.ones(4, 4, dtype=torch.bool)))


def test_block_ids_with_random_starts():
    """An offset per row shifts that row's boundaries: its first block is size - offset long."""
    fixed = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert block_ids(fixed, 3, torch.tensor([2, 1])).tolist() == [[0, 0, 1, 2, 2, 2, 3, 3],
                                                                  [0, 1, 1, 2, 2, 2, 3, 3]]


def test_causal_clean_rows_attend_token_by_token():
    """clean_attention=causal: a clean target token sees the prompt and the tokens up to
    itself, never a later one of its block; noisy rows keep the block rule."""
    fixed = torch.tensor([[1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    blocks = block_ids(fixed, 2)  # 0 0 | 1 1 | 2 2
    mask = training_mask(blocks, 0, causal_blocks(fixed))[0, 0]
    clean = mask[6:, 6:]
    assert clean.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                              [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert torch.equal(mask[:6], training_mask(blocks, 0)[0, 0, :6])


@pytest.mark.parametrize("previous_token,causal", [(False, False), (True, False), (True, True)])
def test_training_view_equals_decoding_view(previous_token, causal):
    """Every noisy block gets, in the one-pass training layout, the log-scores it gets when
    decoding reaches it (clean earlier blocks, this block noisy, nothing after it), also with
    the previous-token embedding, whose ids the training layout must build per copy, and with
    causal clean attention and random block starts, where decoding sees the clean tokens
    token by token (`causal_blocks`)."""
    bb, size = make(3, previous_token=previous_token), 3
    V, L = bb.tokenizer.vocab_size, 13
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, V, (2, L), generator=g)
    fixed = torch.zeros(2, L, dtype=torch.bool)
    fixed[0, :4], fixed[1, :6] = True, True
    mask_id = bb.graph.dim - 1
    xt = torch.where(~fixed & (torch.rand(2, L, generator=g) < 0.5), mask_id, x0)
    sigma = torch.tensor([0.7, 2.0])
    with torch.no_grad():
        blocks = block_ids(fixed, size, torch.tensor([1, 2]) if causal else None)
        trained = two_copy_model(bb.model, x0, fixed, blocks, causal=causal)(xt, sigma)
        for row in range(2):
            for b in range(1, int(blocks[row].max()) + 1):
                end = int((blocks[row] == b).nonzero().max()) + 1
                view = torch.where(blocks[row, :end] == b, xt[row, :end], x0[row, :end])[None]
                seen = blocks[row:row + 1, :end]
                if causal:  # clean tokens one by one, the noisy block as one
                    seen = causal_blocks(fixed[row:row + 1, :end])
                    seen = torch.where(blocks[row:row + 1, :end] == b,
                                       seen[blocks[row:row + 1, :end] == b].min(), seen)
                decoded = bb.model(view, sigma[row:row + 1], block_causal_mask(seen))
                here = blocks[row, :end] == b
                torch.testing.assert_close(decoded[0, here], trained[row, :end][here],
                                           atol=1e-3, rtol=1e-3)  # float rounding


def test_block_decoding_fills_the_target_and_keeps_the_prefix():
    bb = make(4)
    tok = bb.tokenizer
    ids = torch.full((3, 14), tok.pad_id)
    fixed = torch.zeros(3, 14, dtype=torch.bool)
    for row, n in enumerate((3, 5, 9)):
        ids[row, :n] = torch.arange(10, 10 + n)
        fixed[row, :n] = True
    out = bb.sample(ids, fixed, steps=4, generator=torch.Generator().manual_seed(0),
                    record_chain=True)
    assert torch.equal(out.ids[fixed], ids[fixed])
    assert (out.ids < tok.vocab_size).all()  # no mask left anywhere
    # the longest row needs ceil(11 / 4) = 3 blocks of 4 steps + noise removal, unless all
    # rows stopped at EOS earlier
    assert out.nfe in (5, 10, 15) and len(out.chain) == out.nfe
    # the chain reveals blocks left to right: a position is never unmasked before the
    # positions of earlier blocks are all revealed
    blocks = block_ids(fixed, 4)
    for frame in out.chain:
        masked = frame == bb.graph.dim - 1
        for row in range(3):
            if masked[row].any():
                first_open = int(blocks[row][masked[row]].min())
                assert not masked[row][blocks[row] < first_open].any()


def test_one_token_blocks_decode_greedily_left_to_right():
    """With 1-token blocks and one step each, block decoding is greedy autoregressive
    decoding: each token is the denoiser's argmax given the tokens before it."""
    bb = make(1)
    tok = bb.tokenizer
    prefix = [12, 13, 14]
    ids = torch.full((1, 8), tok.pad_id)
    ids[0, :3] = torch.tensor(prefix)
    fixed = torch.zeros(1, 8, dtype=torch.bool)
    fixed[0, :3] = True
    out = bb.sample(ids, fixed, steps=1, generator=torch.Generator().manual_seed(0),
                    predictor="confidence", noise_removal=False).ids[0]
    mask_id = bb.graph.dim - 1
    for p in range(3, 8):
        if out[p - 1] == tok.eos_id and p > 3:
            break
        view = torch.cat([out[:p], torch.tensor([mask_id])])[None]
        blocks = block_ids(torch.arange(p + 1)[None] < 3, 1)  # prefix, then 1 token per block
        with torch.no_grad():
            scores = bb.log_score(view, bb.noise.total_noise(torch.tensor([1.0])),
                                  block_causal_mask(blocks))
        assert int(scores[0, -1, :-1].argmax()) == int(out[p])


def prompt_rows(tok, lengths, L):
    """Rows of length L whose first n positions (n from `lengths`) are a fixed prompt."""
    ids = torch.full((len(lengths), L), tok.pad_id)
    fixed = torch.zeros(len(lengths), L, dtype=torch.bool)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.arange(10, 10 + n)
        fixed[row, :n] = True
    return ids, fixed


def sample_both_ways(bb, option, ids, fixed, steps, seed):
    """{True: result with cfg.sampling.<option> on, False: off}, same seed, chains recorded."""
    outs = {}
    for on in (True, False):
        bb.cfg.sampling[option] = on
        outs[on] = bb.sample(ids, fixed, steps=steps, generator=torch.Generator().manual_seed(seed),
                             record_chain=True)
    return outs


@pytest.mark.parametrize("previous_token,causal", [(False, False), (True, False), (True, True)])
def test_cached_block_decoding_equals_recomputing_the_prefix(previous_token, causal):
    """With a sigma-blind network the prefix cache changes no token and no network count:
    rows of different prompt lengths, a last block cut by the row end, rows stopping at EOS.
    (The confidence predictor is deterministic given the scores; a sampling predictor would
    draw its noise for a differently shaped tensor in each path.) With the previous-token
    embedding the cached calls must find the id before each block in padded prompts."""
    bb = make(3, predictor="confidence", previous_token=previous_token)
    bb.model.time_conditioning = False
    bb.cfg.backbone.clean_attention = "causal" if causal else "block"
    tok = bb.tokenizer
    L = 17
    ids, fixed = prompt_rows(tok, (3, 5, 6, 10), L)
    with torch.no_grad():  # make EOS likely enough that some rows stop early
        bb.model.output_layer.linear.bias[tok.eos_id] += 4.5
    outs = sample_both_ways(bb, "kv_cache", ids, fixed, steps=3, seed=5)
    assert torch.equal(outs[True].ids, outs[False].ids)
    assert outs[True].nfe == outs[False].nfe
    assert all(torch.equal(a, b) for a, b in zip(outs[True].chain, outs[False].chain))
    assert len(outs[True].chain) == len(outs[False].chain)
    ends = (outs[True].ids == tok.eos_id).any(1)
    assert ends.any() and not ends.all()  # both kinds of rows were exercised


def test_confidence_steps_that_reveal_nothing_reuse_the_last_call():
    """T = 8 steps for 2-token blocks: at most two steps per block reveal a token. With a
    sigma-blind network reusing the last call in the others changes no state of the chain,
    and the calls drop to at most one per token of the block."""
    bb = make(2, predictor="confidence")
    bb.model.time_conditioning = False
    bb.cfg.sampling.skip_finished = True
    tok = bb.tokenizer
    L, prompt = 15, 5
    ids, fixed = prompt_rows(tok, (prompt,) * 3, L)
    with torch.no_grad():  # rows run to the end of the row
        bb.model.output_layer.linear.bias[[tok.eos_id, tok.pad_id]] = -1e4
    outs = sample_both_ways(bb, "reuse_unchanged", ids, fixed, steps=8, seed=3)
    assert torch.equal(outs[True].ids, outs[False].ids)
    assert all(torch.equal(a, b) for a, b in zip(outs[True].chain, outs[False].chain))
    n_blocks = (L - prompt) // 2
    assert outs[False].nfe >= 7 * n_blocks  # every step but the finished ones calls
    assert outs[True].nfe <= 2 * n_blocks


def test_threshold_block_decoding_cached_equals_recomputed_and_counts_rows():
    """Parallel commit in 4-token blocks: the prefix cache changes no token, no call count and
    no per-row count; a row that stops at EOS needs fewer calls than the batch made, and no
    block takes more calls than it has tokens."""
    bb = make(4, predictor="confidence")
    bb.model.time_conditioning = False
    bb.cfg.sampling.threshold = 0.2
    tok = bb.tokenizer
    L = 21
    ids, fixed = prompt_rows(tok, (3, 5, 6, 9), L)
    with torch.no_grad():
        bb.model.output_layer.linear.bias[tok.eos_id] += 4.0
    outs = sample_both_ways(bb, "kv_cache", ids, fixed, steps=4, seed=2)
    assert torch.equal(outs[True].ids, outs[False].ids)
    assert outs[True].nfe == outs[False].nfe
    assert outs[True].row_nfe.tolist() == outs[False].row_nfe.tolist()
    rows = outs[True].row_nfe
    assert int(rows.max()) <= outs[True].nfe <= 4 * 5
    ends = (outs[True].ids == tok.eos_id).any(1)
    assert ends.any() and int(rows[ends].min()) < outs[True].nfe
