"""The evaluation loop: decode a split (several seeded runs), score, vote, write results.

Writes `<out>.jsonl` (one record per example and run, see `dot.results`) and
`<out>.summary.json` (accuracy per run, SC@k, network evaluations, examples/s), and returns
the summary. Batch b of run r draws its noise from `seed_key(seed + r, b)`, so runs are
reproducible and independent, and a batch decodes the same whichever process decodes it: under
torchrun the batches are dealt round-robin over the processes (data-parallel evaluation) and
process 0 writes the same records, in the same order, as one process would.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dot import distributed
from dot.backbone import Backbone
from dot.decoding import Decoding, generate
from dot.examples import tokenize
from dot.results import write_records, write_text_atomic
from dot.rng import seed_key
from dot.scoring import sc_table, token_accuracy
from dot.tasks import Example, Task


def result_name(split: str, steps: int, multipass: bool = False, options: dict[str, Any] | None = None,
                runs: int = 1, first: int | None = None, data: str | None = None) -> str:
    """`[<data>-]<split>-T<steps>[-mp][-<option>[=v]]...[-runs<K>][-first<N>]`: the stem of a
    result file.

    One name for one decoding, whoever runs it (the trainer's final evaluation or
    evaluation_batch.py), so a sweep over T finds the trainer's file; a partial decoding
    (`first`, set when only the first N examples were decoded) never overwrites a full one,
    nor does another dataset than the run's own (`data`: its task or file name).
    """
    flags = "".join(f"-{k}{'' if v is True else '=' + str(v)}" for k, v in sorted((options or {}).items()))
    return (f"{data + '-' if data else ''}{split}-T{steps}{'-mp' if multipass else ''}{flags}"
            + (f"-runs{runs}" if runs > 1 else "") + (f"-first{first}" if first else ""))


def evaluate(backbone: Backbone, task: Task, examples: list[Example], decoding: Decoding, *,
             seq_len: int, out: str | Path | None = None, runs: int = 1, seed: int = 2024,
             hidden_thought: bool = False, batch_size: int = 64, progress: bool = True,
             source_name: str = "", notes: dict[str, Any] | None = None,
             shard: bool = False) -> dict[str, Any]:
    """Decode, score and (with `out`) write the records and the summary; `notes` are extra
    summary keys (e.g. the trainer's `training_cut_short`).

    `shard=True` (under torchrun) splits the batches over the processes; every process returns
    the summary of all of them and process 0 writes the files.
    """
    tok = backbone.tokenizer
    tokenized = [tokenize(e, task, tok, hidden_thought) for e in examples]
    golds = [task.gold_answer(e) for e in examples]
    backbone.model.eval()
    rank, world = distributed.rank_and_world() if shard else (0, 1)
    jobs = [(run, b, lo) for run in range(runs)
            for b, lo in enumerate(range(0, len(examples), batch_size))][rank::world]
    start = time.perf_counter()
    bar = tqdm(total=sum(min(batch_size, len(examples) - lo) for _, _, lo in jobs),
               desc=f"decode T={decoding.steps}" + (f" (process {rank} of {world})" if world > 1 else ""),
               disable=not progress or rank > 0, unit="ex",
               mininterval=0.5 if sys.stderr.isatty() else 30)
    generator = torch.Generator(device=next(backbone.model.parameters()).device)
    decoded: list[tuple[int, int, dict[str, Any]]] = []  # (run, example index, record)
    for run, b, lo in jobs:
        generator.manual_seed(seed_key(seed + run, b))
        batch = range(lo, min(lo + batch_size, len(examples)))
        gens = generate(backbone, task, [list(tokenized[i].prompt) for i in batch], decoding,
                        seq_len=seq_len, generator=generator,
                        names=[f"{source_name or task.name} example {examples[i].task_id}"
                               for i in batch])
        for i, g in zip(batch, gens):
            text = tok.decode(g.ids)
            answer = task.extract_answer(text)
            rec = dict(task=task.name, task_id=examples[i].task_id, run=run,
                       question=examples[i].source, gold=golds[i], prediction=text,
                       answer=answer, correct=answer == golds[i], nfe=g.nfe,
                       seconds=round(g.seconds, 6), token_acc=token_accuracy(g.ids, tokenized[i].target),
                       passes=len(g.thoughts), stop=g.stop_reason, steps=decoding.steps)
            if decoding.record_chain:
                rec["chain"] = g.chain
            decoded.append((run, i, rec))
        bar.update(len(batch))
        bar.set_postfix(acc=f"{sum(r['correct'] for _, _, r in decoded) / len(decoded):.3f}",
                        refresh=False)
    bar.close()
    if world > 1:
        decoded = [d for part in distributed.gather_objects(decoded) for d in part]
    records = [rec for _, _, rec in sorted(decoded, key=lambda d: d[:2])]
    elapsed = time.perf_counter() - start
    summary = summarise(records, runs)
    summary.update(steps=decoding.steps, multipass=decoding.multipass, seconds=elapsed,
                   examples_per_s=len(records) / elapsed, options=dict(decoding.options),
                   source=source_name,
                   **(notes or {}))
    if out is not None:
        # suffixes are appended, never swapped: a stem such as `...-threshold=0.95` holds a dot
        out = Path(out)
        summary["results"] = str(out.parent / f"{out.name}.jsonl")
    if out is not None and rank == 0:
        write_records(out.parent / f"{out.name}.jsonl", records)
        write_text_atomic(out.parent / f"{out.name}.summary.json",
                          json.dumps({k: v for k, v in summary.items() if k != "results"},
                                     indent=2) + "\n")
    return summary


def summarise(records: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    """Accuracy per run (mean, std), SC@k over the runs, token accuracy and NFE per example
    (mean and max; an example's NFE counts the calls it needed, as if decoded alone)."""
    per_run = [[r for r in records if r["run"] == k] for k in range(runs)]
    accs = [sum(r["correct"] for r in rs) / len(rs) for rs in per_run if rs]
    by_example: dict[Any, tuple[str, list[str]]] = {}
    for r in sorted(records, key=lambda r: r["run"]):
        by_example.setdefault(r["task_id"], (r["gold"], []))[1].append(r["answer"])
    return dict(
        n_examples=len(by_example), runs=runs, accuracy=statistics.fmean(accs),
        accuracy_std=statistics.pstdev(accs) if len(accs) > 1 else 0.0, accuracy_per_run=accs,
        sc=sc_table(by_example.values(), runs) if runs > 1 else {},
        token_acc=statistics.fmean(r["token_acc"] for r in records),
        nfe_per_example=statistics.fmean(r["nfe"] for r in records),
        nfe_max=max(r["nfe"] for r in records))


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable table of an evaluation summary."""
    lines = [f"examples {summary['n_examples']}  runs {summary['runs']}  T={summary['steps']}"
             f"{'  DoT-MP' if summary['multipass'] else ''}",
             f"accuracy {100 * summary['accuracy']:.2f}%"
             + (f" ± {100 * summary['accuracy_std']:.2f}" if summary["runs"] > 1 else "")
             + f"  token acc {100 * summary['token_acc']:.2f}%",
             f"NFE/example {summary['nfe_per_example']:.1f} (max {summary['nfe_max']})  examples/s "
             f"{summary['examples_per_s']:.2f}"]
    if summary["sc"]:
        lines.append("SC@k  " + "  ".join(f"@{k}: {100 * v:.2f}%" for k, v in summary["sc"].items()))
    return "\n".join(lines)
