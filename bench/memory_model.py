"""Per-GPU memory and step-time model of the paper recipes under each training.strategy.

    python bench/memory_model.py                       # Plaid-1B, sedd-small, sedd-medium, N = 1, 8, 16
    python bench/memory_model.py --gpus 4 8 --tflops 300 --bandwidth 400

Parameters are counted from our own model classes on the meta device (nothing is allocated).
Everything else is arithmetic, stated here so it can be checked (docs/SCALING.md):

* state, fp32 master weights: weights 4P, gradients 4P, Adam moments 8P, EMA 4P bytes;
  DDP adds its gradient buckets (4P). zero divides the Adam moments by N; fsdp divides all
  four by N and adds the unsharded working set: the root module (embeddings, output layer)
  plus two prefetched blocks, in bf16 (2 bytes) with fp32 gradients (4 bytes) before the
  reduce-scatter.
* activations per token (bf16 autocast, SDPA attention that stores no L x L scores):
  34·d bytes per block (Korthikanti et al. 2022's count without the score term) and
  16·V bytes for the fp32 logits and the loss's V-sized temporaries; with
  training.activation_checkpointing only each block's bf16 input (2·d) is kept, plus one
  block recomputed at a time.
* step time: 6·P FLOPs per token (forward + backward; Plaid adds a no-grad self-conditioning
  pass on a quarter of the rows, 2·P/4) at an assumed sustained --tflops per GPU, and the
  gradient / parameter traffic of each strategy over --bandwidth GB/s per GPU, not overlapped
  (an upper bound: DDP and FSDP overlap it with compute).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from _common import print_table

GB = 1e9


@dataclass(frozen=True)
class Recipe:
    name: str
    params: int
    root_params: int  # outside the transformer blocks (FSDP's root unit)
    block_params: int
    hidden: int
    n_blocks: int
    vocab: int
    tokens_per_gpu_8: int  # micro-batch x seq_len per GPU in the paper's 8-GPU-equivalent run
    global_tokens: int  # tokens per optimizer step (global batch x seq_len)
    n_iters: int
    selfcond: bool


def count(model: torch.nn.Module) -> tuple[int, int, int]:
    """(all, outside blocks, one block) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    blocks = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "blocks"][0]
    one = sum(p.numel() for p in blocks[0].parameters())
    return total, total - one * len(blocks), one


def recipes() -> list[Recipe]:
    from plaid.weights import Plaid
    from sedd_backend.model import DDiT

    out = []
    with torch.device("meta"):
        plaid = Plaid(32768, 16, 2048, 24, 32)
        out.append(Recipe("plaid1b", *count(plaid), 2048, 24, 32768, 16 * 256, 128 * 256,
                          120_000, True))  # run_train.sh plaid-gsm8k: 8 GPUs x 16 rows x 256
        for name, d, n, heads in (("sedd-small", 768, 12, 12), ("sedd-medium", 1024, 24, 16)):
            sedd = DDiT(50258, d, 128, heads, n)
            out.append(Recipe(name, *count(sedd), d, n, 50258, 64 * 128, 256 * 128, 120_000,
                              False))  # run_train.sh sedd-gsm8k: 4 GPUs x 64 rows x 128
    return out


def state_bytes(r: Recipe, strategy: str, n: int) -> float:
    p = r.params
    if strategy == "ddp":
        return 20 * p + (4 * p if n > 1 else 0)
    if strategy == "zero":
        return 12 * p + 8 * p / n + 4 * p
    working = (r.root_params + 2 * r.block_params) * (2 + 4)
    return 20 * p / n + working


def activation_bytes(r: Recipe, tokens: int, checkpointing: bool) -> float:
    per_block = 2 * r.hidden if checkpointing else 34 * r.hidden
    extra = 34 * r.hidden if checkpointing else 0  # the block being recomputed
    return tokens * (per_block * r.n_blocks + extra + 16 * r.vocab)


def comm_bytes(r: Recipe, strategy: str, n: int) -> float:
    ring = (n - 1) / n
    if strategy == "ddp":
        return 2 * ring * 4 * r.params  # all-reduce of fp32 gradients
    if strategy == "zero":
        return 2 * ring * 4 * r.params + ring * 4 * r.params  # + broadcast of updated shards
    return ring * (2 + 2 + 4) * r.params  # all-gather bf16 twice, reduce-scatter fp32


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--tflops", type=float, default=300.0,
                   help="assumed sustained bf16 TFLOP/s per GPU (an assumption, not measured)")
    p.add_argument("--bandwidth", type=float, default=200.0,
                   help="assumed GB/s per GPU for collectives (NVLink ~400, 2 nodes on IB ~25)")
    args = p.parse_args(argv)
    rows = []
    for r in recipes():
        flops = (6 + (0.5 if r.selfcond else 0)) * r.params * r.global_tokens
        for n in args.gpus:
            tokens = r.global_tokens // n  # the global batch stays fixed; accum if it does not fit
            for strategy in (("ddp",) if n == 1 else ("ddp", "zero", "fsdp")):
                state = state_bytes(r, strategy, n)
                acts = activation_bytes(r, tokens, False)
                acts_ckpt = activation_bytes(r, tokens, True)
                compute = flops / n / (args.tflops * 1e12)
                comm = comm_bytes(r, strategy, n) / (args.bandwidth * GB) if n > 1 else 0.0
                step = compute + comm
                def fits(total: float) -> str:
                    return "/".join(str(c) for c in (24, 40, 80) if total <= c * GB) or "-"
                rows.append(dict(model=r.name, params_m=r.params / 1e6, gpus=n,
                                 strategy="none" if n == 1 else strategy,
                                 tokens_per_gpu=tokens, state_gb=state / GB,
                                 act_gb=acts / GB, act_ckpt_gb=acts_ckpt / GB,
                                 total_gb=(state + acts) / GB, fits_gb=fits(state + acts),
                                 total_ckpt_gb=(state + acts_ckpt) / GB,
                                 fits_ckpt_gb=fits(state + acts_ckpt), step_s=step,
                                 hours=step * r.n_iters / 3600))
    print(f"memory and time model: {args.tflops:g} TFLOP/s and {args.bandwidth:g} GB/s per GPU "
          "(assumptions); the global batch of the paper recipe at every N")
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
