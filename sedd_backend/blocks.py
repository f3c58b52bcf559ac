"""Block diffusion: denoise a few target tokens at a time, blocks left to right (an option).

The target (everything after the fixed prefix) is cut into blocks of `size` tokens. Inside a
block the tokens are denoised jointly, in any order, as in SEDD; across blocks the model is
causal: a block sees the clean prefix and the clean earlier blocks, never a later one. So
`size=1` is an autoregressive model and `size >= seq_len` is single-pass DoT; in between, each
block is a small DoT pass conditioned on the question and the reasoning so far (DoT-MP with
thoughts of a fixed token length). Idea and training layout: Arriola et al. 2025, "Block
Diffusion" (BD3-LM).

Why: a masked-diffusion model trained on whole rationales must learn every conditional
"digit i given any subset of the others", most of which need carries it has not seen. With
small blocks the conditionals it must learn are (nearly) those of a left-to-right solver, and
every block of every row is trained in one forward pass (at twice the row length). What this
buys on our CPU benchmarks is measured in the README. Decoding spends `steps` reverse steps
per block.

Training row (length 2L): the noisy tokens, then a clean copy, both at rotary positions 0..L-1
(the noisy copy starts at the first generated position, so it is shorter by the shortest prompt):
    noisy q -> noisy k  iff block(k) == block(q)
    noisy q -> clean k  iff block(k) <  block(q)
    clean q -> clean k  iff block(k) <= block(q)
Decoding needs no copy: the row holds the clean blocks so far and the current (noisy) block,
with `block(k) <= block(q)`, which gives each query exactly the view it had in training.

With causal clean attention (`causal_blocks`: clean q -> clean k iff k <= q, the prompt seen
whole) and random block starts, a block may begin at any token, so decoding can slide
(`sample_sliding`): each call's block starts right after the run the last call wrote.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from dot.backbone import SampleResult
from sedd_backend.graph import Graph
from sedd_backend.model import previous_ids
from sedd_backend.noise import Noise
from sedd_backend.sampling import ParallelCommit, pc_sample

# (x_BL, sigma_B, attn_mask_B1LL) -> log-scores [B, L, V]
MaskedLogScore = Callable[[Tensor, Tensor, Tensor], Tensor]


def block_ids(fixed_BL: Tensor, size: int | Tensor, offset: Tensor | None = None) -> Tensor:
    """Block index of every position: 0 on the fixed prefix, then 1 + (target rank // size).

    `size` is one block length, or one per row ([B], for training on a mixture of sizes).
    `offset` ([B], 0 <= offset < size) shifts the boundaries of a row: its first block is
    `size - offset` tokens long, so blocks start anywhere, as they do in sliding decoding."""
    size_B1 = torch.as_tensor(size, device=fixed_BL.device).reshape(-1, 1)
    if (size_B1 < 1).any():
        raise ValueError(f"backbone.block_tokens must be >= 1, got {size_B1.flatten().tolist()}")
    rank_BL = (~fixed_BL).long().cumsum(1) - 1
    if offset is not None:
        rank_BL = rank_BL + offset.reshape(-1, 1)
    return torch.where(fixed_BL, 0, 1 + rank_BL.clamp(min=0) // size_B1)


def block_causal_mask(blocks_BL: Tensor) -> Tensor:
    """[B, 1, L, L]: query q may attend key k iff block(k) <= block(q)."""
    return (blocks_BL[:, None, :] <= blocks_BL[:, :, None])[:, None]


def training_mask(blocks_BL: Tensor, start: int = 0, clean_BL: Tensor | None = None) -> Tensor:
    """[B, 1, N+L, N+L] mask of the noisy copy of positions start.. (N of them), then the clean row.

    See the module docstring; positions before `start` are fixed in every row, so their noisy
    copy would only repeat the clean one and is left out. `clean_BL` (default `blocks_BL`) are
    the blocks the clean row attends by: `causal_blocks` makes it causal.
    """
    clean_BL = blocks_BL if clean_BL is None else clean_BL
    q_BN1, k_B1N = blocks_BL[:, start:, None], blocks_BL[:, None, start:]
    q_BL1, k_B1L = clean_BL[:, :, None], clean_BL[:, None, :]
    noisy_rows = torch.cat([q_BN1 == k_B1N, blocks_BL[:, None, :] < q_BN1], dim=2)
    clean_rows = torch.cat([torch.zeros_like(blocks_BL[:, :, None] == k_B1N), k_B1L <= q_BL1], dim=2)
    return torch.cat([noisy_rows, clean_rows], dim=1)[:, None]


def causal_blocks(fixed_BL: Tensor) -> Tensor:
    """Blocks of one token after the prompt: the clean row of `backbone.clean_attention=causal`.

    Why: with block-wise attention a clean token's keys depend on the later tokens of its
    block, so they are only final once the whole block is; with causal attention they depend
    on nothing after the token, so any decoded run of tokens can be cached as it stands and a
    block may start anywhere (`sample_sliding`). The clean row is then also an autoregressive
    model, which `backbone.next_token_loss` trains."""
    return block_ids(fixed_BL, 1)


def two_copy_model(model: Callable[..., Tensor], x0_BL: Tensor, fixed_BL: Tensor,
                   blocks_BL: Tensor, causal: bool = False,
                   clean_out: dict[str, Tensor] | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """`(xt_BL, sigma_B) -> log-scores [B, L, V]` of the noisy tokens, every block at once.

    Positions fixed in every row (the shortest prompt) get no noisy copy, so their log-scores
    come back as zeros; the loss never reads them. `causal`: the clean row attends causally
    (`causal_blocks`). With a `clean_out` dict, the clean row's outputs [B, L, V] are left in
    clean_out["out"] (for `backbone.next_token_loss`).
    """
    length = x0_BL.shape[1]
    start = int((~fixed_BL).long().argmax(1).min())  # first position some row generates
    mask = training_mask(blocks_BL, start, causal_blocks(fixed_BL) if causal else None)
    positions = torch.cat([torch.arange(start, length), torch.arange(length)]).to(x0_BL.device)

    same_block_BL = torch.cat([torch.zeros_like(blocks_BL[:, :1], dtype=torch.bool),
                               blocks_BL[:, 1:] == blocks_BL[:, :-1]], dim=1)
    mask_id = model.vocab_size - 1
    clean_prev_BL = previous_ids(x0_BL, mask_id)

    def log_score(xt_BL: Tensor, sigma_B: Tensor) -> Tensor:
        # a noisy position sees its own block noisy and the earlier ones clean, and so does
        # the embedding of the token before it (`model.previous_token`)
        noisy_prev_BN = torch.where(same_block_BL, previous_ids(xt_BL, mask_id),
                                    clean_prev_BL)[:, start:]
        out_BMV = model(torch.cat([xt_BL[:, start:], x0_BL], dim=1), sigma_B, mask, positions,
                        prev_BL=torch.cat([noisy_prev_BN, clean_prev_BL], dim=1))
        out_BNV = out_BMV[:, :length - start]
        if clean_out is not None:
            clean_out["out"] = out_BMV[:, length - start:]
        return torch.cat([out_BNV.new_zeros(out_BNV.shape[0], start, out_BNV.shape[2]), out_BNV], 1)
    return log_score


class PrefixCache:
    """Keys and values of the clean prefix at every layer, for cached block decoding.

    Exact only for a network that ignores sigma (`backbone.time_conditioning=false`): then a
    clean token's keys and values depend on nothing but the clean tokens of its own and
    earlier blocks, so they are computed once. A finished block is not run again on its own:
    it rides along (as `pending`) with the first denoising call of the next block, where its
    queries see the cache and itself and the new block's queries see all of it.
    Cache slots are per row: the prompt (padded to the longest), then `size` slots a block;
    `valid_BS` marks the slots that hold a real token. Every call also passes the id before
    each token (`model.previous_token`), since the tokens of a call are not a whole row.
    `causal` (`backbone.clean_attention=causal`): a riding-along block attends to itself
    causally, as the clean row did in training (its tokens are in position order).
    """

    def __init__(self, log_score: Callable[..., Tensor], n_layers: int, slots: int,
                 prompt_ids_BP: Tensor, prompt_valid_BP: Tensor, mask_id: int,
                 causal: bool = False):
        self.log_score, self.causal = log_score, causal
        self.clean_out: Tensor | None = None  # the riding-along tokens' outputs of the last call
        self.layers: list[dict] = [{"n": 0, "slots": slots} for _ in range(n_layers)]
        self.valid_BS = prompt_valid_BP[:, :0]
        positions_BP = torch.arange(prompt_ids_BP.shape[1], device=prompt_ids_BP.device)
        self.pending = (prompt_ids_BP, positions_BP.expand_as(prompt_ids_BP), prompt_valid_BP,
                        previous_ids(prompt_ids_BP, mask_id))

    def finish(self, ids_BN: Tensor, positions_BN: Tensor, valid_BN: Tensor,
               before_B: Tensor) -> None:
        """A decoded block (`before_B`: the id before it), to ride along with the next call."""
        self.pending = (ids_BN, positions_BN, valid_BN, torch.cat([before_B[:, None], ids_BN[:, :-1]], 1))

    def keep(self, rows_B: Tensor) -> None:
        """Drop the rows that left the batch (`rows_B` indexes the rows that stay)."""
        if len(rows_B) == len(self.valid_BS):
            return
        for kv in self.layers:
            if "k" in kv:
                kv["k"], kv["v"] = kv["k"][rows_B], kv["v"][rows_B]
        self.valid_BS = self.valid_BS[rows_B]
        self.pending = tuple(t[rows_B] for t in self.pending)

    def score_fn(self, positions_BN: Tensor, valid_BN: Tensor,
                 before_B: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """Scores of a block at `positions_BN` (False in `valid_BN` past the row's end) whose
        first token follows the id `before_B`."""
        def score(x_BN: Tensor, sigma_B: Tensor) -> Tensor:
            x_in, pos_in, n_pending = x_BN, positions_BN, 0
            prev_in = torch.cat([before_B[:, None], x_BN[:, :-1]], 1)
            keys_BK = torch.cat([self.valid_BS, valid_BN], 1)
            query_keys = keys_BK[:, None].expand(-1, x_BN.shape[1], -1)
            if self.pending is not None:
                ids_BP, pos_BP, valid_BP, prev_BP = self.pending
                n_pending = ids_BP.shape[1]
                x_in, pos_in = torch.cat([ids_BP, x_BN], 1), torch.cat([pos_BP, positions_BN], 1)
                prev_in = torch.cat([prev_BP, prev_in], 1)
                keys_BK = torch.cat([self.valid_BS, valid_BP, valid_BN], 1)
                clean_keys = torch.cat([self.valid_BS, valid_BP, torch.zeros_like(valid_BN)], 1)
                clean_keys_BPK = clean_keys[:, None].expand(-1, n_pending, -1)
                if self.causal and self.layers[0]["n"] > 0:  # (the prompt sees all of itself)
                    width = self.valid_BS.shape[1]
                    later_PP = torch.ones(n_pending, n_pending, dtype=torch.bool,
                                          device=x_BN.device).triu(1)
                    clean_keys_BPK = clean_keys_BPK.clone()
                    clean_keys_BPK[:, :, width:width + n_pending] &= ~later_PP
                query_keys = torch.cat([clean_keys_BPK,
                                        keys_BK[:, None].expand(-1, x_BN.shape[1], -1)], 1)
            out_BNV = self.log_score(x_in, sigma_B, query_keys[:, None], pos_in, self.layers,
                                     prev_in)
            self.clean_out = out_BNV[:, :n_pending]
            if n_pending:  # keep the clean block's keys and values, not the noisy block's
                for kv in self.layers:
                    kv["n"] += n_pending
                self.valid_BS = torch.cat([self.valid_BS, self.pending[2]], 1)
                self.pending = None
            return out_BNV[:, n_pending:].exp()
        return score


class BlockView(NamedTuple):
    """What one block's reverse process sees: per active row, the block's positions, which of
    them exist, their starting tokens and the score function over them."""

    positions: Tensor  # [R, N]
    valid: Tensor  # [R, N] the block's own positions inside the row
    start: Tensor  # [R, N] masks to generate, PAD elsewhere
    score: Callable[[Tensor, Tensor], Tensor]
    before: Tensor | None  # [R] the token before the block (cached path)


def _cached_view(cache: "PrefixCache", x_BL: Tensor, rows: Tensor, prompt_B: Tensor, block: int,
                 size: int, mask_id: int, pad_id: int) -> BlockView:
    """The block's own tokens only, attending to the cached clean prefix."""
    length = x_BL.shape[1]
    positions_RN = (prompt_B[rows, None] + (block - 1) * size
                    + torch.arange(size, device=x_BL.device))
    valid_RN = positions_RN < length
    start_RN = torch.where(valid_RN, mask_id, pad_id)
    before_R = x_BL[rows, (positions_RN[:, 0] - 1).clamp(0, length - 1)]
    return BlockView(positions_RN, valid_RN, start_RN,
                     cache.score_fn(positions_RN, valid_RN, before_R), before_R)


def _recomputed_view(log_score: Callable[..., Tensor], x_BL: Tensor, blocks_BL: Tensor,
                     clean_BL: Tensor, rows: Tensor, block: int, pad_id: int) -> BlockView:
    """The row up to the block's end, recomputed at every call; later positions are never
    attended, and later blocks (of rows with a shorter prefix) are neither masked nor made.
    The clean positions attend by `clean_BL` (the blocks, or `causal_blocks`)."""
    in_block_RL = blocks_BL[rows] == block
    end = int(in_block_RL.nonzero()[:, 1].max()) + 1 if in_block_RL.any() else 0
    valid_RN, view_RN = in_block_RL[:, :end], blocks_BL[rows, :end]
    positions_RN = torch.arange(end, device=x_BL.device).expand_as(view_RN)
    start_RN = torch.where(view_RN > block, pad_id, x_BL[rows, :end])
    clean_RN = clean_BL[rows, :end]
    first_R1 = clean_RN.masked_fill(~valid_RN, clean_RN.numel() + 1).amin(1, keepdim=True) \
        if end else clean_RN
    attn_mask = block_causal_mask(torch.where(valid_RN, first_R1, clean_RN))
    return BlockView(positions_RN, valid_RN, start_RN,
                     lambda x, sigma: log_score(x, sigma, attn_mask).exp(), None)


def sample_blocks(log_score: Callable[..., Tensor], graph: Graph, noise: Noise, ids_BL: Tensor,
                  fixed_BL: Tensor, size: int, steps: int, generator: torch.Generator, *,
                  eos_id: int, pad_id: int, predictor: str, denoise: bool,
                  record_chain: bool = False, skip_finished: bool = False,
                  reuse_unchanged: bool = False, commit: ParallelCommit | None = None,
                  n_layers: int | None = None, causal: bool = False) -> SampleResult:
    """Fill the non-fixed positions block by block, `steps` reverse steps (PC loop) per block.

    `log_score(x, sigma, attn_mask, positions, kv_cache)` is the network. With `n_layers`
    (its number of transformer blocks) the clean prefix is cached (`PrefixCache`), so a call
    processes the block's tokens only; otherwise each call reruns the whole prefix. Both give
    the same scores up to float rounding (tested). Rows whose block emitted EOS or PAD leave
    the batch (training targets hold PAD only after EOS, or after a DoT-MP thought); their
    remaining positions become PAD. `skip_finished`, `reuse_unchanged` and `commit` are
    `pc_sample`'s; with `skip_finished` and `commit` a block ends as soon as it is filled.
    `causal`: the model was trained with `backbone.clean_attention=causal`, so decoded blocks
    are read token by token too.
    `nfe` counts the network calls of the batch, `row_nfe` those each row needed. A recorded
    chain holds the whole row after every step, with not-yet-generated positions masked.
    """
    if not graph.absorb:
        raise ValueError("block diffusion (backbone.block_tokens) needs graph.type=absorb")
    mask_id = graph.dim - 1
    blocks_BL = block_ids(fixed_BL, size)
    prompt_B = fixed_BL.sum(1)
    x_BL = torch.where(fixed_BL, ids_BL, mask_id)
    active_B = torch.ones(ids_BL.shape[0], dtype=torch.bool, device=ids_BL.device)
    cache = None
    if n_layers is not None:
        width = int(prompt_B.max())
        prompt_valid = torch.arange(width, device=ids_BL.device)[None] < prompt_B[:, None]
        slots = width + int(blocks_BL.max()) * size
        cache = PrefixCache(log_score, n_layers, slots, ids_BL[:, :width], prompt_valid, mask_id,
                            causal)
    clean_BL = causal_blocks(fixed_BL) if causal else blocks_BL
    chain: list[Tensor] = []
    nfe = 0
    row_nfe_B = torch.zeros(ids_BL.shape[0], dtype=torch.long, device=ids_BL.device)
    for block in range(1, int(blocks_BL.max()) + 1):
        rows = active_B.nonzero().squeeze(1)
        view = (_cached_view(cache, x_BL, rows, prompt_B, block, size, mask_id, pad_id)
                if cache is not None else
                _recomputed_view(log_score, x_BL, blocks_BL, clean_BL, rows, block, pad_id))
        positions_RN, valid_RN, start_RN, score = view.positions, view.valid, view.start, view.score
        if not valid_RN.any():
            break
        where = (rows[:, None].expand_as(positions_RN)[valid_RN], positions_RN[valid_RN])
        result = pc_sample(
            score, graph, noise, tuple(start_RN.shape), steps, generator, predictor=predictor,
            denoise=denoise, project=lambda x: torch.where(valid_RN, x, start_RN),
            device=ids_BL.device, record_chain=record_chain, skip_finished=skip_finished,
            reuse_unchanged=reuse_unchanged, commit=commit)
        nfe += result.nfe
        row_nfe_B[rows] += result.row_nfe
        for state_RN in result.chain or []:
            chain.append(x_BL.index_put(where, state_RN[valid_RN]))
        x_BL[where] = result.ids[valid_RN]
        ended_RN = (result.ids == eos_id) | (result.ids == pad_id)
        active_B[rows] = ~(ended_RN & valid_RN).any(1)
        if cache is not None:
            cache.finish(result.ids, positions_RN, valid_RN, view.before)
            cache.keep(active_B[rows].nonzero().squeeze(1))
        if not active_B.any():
            break
    x_BL = torch.where(x_BL == mask_id, pad_id, x_BL)
    return SampleResult(x_BL, nfe, chain if record_chain else None, row_nfe_B)


def sample_sliding(log_score: Callable[..., Tensor], commit: ParallelCommit, ids_BL: Tensor,
                   fixed_BL: Tensor, size: int, n_layers: int, *, mask_id: int, eos_id: int,
                   pad_id: int, record_chain: bool = False, drafts: bool = False,
                   draft_threshold: float = 0.0) -> SampleResult:
    """One network call per block, each block starting at the row's first unwritten token.

    A call masks the `size` positions after what is written, and writes the longest run of
    them that `commit` finds sure in reading order (`ParallelCommit.sure_run`), and at least
    the first. The next block starts right after the run, so no call is spent on the tail of a
    fixed block, and a chain costs one call per unsure point. The written run rides along with
    the next call into the prefix cache. Exact (the view the model had in training) for a
    sigma-blind network of the absorbing graph trained with `backbone.clean_attention=causal`
    and `backbone.random_block_starts`.

    `drafts` (draft and verify, for a model trained with `backbone.next_token_loss`): the
    unsure rest of a window is not thrown away but rides along with the next call as a draft,
    clean and causal, and the next block is masked after it. The clean copy's next-token
    outputs check the draft in that call: the longest prefix of it that matches their argmax
    is written; at the first mismatch the next-token guess is written instead and the block
    (which saw the wrong draft) is dropped. So a call can write a whole window plus the part
    of the last one it was unsure of, and each written draft token is one the mask block and
    the next-token head agree on. `draft_threshold`: the draft stops before the first token
    whose probability is below it (the block is masked from there), since a likely rejected
    draft wastes the block after it.
    """
    length, device = ids_BL.shape[1], ids_BL.device
    prompt_B = fixed_BL.sum(1)
    width = int(prompt_B.max())
    prompt_valid = torch.arange(width, device=device)[None] < prompt_B[:, None]
    cache = PrefixCache(log_score, n_layers, width + 2 * size, ids_BL[:, :width], prompt_valid,
                        mask_id, causal=True)
    # the written tokens of every row, then (from next_B on) its draft, masks elsewhere
    x_BL = torch.where(fixed_BL, ids_BL, mask_id)
    columns_L = torch.arange(length, device=device)
    next_B = prompt_B.clone()  # first unwritten position of every row
    cached_B = prompt_B.clone()  # first position not in the cache (the pending run starts here)
    n_draft_B = torch.zeros_like(next_B)
    active_B = next_B < length
    row_nfe_B = torch.zeros_like(next_B)
    chain: list[Tensor] = []
    nfe = 0
    offsets = torch.arange(size, device=device)

    def row_end(ids: Tensor) -> Tensor:
        return (ids == eos_id) | (ids == pad_id)

    while active_B.any():
        rows = active_B.nonzero().squeeze(1)
        next_R, n_draft_R, known_RL = next_B[rows], n_draft_B[rows], x_BL[rows]
        positions_RN = (next_R + n_draft_R)[:, None] + offsets
        valid_RN = positions_RN < length
        before_R = known_RL.gather(1, positions_RN[:, :1] - 1).squeeze(1)
        score_RNV = cache.score_fn(positions_RN, valid_RN, before_R)(
            torch.where(valid_RN, mask_id, pad_id), torch.ones(len(rows), device=device))
        nfe += 1
        row_nfe_B[rows] += 1

        # the draft: keep its longest prefix that the next-token head agrees with
        accepted_R = torch.zeros_like(next_R)
        ended_R = torch.zeros_like(next_R, dtype=torch.bool)
        if n_draft_R.any():
            head_RM = cache.clean_out[..., :mask_id].argmax(-1)  # guess for position + 1
            k, width_m = int(n_draft_R.max()), cache.clean_out.shape[1]
            slot_RK = (next_R - 1 - cached_B[rows])[:, None] + offsets[:k]
            guess_RK = head_RM.gather(1, slot_RK.clamp(max=width_m - 1))
            draft_RK = known_RL.gather(1, (next_R[:, None] + offsets[:k]).clamp(max=length - 1))
            in_draft_RK = offsets[:k] < n_draft_R[:, None]
            accepted_R = ((guess_RK == draft_RK) & in_draft_RK).long().cumprod(1).sum(1)
            kept_RM = (torch.arange(width_m, device=device)
                       < (next_R + accepted_R - cached_B[rows])[:, None])
            cache.valid_BS[:, -width_m:] &= kept_RM  # the rejected draft is forgotten
            ended_R = (row_end(draft_RK) & (offsets[:k] < accepted_R[:, None])).any(1)
            fix_R = accepted_R < n_draft_R  # the head's guess replaces the first wrong token
            guess_R = guess_RK.gather(1, accepted_R.clamp(max=k - 1)[:, None]).squeeze(1)
            x_BL[rows[fix_R], (next_R + accepted_R)[fix_R]] = guess_R[fix_R]
            ended_R |= fix_R & row_end(guess_R)
        whole_R = accepted_R == n_draft_R  # the block saw a right draft: it may be written

        # the block: its sure run, at least its first token
        clean_RNV = score_RNV[..., :mask_id]  # absorbing graph: p(clean token) ~ the scores
        top_RN2, token_RN2 = (clean_RNV / clean_RNV.sum(-1, keepdim=True)).topk(2, dim=-1)
        token_RN = token_RN2[..., 0]
        run_RN = commit.sure_run(valid_RN, top_RN2[..., 0], top_RN2[..., 1]) & valid_RN
        run_RN[:, 0] = valid_RN[:, 0]  # (a draft may have reached the row's end)
        run_RN &= (whole_R & ~ended_R)[:, None]
        end_RN = run_RN & row_end(token_RN)
        run_RN &= end_RN.long().cumsum(1) - end_RN.long() == 0  # nothing after the row's end
        written = (rows[:, None].expand_as(positions_RN)[run_RN], positions_RN[run_RN])
        x_BL[written] = token_RN[run_RN]
        ended_R |= end_RN.any(1)

        # what rides along next: the new written tokens, then (with drafts) the block's rest
        cached_B[rows] = next_R + accepted_R
        next_B[rows] = torch.where(whole_R, positions_RN[:, 0] + run_RN.sum(1),
                                   next_R + accepted_R + 1)
        x_BL[rows] = torch.where(columns_L >= next_B[rows, None], mask_id, x_BL[rows])
        if drafts:
            rest_RN = valid_RN & ~run_RN & (whole_R & ~ended_R)[:, None]
            rest_RN &= (top_RN2[..., 0] < draft_threshold).long().cumsum(1) == 0
            stop_RN = rest_RN & row_end(token_RN)
            rest_RN &= stop_RN.long().cumsum(1) - stop_RN.long() == 0  # up to the row's end
            held = (rows[:, None].expand_as(positions_RN)[rest_RN], positions_RN[rest_RN])
            x_BL[held] = token_RN[rest_RN]
            n_draft_B[rows] = rest_RN.sum(1)
        if record_chain:  # the written tokens only
            chain.append(torch.where(columns_L < next_B[:, None], x_BL, mask_id))
        active_B[rows] = ~ended_R & (next_B[rows] < length)
        n_draft_B[rows] *= active_B[rows]
        new_R = next_B[rows] - cached_B[rows] + n_draft_B[rows]  # padded to the longest
        ride_RM = cached_B[rows, None] + torch.arange(int(new_R.max()), device=device)
        cache.finish(x_BL[rows].gather(1, ride_RM.clamp(max=length - 1)), ride_RM,
                     ride_RM < (cached_B[rows] + new_R)[:, None],
                     x_BL[rows, cached_B[rows] - 1])
        cache.keep(active_B[rows].nonzero().squeeze(1))
    x_BL = torch.where(x_BL == mask_id, pad_id, x_BL)
    return SampleResult(x_BL, nfe, chain if record_chain else None, row_nfe_B)
