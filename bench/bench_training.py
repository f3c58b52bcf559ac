"""Training throughput and peak memory of every backbone at two model sizes.

    python bench/bench_training.py                                   # 3 backbones x tiny, mid
    python bench/bench_training.py --backbones sedd ar --sizes tiny --batch-size 16 --steps 3
    python bench/bench_training.py --backbones sedd plaid --sizes mid \
        --strategies none ddp zero fsdp --nproc 2                    # training.strategy rows

Each (backbone, size) runs `dot.train.Trainer` on generated mult3x3 data in a temporary run
folder, in its own subprocess: the CPU memory high-water mark (ru_maxrss) only ever grows, so
sharing a process would hide every configuration's peak behind the largest one before it.
`--warmup` steps are run untimed (allocator and optimizer state warm up), then `--steps` timed
optimizer steps give steps/s and tokens/s = batch x seq_len x steps/s (padding included: the
diffusion backbones compute on every position). Peak memory is the ru_maxrss growth from
just before the Trainer is built (model, optimizer, data, activations), or
torch.cuda.max_memory_allocated on CUDA. On CPU that growth also holds a roughly constant
share that is not the model's (kernels paged in on first use, the generated data), so compare
sizes and backbones by difference; `process_peak_mb` is the child's whole high-water mark.
With `--strategies`, every strategy but `none` runs under torchrun with `--nproc` processes
(gloo on CPU, one thread each); memory is process 0's, the global batch stays the same.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import ALL_BACKBONES, RESULTS, machine_line, pick_device, print_table, write_csv

# size name -> model overrides (tiny is configs/model/tiny.yaml as it stands)
SIZES: dict[str, list[str]] = {
    "tiny": ["model=tiny"],
    "mid": ["model=tiny", "model.hidden_size=384", "model.n_blocks=6", "model.n_heads=6",
            "model.cond_dim=128"],
}
COLUMNS = ("backbone", "size", "strategy", "procs", "params_m", "batch", "seq_len", "steps_per_s",
           "tokens_per_s", "ms_per_step", "peak_mem_mb", "mem_kind", "process_peak_mb")


def _maxrss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def measure(backbone: str, size: str, strategy: str, batch: int, steps: int, warmup: int,
            device: str, n_train: int) -> dict[str, Any] | None:
    """Build a Trainer in a temporary run folder and time `steps` optimizer steps; the row
    (None off process 0)."""
    from dot.config import compose_config
    from dot.train import Trainer

    cfg = compose_config([f"backbone={backbone}", *SIZES[size], "data.task=mult3x3",
                          f"data.n_train={n_train}", f"training.batch_size={batch}",
                          "training.eval_freq=0", f"device={device}",
                          f"training.strategy={strategy}"])
    dev = pick_device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = _maxrss_mb()
    with tempfile.TemporaryDirectory(prefix="dot-bench-") as tmp:
        trainer = Trainer(cfg, Path(tmp))  # under torchrun each process has its own folder
        for _ in range(warmup):
            trainer.train_step()
        if cuda:
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        if cuda:
            torch.cuda.synchronize(dev)
        elapsed = time.perf_counter() - start
        params = sum(p.numel() for p in trainer.engine.full(trainer.model.state_dict()).values())
        seq_len, ctx = trainer.seq_len, trainer.ctx
    if not ctx.is_main:
        return None
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else _maxrss_mb() - rss_before)
    return dict(backbone=backbone, size=size, strategy=strategy, procs=ctx.world_size,
                params_m=params / 1e6, batch=batch, seq_len=seq_len,
                steps_per_s=steps / elapsed, tokens_per_s=batch * seq_len * steps / elapsed,
                ms_per_step=1000 * elapsed / steps, peak_mem_mb=peak,
                mem_kind="cuda max allocated" if cuda else "ru_maxrss delta",
                process_peak_mb=_maxrss_mb())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=list(ALL_BACKBONES), choices=ALL_BACKBONES)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--batch-size", type=int, default=64, help="global batch (training.batch_size)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--n-train", type=int, default=4096, help="generated training lines")
    p.add_argument("--strategies", nargs="+", default=["none"],
                   choices=["none", "ddp", "zero", "fsdp"], help="training.strategy values")
    p.add_argument("--nproc", type=int, default=2, help="processes for ddp / zero / fsdp")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(RESULTS / "training.csv"))
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measurement, JSON out
    args = p.parse_args(argv)
    if args.child:
        backbone, size, strategy = args.child.split(":")
        row = measure(backbone, size, strategy, args.batch_size, args.steps, args.warmup,
                      args.device, args.n_train)
        if row is not None:
            print("RESULT " + json.dumps(row))
        return

    print(f"training benchmark: {machine_line(pick_device(args.device))}; mult3x3, char "
          f"tokenizer, batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps")
    rows = []
    for backbone, size, strategy in itertools.product(args.backbones, args.sizes, args.strategies):
        launch = [sys.executable]
        if strategy != "none":
            launch += ["-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc)]
        cmd = [*launch, __file__, "--child", f"{backbone}:{size}:{strategy}",
               "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--n-train", str(args.n_train),
               "--device", args.device]
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if strategy != "none" else None
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not found:
            print(f"  {backbone} {size} {strategy}: failed\n{proc.stderr[-2000:]}",
                  file=sys.stderr)
            continue
        row = json.loads(found[-1][len("RESULT "):])
        rows.append(row)
        print(f"  {backbone:>5} {size:>4} {strategy:>4}: {row['steps_per_s']:.2f} steps/s, "
              f"{row['tokens_per_s']:.0f} tokens/s, {row['peak_mem_mb']:.0f} MB", flush=True)
    print()
    print_table(rows, COLUMNS)
    print(f"\nwrote {write_csv(args.out, rows, COLUMNS)}")


if __name__ == "__main__":
    main()
