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


class ResultsError(ValueError):
    """A results file that cannot be read or scored; names the file and line."""


def read_lines(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, JSON object) of every non-blank line of a jsonl results file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ResultsError(f"{path}: not UTF-8 ({err})") from None
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ResultsError(f"{path}:{number}: not a JSON line ({err.msg}); the file is "
                               "truncated or damaged, re-run the evaluation") from None
        if not isinstance(row, dict):
            raise ResultsError(f"{path}:{number}: expected a JSON object, found "
                               f"{type(row).__name__}")
        rows.append((number, row))
    return rows


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of one of our results files, each with every REQUIRED key."""
    records = []
    for number, row in read_lines(path):
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise ResultsError(f"{path}:{number}: record lacks {', '.join(missing)}")
        records.append(row)
    return records
