"""The evaluation loop: decode a split (several seeded runs), score, vote, write results.

Writes `<out>.jsonl` (one record per example and run, see `dot.results`) and
`<out>.summary.json` (accuracy per run, SC@k, network evaluations, examples/s), and returns
the summary. Run r is seeded with `seed + r`, so runs are reproducible and independent.
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

from dot.backbone import Backbone
from dot.decoding import generate
from dot.examples import tokenize
from dot.results import write_records, write_text_atomic
from dot.scoring import sc_table, token_accuracy
from dot.tasks import Example, Task


def result_name(split: str, steps: int, multipass: bool = False, options: dict[str, Any] | None = None,
                runs: int = 1, first: int | None = None) -> str:
    """`<split>-T<steps>[-mp][-<option>[=v]]...[-runs<K>][-first<N>]`: the stem of a result file.

    One name for one decoding, whoever runs it (the trainer's final evaluation or
    evaluation_batch.py), so a sweep over T finds the trainer's file and a partial decoding
    (`first`, set when only the first N examples were decoded) never overwrites a full one.
    """
    flags = "".join(f"-{k}{'' if v is True else '=' + str(v)}" for k, v in sorted((options or {}).items()))
    return (f"{split}-T{steps}{'-mp' if multipass else ''}{flags}"
            + (f"-runs{runs}" if runs > 1 else "") + (f"-first{first}" if first else ""))


def evaluate(backbone: Backbone, task: Task, examples: list[Example], *, seq_len: int,
             steps: int, out: str | Path | None = None, runs: int = 1, seed: int = 2024,
             multipass: bool = False, hidden_thought: bool = False, max_passes: int = 12,
             batch_size: int = 64, record_chain: bool = False, progress: bool = True,
             source_name: str = "", notes: dict[str, Any] | None = None,
             **options: Any) -> dict[str, Any]:
    """Decode, score and (with `out`) write the records and the summary; `notes` are extra
    summary keys (e.g. the trainer's `training_cut_short`)."""
    tok = backbone.tokenizer
    tokenized = [tokenize(e, task, tok, hidden_thought) for e in examples]
    golds = [task.gold_answer(e) for e in examples]
    records: list[dict[str, Any]] = []
    backbone.model.eval()
    start = time.perf_counter()
    bar = tqdm(total=runs * len(examples), desc=f"decode T={steps}", disable=not progress,
               unit="ex", mininterval=0.5 if sys.stderr.isatty() else 30)
    for run in range(runs):
        generator = torch.Generator(device=next(backbone.model.parameters()).device)
        generator.manual_seed(seed + run)
        for lo in range(0, len(examples), batch_size):
            batch = range(lo, min(lo + batch_size, len(examples)))
            gens = generate(backbone, task, [list(tokenized[i].prompt) for i in batch],
                            seq_len=seq_len, steps=steps, generator=generator,
                            multipass=multipass, max_passes=max_passes,
                            record_chain=record_chain,
                            names=[f"{source_name or task.name} example {examples[i].task_id}"
                                   for i in batch], **options)
            for i, g in zip(batch, gens):
                text = tok.decode(g.ids)
                answer = task.extract_answer(text)
                rec = dict(task=task.name, task_id=examples[i].task_id, run=run,
                           question=examples[i].source, gold=golds[i], prediction=text,
                           answer=answer, correct=answer == golds[i], nfe=g.nfe,
                           seconds=round(g.seconds, 6), token_acc=token_accuracy(g.ids, tokenized[i].target),
                           passes=len(g.thoughts), stop=g.stop_reason, steps=steps)
                if record_chain:
                    rec["chain"] = g.chain
                records.append(rec)
            bar.update(len(batch))
            bar.set_postfix(acc=f"{sum(r['correct'] for r in records) / len(records):.3f}",
                            refresh=False)
    bar.close()
    elapsed = time.perf_counter() - start
    summary = summarise(records, runs)
    summary.update(steps=steps, multipass=multipass, seconds=elapsed,
                   examples_per_s=len(records) / elapsed, options=options, source=source_name,
                   **(notes or {}))
    if out is not None:
        out = Path(out)
        write_records(out.with_suffix(".jsonl"), records)
        write_text_atomic(out.with_suffix(".summary.json"), json.dumps(summary, indent=2) + "\n")
        summary["results"] = str(out.with_suffix(".jsonl"))
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
