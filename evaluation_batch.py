"""Decode a test split with a trained DoT model and score it.

    python evaluation_batch.py                                    # latest run in exp_local/
    python evaluation_batch.py --weights_path RUN --sampling_timesteps 8
    python evaluation_batch.py --weights_path RUN --runs 5 --apply_sc       # SC@1..5
    python evaluation_batch.py --weights_path RUN --per_thought --limit 200  # DoT-MP, per pass
    python evaluation_batch.py --weights_path plaid1b_weights --dataset gsm8k --fix_src --digit \\
        --dpm_solver --sampling_timesteps 8                       # official Plaid weights
    torchrun --nproc_per_node 8 evaluation_batch.py --weights_path RUN   # batches over 8 GPUs

Writes `<run>/eval/<name>.jsonl` (one record per example and run) and `<name>.summary.json`,
and prints accuracy, SC@k, network evaluations and examples/s. Under torchrun every process
decodes its share of the batches and process 0 writes the files one process would write.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from dot import distributed
from dot.backbone import SamplerFlag, backbone_class, backbone_names
from dot.checkpoint import HUB_ID, CheckpointError
from dot.eval_request import EvalRequest, run_request
from dot.tasks import get_task

# a flag's `check` -> (test, what the message says a value must be)
CHECKS = {"count": (lambda v: v >= 1, ">= 1"), "positive": (lambda v: v > 0, "> 0"),
          "probability": (lambda v: 0 < v <= 1, "in (0, 1]")}


def sampler_flags() -> dict[str, list[tuple[str, SamplerFlag]]]:
    """Every registered backbone's sampler flags by name: [(backbone, flag), ...]."""
    flags: dict[str, list[tuple[str, SamplerFlag]]] = {}
    for name in backbone_names():
        for flag in backbone_class(name).sampler_flags:
            flags.setdefault(flag.name, []).append((name, flag))
    return flags


def add_sampler_flags(p: argparse.ArgumentParser,
                      flags: dict[str, list[tuple[str, SamplerFlag]]]) -> None:
    g = p.add_argument_group("sampler (backbone-specific; a flag the backbone lacks is an error)")
    for name, owners in flags.items():
        flag = owners[0][1]
        text = "; ".join(f"{owner}: {f.help}" for owner, f in owners)
        if flag.kind == "switch":
            g.add_argument(f"--{name}", action="store_true", default=None, help=text)
        elif flag.kind == "bool":
            g.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None,
                           help=text)
        else:
            g.add_argument(f"--{name}", type=flag.type, choices=flag.choices, help=text)


def sampler_options(args: argparse.Namespace,
                    flags: dict[str, list[tuple[str, SamplerFlag]]]) -> dict[str, Any]:
    """The sampler options the user gave (only those: the run's config fills the rest)."""
    options: dict[str, Any] = {}
    for name, owners in flags.items():
        value, flag = getattr(args, name), owners[0][1]
        if value is None:
            continue
        if flag.sets:
            options.update(flag.sets if value else ())
        else:
            options[name] = value
    return options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights_path", help="run folder, its checkpoints/ folder (newest "
                   "snapshot) or a checkpoint file in it, a Plaid or SEDD weights folder, or a hub "
                   "id (default: the most recent run under exp_local/)")
    p.add_argument("--dataset", help="task (default: the run's data.task)")
    p.add_argument("--split", default="test", choices=["test", "valid"])
    p.add_argument("--data_path", help="a data file to decode instead of the task's split")
    p.add_argument("--sampling_timesteps", type=int, help="denoising steps T (default: config)")
    p.add_argument("--cot", action="store_true", default=None, help="DoT-MP: one thought per pass")
    p.add_argument("--cot_steps", type=int, help="maximum passes with --cot (default: config, 12)")
    p.add_argument("--runs", type=int, default=1, help="seeded runs (seed, seed+1, ...)")
    p.add_argument("--apply_sc", action="store_true", help="report self-consistency over runs")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--limit", type=int, help="decode only the first N examples")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--seq_len", type=int, help="row length (default: the run's)")
    p.add_argument("--output", help="output path without suffix (default: <run>/eval/<name>)")
    p.add_argument("--save_chain", action="store_true", help="record every denoising state")
    p.add_argument("--per_thought", action="store_true", help="DoT-MP: decode each thought from "
                   "the gold earlier ones and report the exact accuracy per thought "
                   "(writes <name>-per_thought.json)")
    p.add_argument("--device", default="auto")
    p.add_argument("--digit", action="store_true", help="digit-split tokenization (Plaid weights)")
    p.add_argument("--no_progress", action="store_true")
    flags = sampler_flags()
    add_sampler_flags(p, flags)
    p.add_argument("--tokenizer", help="tokenizer of raw weights (default: owt2 for Plaid, "
                   "gpt2 for SEDD; run folders name their own)")
    args = p.parse_args(argv)
    args.options = sampler_options(args, flags)
    # checked before any model is loaded, so a slip costs no load time (argparse exits 2)
    for flag in ("sampling_timesteps", "runs", "batch_size", "limit", "cot_steps", "seq_len"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag} must be >= 1, got {value}")
    for name, owners in flags.items():
        value, check = getattr(args, name), owners[0][1].check
        if value is not None and check and not CHECKS[check][0](value):
            p.error(f"--{name} must be {CHECKS[check][1]}, got {value}")
    if args.dataset is not None:
        try:
            get_task(args.dataset)
        except ValueError as err:
            p.error(f"--dataset: {err}")
    if args.data_path is not None and not Path(args.data_path).is_file():
        p.error(f"--data_path {args.data_path}: no such file")
    if args.weights_path is not None and not Path(args.weights_path).exists() and \
            not HUB_ID.match(args.weights_path):
        p.error(f"--weights_path {args.weights_path}: no such file or folder (nor a hub id "
                "owner/name)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Errors of the inputs (weights, data, flags the backbone refuses) are one line on
    stderr and exit code 2; DOT_DEBUG=1 shows the traceback."""
    args = parse_args(argv)
    ctx = distributed.setup(args.device)
    try:
        request = EvalRequest(
            weights_path=args.weights_path, options=args.options, dataset=args.dataset,
            split=args.split, data_path=args.data_path, sampling_timesteps=args.sampling_timesteps,
            cot=args.cot, cot_steps=args.cot_steps, runs=args.runs, batch_size=args.batch_size,
            limit=args.limit, seed=args.seed, seq_len=args.seq_len, output=args.output,
            save_chain=args.save_chain, per_thought=args.per_thought, digit=args.digit,
            tokenizer=args.tokenizer, progress=not args.no_progress)
        return run_request(request, ctx.device, ctx.is_main)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        if os.environ.get("DOT_DEBUG"):
            raise
        if ctx.is_main:
            print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(main())
