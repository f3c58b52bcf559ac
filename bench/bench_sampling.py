"""Sampling speed of every backbone and sampler vs denoising steps T and batch size.

    python bench/bench_sampling.py                                   # everything (minutes on CPU)
    python bench/bench_sampling.py --backbones sedd --steps 1 8 64 --batch-sizes 1 --repeats 1

Models are the tiny config with RANDOM weights: sampling cost does not depend on what the
weights learned, except where a sampler stops early (the AR baseline at EOS, SEDD's
skip_finished once nothing is masked), so those rows show the NFE actually spent. Block
diffusion would stop at the first EOS or PAD, which random weights emit at once, so those two
tokens are ruled out and every row is decoded to full length.

Prompts are real 3x3 multiplication prompts (all the same length), collated the way
evaluation does, into rows of the length training would pick for the task. Each timing is the
median of `--repeats` calls after one warm-up call. Where a backbone has an optional fast path
(SEDD `sampling.skip_finished`; for block diffusion also the prefix cache `sampling.kv_cache`
and `sampling.reuse_unchanged`) the fast row's `speedup` is straightforward / fast time at
the same (sampler, T, batch), and `same_ids` checks the fast path changed no token.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import open_dict

from _common import ALL_BACKBONES, RESULTS, machine_line, pick_device, print_table, write_csv
from dot.backbone import Backbone, backbone_class
from dot.collate import collate_prompts
from dot.config import compose_config
from dot.data import load_split
from dot.examples import tokenize
from dot.tasks import get_task
from dot.tokenization import load_tokenizer

COLUMNS = ("backbone", "sampler", "T", "batch", "seq_len", "nfe", "seconds", "examples_per_s",
           "ms_per_nfe", "speedup", "same_ids")


@dataclass(frozen=True)
class Sampler:
    """One sampler setting: options passed to `Backbone.sample`, plus config switches."""

    backbone: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    sampling_cfg: dict[str, Any] = field(default_factory=dict)  # cfg.sampling overrides
    baseline: str | None = None  # the straightforward sampler this fast path speeds up
    uses_steps: bool = True


def samplers_for(backbone: str) -> list[Sampler]:
    """Every sampler the backbone offers (SEDD predictors are read from its registry)."""
    if backbone == "sedd":
        from sedd_backend.sampling import PREDICTORS
        out = []
        for name in ("analytic", "euler", "confidence"):
            if name in PREDICTORS:
                out.append(Sampler("sedd", name, {"predictor": name}))
                out.append(Sampler("sedd", f"{name}+skip_finished", {"predictor": name},
                                   {"skip_finished": True}, baseline=name))
        return out
    if backbone == "sedd_block":  # T = reverse steps per block
        plain = {"kv_cache": False, "reuse_unchanged": False, "skip_finished": False}
        conf = {"predictor": "confidence"}
        return [Sampler("sedd_block", "confidence", conf, plain),
                Sampler("sedd_block", "confidence+kv_cache", conf, {**plain, "kv_cache": True},
                        baseline="confidence"),
                Sampler("sedd_block", "confidence+kv_cache+reuse+skip", conf,
                        {"kv_cache": True, "reuse_unchanged": True, "skip_finished": True},
                        baseline="confidence"),
                Sampler("sedd_block", "analytic+kv_cache+skip", {"predictor": "analytic"},
                        {"kv_cache": True, "skip_finished": True})]
    if backbone == "plaid":
        return [Sampler("plaid", "ancestral", {"predictor": "ancestral"}),
                Sampler("plaid", "dpm_solver", {"predictor": "dpm_solver"})]
    if backbone == "ar":
        return [Sampler("ar", "greedy", uses_steps=False)]
    raise ValueError(f"unknown backbone {backbone!r}; choose from {ALL_BACKBONES}")


def build_backbone(name: str, tokenizer: str, device: torch.device) -> Backbone:
    """The tiny model of `configs/model/tiny.yaml`, random weights, eval mode."""
    cfg = compose_config([f"backbone={name}", "model=tiny", f"data.tokenizer={tokenizer}"])
    torch.manual_seed(0)
    tok = load_tokenizer(tokenizer)
    backbone = backbone_class(cfg.backbone.name).from_config(cfg, tok)
    if cfg.backbone.get("block_tokens"):
        # block decoding stops a row at EOS or PAD, which random weights emit at once; rule
        # them out so every row is decoded to full length (the AR baseline's case too)
        with torch.no_grad():
            backbone.model.output_layer.linear.bias[[tok.eos_id, tok.pad_id]] = -1e4
    backbone.model.to(device).eval()
    return backbone


def prompt_batch(tokenizer: str, task_name: str,
                 batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """[B, seq_len] ids and fixed mask of the task's first test prompts (cycled to B rows)."""
    tok, task = load_tokenizer(tokenizer), get_task(task_name)
    examples, _ = load_split(task, "test")
    tokenized = [tokenize(e, task, tok) for e in examples[:max(batch_size, 64)]]
    longest = max(len(t.prompt) + len(t.target) + 2 for t in tokenized)
    seq_len = -(-longest // 8) * 8  # as dot.train.resolve_seq_len
    prompts = [list(tokenized[i % len(tokenized)].prompt) + [tok.sep_id] for i in range(batch_size)]
    ids, fixed = collate_prompts(prompts, seq_len, tok.pad_id)
    return ids, fixed, seq_len


def time_sample(backbone: Backbone, sampler: Sampler, ids: torch.Tensor, fixed: torch.Tensor,
                steps: int, repeats: int, seed: int) -> tuple[float, int, torch.Tensor]:
    """(median seconds per call, NFE of the call, ids of the last call)."""
    saved = {k: backbone.cfg.sampling.get(k) for k in sampler.sampling_cfg}
    with open_dict(backbone.cfg):
        backbone.cfg.sampling.update(sampler.sampling_cfg)
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    try:
        times = []
        for _ in range(repeats):
            generator = torch.Generator(device=ids.device).manual_seed(seed)
            sync()
            start = time.perf_counter()
            result = backbone.sample(ids, fixed, steps, generator, **sampler.options)
            sync()
            times.append(time.perf_counter() - start)
    finally:
        with open_dict(backbone.cfg):
            backbone.cfg.sampling.update(saved)
    return statistics.median(times), result.nfe, result.ids


def run(backbones: list[str], steps: list[int], batch_sizes: list[int], repeats: int,
        tokenizer: str, task: str, device: torch.device, seed: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in backbones:
        backbone = build_backbone(name, tokenizer, device)
        n_params = sum(p.numel() for p in backbone.model.parameters())
        print(f"# {name}: tiny config, {n_params / 1e6:.2f}M parameters, random weights")
        for batch in batch_sizes:
            ids, fixed, seq_len = prompt_batch(tokenizer, task, batch)
            ids, fixed = ids.to(device), fixed.to(device)
            backbone.sample(ids, fixed, 2, torch.Generator(device=device).manual_seed(seed))  # warm-up
            straight: dict[tuple[str, int], tuple[float, torch.Tensor]] = {}
            for sampler in samplers_for(name):
                for T in (steps if sampler.uses_steps else [steps[0]]):
                    seconds, nfe, out = time_sample(backbone, sampler, ids, fixed, T, repeats, seed)
                    row = dict(backbone=name, sampler=sampler.name,
                               T=T if sampler.uses_steps else "-", batch=batch, seq_len=seq_len,
                               nfe=nfe, seconds=seconds, examples_per_s=batch / seconds,
                               ms_per_nfe=1000 * seconds / max(nfe, 1))
                    if sampler.baseline is None:
                        straight[sampler.name, T] = (seconds, out)
                    elif (sampler.baseline, T) in straight:
                        base_seconds, base_ids = straight[sampler.baseline, T]
                        row.update(speedup=base_seconds / seconds,
                                   same_ids=bool(torch.equal(base_ids, out)))
                    rows.append(row)
                    print(f"  {sampler.name:>22} T={row['T']:<3} B={batch:<3} "
                          f"{row['examples_per_s']:9.2f} ex/s  nfe {nfe}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=list(ALL_BACKBONES), choices=ALL_BACKBONES)
    p.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    p.add_argument("--repeats", type=int, default=3, help="timed calls per setting (median)")
    p.add_argument("--tokenizer", default="char", choices=["char", "symbols"])
    p.add_argument("--task", default="mult3x3")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "sampling.csv"))
    args = p.parse_args(argv)
    device = pick_device(args.device)
    print(f"sampling benchmark: {machine_line(device)}; task {args.task}, "
          f"tokenizer {args.tokenizer}; RANDOM weights (speed only, outputs are noise)")
    rows = run(args.backbones, args.steps, args.batch_sizes, args.repeats, args.tokenizer,
               args.task, device, args.seed)
    print()
    print_table(rows, COLUMNS)
    print(f"\nwrote {write_csv(args.out, rows, COLUMNS)}")


if __name__ == "__main__":
    main()
