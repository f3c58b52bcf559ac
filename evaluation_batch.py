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

import torch

from dot import distributed
from dot.checkpoint import HUB_ID, CheckpointError, latest_run, run_checkpoint, snapshot_step
from dot.data import load_eval_split
from dot.decoding import Decoding
from dot.evaluate import evaluate, format_summary, result_name
from dot.loading import load_for_eval
from dot.report.per_thought import format_per_thought, per_thought_accuracy, write_per_thought
from dot.tasks import get_task

# Sampler flags -> backbone option names; only flags the user gave are passed on, and a
# backbone that does not know one rejects it by name.
SAMPLER_FLAGS = ("predictor", "noise_removal", "threshold", "margin", "block_tokens", "sliding",
                 "score_temp", "dpm_order", "logit_sample", "logit_temp", "official_dpm",
                 "official_grid", "fix_src")


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
    g = p.add_argument_group("sampler (backbone-specific; a flag the backbone lacks is an error)")
    g.add_argument("--predictor", help="SEDD: analytic | euler | confidence | left_to_right; "
                   "Plaid: ancestral | dpm_solver")
    g.add_argument("--noise_removal", action=argparse.BooleanOptionalAction, default=None,
                   help="SEDD final denoising step")
    g.add_argument("--threshold", type=float, help="SEDD confidence predictors: reveal every "
                   "masked position with probability >= this in the same call (parallel decoding)")
    g.add_argument("--margin", type=float, help="SEDD confidence predictors: reveal every masked "
                   "position whose top-1 beats the top-2 probability by >= this (early commit)")
    g.add_argument("--block_tokens", type=int, help="SEDD block diffusion: decode in blocks of "
                   "this many tokens (default: the run's backbone.block_tokens)")
    g.add_argument("--sliding", action=argparse.BooleanOptionalAction, default=None,
                   help="SEDD block models with causal clean attention: one call a block, each "
                   "block starting after the run the last call wrote (default: the run's "
                   "sampling.sliding)")
    g.add_argument("--score_temp", type=float, help="Plaid score temperature")
    g.add_argument("--dpm_solver", action="store_true", help="Plaid: DPM-Solver++ "
                   "(= --predictor dpm_solver)")
    g.add_argument("--dpm_order", type=int, choices=[1, 2], help="DPM-Solver++ order")
    g.add_argument("--logit_sample", action="store_true", default=None, help="Plaid: sample tokens")
    g.add_argument("--logit_temp", type=float, help="Plaid: temperature of --logit_sample")
    g.add_argument("--official_dpm", action="store_true", default=None,
                   help="Plaid: reproduce the official DoT DPM-Solver (bugs included)")
    g.add_argument("--official_grid", action="store_true", default=None,
                   help="Plaid: reproduce the official ancestral time grid")
    g.add_argument("--fix_src", action="store_true", default=None,
                   help="Plaid: condition on the clean source (always on in our sampler; "
                   "accepted for the official command lines)")
    p.add_argument("--tokenizer", help="tokenizer of raw weights (default: owt2 for Plaid, "
                   "gpt2 for SEDD; run folders name their own)")
    args = p.parse_args(argv)
    # checked before any model is loaded, so a slip costs no load time (argparse exits 2)
    for flag in ("sampling_timesteps", "runs", "batch_size", "limit", "cot_steps", "seq_len",
                 "block_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag} must be >= 1, got {value}")
    for flag in ("threshold", "margin"):
        value = getattr(args, flag)
        if value is not None and not 0 < value <= 1:
            p.error(f"--{flag} must be in (0, 1], got {value}")
    for flag in ("score_temp", "logit_temp"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            p.error(f"--{flag} must be > 0, got {value}")
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
        return run(args, ctx.device, ctx.is_main)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        if os.environ.get("DOT_DEBUG"):
            raise
        if ctx.is_main:
            print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()


def run(args: argparse.Namespace, device: torch.device, is_main: bool) -> int:
    """Evaluate as `args` say; only the main process prints and writes."""
    def print_main(*a, **k) -> None:
        if is_main:
            print(*a, **k)

    options = {k: getattr(args, k) for k in SAMPLER_FLAGS if getattr(args, k) is not None}
    if args.dpm_solver:
        options["predictor"] = "dpm_solver"
    # Without --weights_path: the newest run whose backbone takes the sampler flags given.
    weights = args.weights_path or str(latest_run(accepting=options))
    found = run_checkpoint(weights)
    backbone, cfg = load_for_eval(weights, device, digit=args.digit, dataset=args.dataset,
                                  tokenizer=args.tokenizer)
    backbone.check_sample_options(options)

    task = get_task(args.dataset or cfg.data.task)
    multipass = cfg.data.multipass if args.cot is None else args.cot
    steps = args.sampling_timesteps or cfg.sampling.steps
    examples, source = load_eval_split(task, args.split, args.data_path or cfg.data.get(args.split),
                                       cfg.data.get("valid"))
    limited = bool(args.limit) and args.limit < len(examples)
    examples = examples[: args.limit] if limited else examples
    # the data in the name when it is not the run's own split; the step for an older snapshot
    data = Path(args.data_path).stem if args.data_path else (
        task.name if task.name != cfg.data.task else None)
    step = snapshot_step(found[1]) if found else None
    name = result_name(args.split, steps, multipass, options, args.runs,
                       first=len(examples) if limited else None, data=data) + (
        f"-step{step}" if step is not None else "")
    run_dir = found[0] if found else Path(weights)
    out = Path(args.output) if args.output else run_dir / "eval" / name
    if not run_dir.is_dir() and not args.output:
        out = Path("generated_output") / task.name / name
    print_main(f"{backbone.name} from {weights}; {len(examples)} examples from {source}; T={steps}")
    if args.per_thought:
        if distributed.is_initialized():
            print_main("error: --per_thought runs in one process (start it without torchrun)",
                       file=sys.stderr)
            return 2
        if not multipass:
            print_main("error: --per_thought decodes DoT-MP passes; this model is single-pass "
                       "(data.multipass=false; add --cot to force it)", file=sys.stderr)
            return 2
        generator = torch.Generator(device=device).manual_seed(args.seed)
        rows = per_thought_accuracy(backbone, task, examples, Decoding(steps, options=options),
                                    seq_len=args.seq_len or cfg.seq_len, generator=generator,
                                    batch_size=args.batch_size)
        print_main(format_per_thought(rows))
        path = write_per_thought(out.with_name(out.name + "-per_thought.json"), rows,
                                 source=source, steps=steps)
        print_main(f"results: {path}")
        return 0
    decoding = Decoding(steps, multipass, args.cot_steps or cfg.eval.cot_steps,
                        args.save_chain, options)
    summary = evaluate(backbone, task, examples, decoding, seq_len=args.seq_len or cfg.seq_len,
                       out=out, runs=args.runs, seed=args.seed,
                       hidden_thought=cfg.data.hidden_thought, batch_size=args.batch_size,
                       progress=not args.no_progress, source_name=source, shard=True)
    print_main(format_summary(summary))
    print_main(f"results: {summary['results']}")
    if not is_main:
        return 0
    from dot.report.plots import eval_figures  # matplotlib only once the decoding is done
    print_main("figures: " + ", ".join(str(f) for f in eval_figures(out.parent)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
