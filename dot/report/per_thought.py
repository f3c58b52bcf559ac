"""Per-thought accuracy of a DoT-MP model: which pass of the chain fails.

End-to-end accuracy multiplies the passes' errors and cannot say which pass makes them. Here
thought k of every example is decoded once from the *gold* question and gold thoughts 0..k-1
(the training pair of thought k), so an error is charged to the thought that made it:
`evaluation_batch.py --per_thought` prints the table and writes it as JSON.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dot.backbone import Backbone
from dot.decoding import Decoding, generate
from dot.examples import tokenize
from dot.results import write_text_atomic
from dot.scoring import token_accuracy
from dot.tasks import Example, Task


def per_thought_accuracy(backbone: Backbone, task: Task, examples: list[Example],
                         decoding: Decoding, *, seq_len: int, generator: torch.Generator,
                         batch_size: int = 64) -> list[dict[str, Any]]:
    """One row per thought index k: examples that have a thought k, the share exact, and the
    mean share of the gold thought's tokens matched position by position (`tokens`).

    Each pass is one pass of the DoT-MP decoding loop (`dot.decoding.generate`), started from
    the gold question and gold thoughts 0..k-1.
    """
    tok = backbone.tokenizer
    tokenized = [tokenize(e, task, tok) for e in examples]
    one_pass = replace(decoding, multipass=True, max_passes=1, record_chain=False)
    rows = []
    for k in range(max(len(t.thoughts) for t in tokenized)):
        having = [t for t in tokenized if k < len(t.thoughts)]
        exact, tokens = 0, 0.0
        for lo in range(0, len(having), batch_size):
            chunk = having[lo: lo + batch_size]
            gold_prefixes = [list(t.prompt) + [i for th in t.thoughts[:k] for i in th]
                             for t in chunk]
            gens = generate(backbone, task, gold_prefixes, one_pass, seq_len=seq_len,
                            generator=generator)
            for g, t in zip(gens, chunk):
                exact += g.ids == list(t.thoughts[k])
                tokens += token_accuracy(g.ids, t.thoughts[k])
        rows.append({"thought": k, "examples": len(having), "exact": exact / len(having),
                     "tokens": tokens / len(having),
                     "first_gold": tok.decode(list(having[0].thoughts[k]))})
    return rows


def format_per_thought(rows: list[dict[str, Any]]) -> str:
    lines = ["thought  examples  exact   tokens  (gold thought of the first example)"]
    lines += [f"{r['thought']:>7}  {r['examples']:>8}  {100 * r['exact']:5.1f}%  "
              f"{100 * r['tokens']:5.1f}%  {r['first_gold']!r}" for r in rows]
    return "\n".join(lines)


def write_per_thought(path: str | Path, rows: list[dict[str, Any]], *, source: str,
                      steps: int) -> Path:
    """`{"source", "steps", "thoughts": rows}` as JSON, written atomically."""
    doc = {"source": source, "steps": steps, "thoughts": rows}
    return write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
