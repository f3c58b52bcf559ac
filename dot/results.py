"""The one results format: jsonl, one line per (example, run).

Required keys: task, task_id, run, question, gold, prediction (generated target text),
answer (extracted), correct, nfe (network evaluations spent on this example), seconds
(its share of the batch's wall time). Optional: token_acc, passes, steps, chain.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

REQUIRED = ("task", "task_id", "run", "question", "gold", "prediction", "answer", "correct",
            "nfe", "seconds")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".part{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_records(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write records atomically (a re-run replaces the file; it never appends duplicates)."""
    lines = []
    for rec in records:
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise KeyError(f"result record lacks {missing}")
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    return write_text_atomic(path, "".join(lines))


def read_records(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
