"""Re-score result files: ours (`dot.results`) and the official dot-sedd `{"recover", "source"}`.

Official files are scored with our GSM8K normalisation, which accepts the answers the official
`cal_acc_gsm.py` always rejects (negative numbers, thousands commas, decimals: its
`str.isnumeric()` test fails on them); the official strict count is reported beside ours.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from dot.results import ResultsError, read_lines
from dot.scoring import sc_table
from dot.tasks import get_task
from dot.tasks.gsm8k import normalise_number

EOS, SEP = "<|endoftext|>", "||"


def _official_piece(text: str) -> str | None:
    """The generated (or gold) target of a dot-sedd row: after EOS+SEP, up to the next EOS."""
    if EOS + SEP not in text:
        return None
    piece = text.split(EOS + SEP, 1)[1]
    return piece.split(EOS, 1)[0] if EOS in piece else None


def _official_answer(piece: str | None, strict: bool) -> str | None:
    if piece is None:
        return None
    answer = piece.strip().rsplit("####", 1)[-1].strip()
    if strict:
        return answer if answer and answer.isnumeric() else None
    return normalise_number(answer) if "####" in piece and answer else None


def score_official(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of a dot-sedd output file: ours, and the official strict rule."""
    ours = strict = 0
    for row in rows:
        gold, pred = (_official_piece(row["source"]), _official_piece(row["recover"]))
        g, p = _official_answer(gold, False), _official_answer(pred, False)
        ours += g is not None and g == p
        gs, ps = _official_answer(gold, True), _official_answer(pred, True)
        strict += gs is not None and gs == ps
    n = max(len(rows), 1)
    return {"format": "dot-sedd", "n": len(rows), "runs": 1, "accuracy": ours / n,
            "official_accuracy": strict / n, "sc": {}}


def score_ours(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per run and SC@k, re-extracting answers with the current task rules."""
    runs = max(r["run"] for r in rows) + 1
    by_example: dict[Any, tuple[str, list[str]]] = {}
    correct = 0
    for r in sorted(rows, key=lambda r: r["run"]):
        answer = get_task(r["task"]).extract_answer(r["prediction"])
        correct += answer == r["gold"]
        by_example.setdefault(r["task_id"], (r["gold"], []))[1].append(answer)
    return {"format": "dot", "n": len(by_example), "runs": runs, "accuracy": correct / len(rows),
            "official_accuracy": None, "sc": sc_table(by_example.values(), runs) if runs > 1 else {}}


OURS = ("task", "task_id", "run", "gold", "prediction")  # what scoring reads of our records
OFFICIAL = ("recover", "source")


def score_file(path: str | Path) -> dict[str, Any]:
    """Score one results file, ours or official, after checking every row it scores."""
    lines = read_lines(path)
    if not lines:
        raise ResultsError(f"{path}: no result lines")
    first = lines[0][1]
    keys = OFFICIAL if all(k in first for k in OFFICIAL) else OURS if all(
        k in first for k in ("prediction", "gold")) else None
    if keys is None:
        raise ResultsError(f"{path}: neither dot results (prediction, gold, ...) nor dot-sedd "
                           f"output (recover, source); keys are {sorted(first)}")
    for number, row in lines:
        missing = [k for k in keys if k not in row]
        if missing:
            raise ResultsError(f"{path}:{number}: lacks {', '.join(missing)}")
        problem = _row_problem(row, keys is OFFICIAL)
        if problem:
            raise ResultsError(f"{path}:{number}: {problem}")
    rows = [row for _, row in lines]
    return score_official(rows) if keys is OFFICIAL else score_ours(rows)


def _row_problem(row: dict[str, Any], official: bool) -> str | None:
    """Why a row cannot be scored (None: it can)."""
    if official:
        if not all(isinstance(row[k], str) for k in OFFICIAL):
            return "'recover' and 'source' must be strings"
        gold = _official_answer(_official_piece(row["source"]), False)
        if gold is None or not get_task("gsm8k").is_answer(gold):
            return "no numeric gold answer after '####' in 'source'"
        return None
    if not isinstance(row["prediction"], str) or not isinstance(row["gold"], str):
        return "'prediction' and 'gold' must be strings"
    if not isinstance(row["run"], int) or isinstance(row["run"], bool) or row["run"] < 0:
        return f"'run' must be an integer >= 0, got {row['run']!r}"
    try:
        task = get_task(row["task"])
    except ValueError as err:
        return str(err)
    if not task.is_answer(row["gold"]):
        return f"gold answer {row['gold']!r} is not a {task.name} answer"
    return None


def natural_key(path: Path) -> list[str | int]:
    """Sort key reading digit runs as numbers: test-T2 before test-T16."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def files_to_score(directory: Path | None, steps: list[int] | None,
                   roots: tuple[Path, ...] = (Path("exp_local"), Path("generated_output"))) -> list[Path]:
    """Files named by the official CLI, or the most recent evaluation output: every result
    file in the folder of the newest one (e.g. a run's eval/ folder after a steps sweep)."""
    if directory is not None:
        if steps:
            found = []
            for k in steps:
                candidates = [directory / f"step_{k}.jsonl",
                              *sorted(directory.glob(f"*T{k}.jsonl")), *sorted(directory.glob(f"*T{k}-*.jsonl"))]
                hit = next((c for c in candidates if c.is_file()), None)
                if hit is None:
                    raise FileNotFoundError(f"no step_{k}.jsonl or *T{k}*.jsonl in {directory}")
                found.append(hit)
            return found
        found = sorted(directory.glob("*.jsonl"), key=natural_key)
        if not found:
            raise FileNotFoundError(f"no .jsonl files in {directory}")
        return found
    candidates = [p for root in roots if root.is_dir() for p in root.glob("**/*.jsonl")
                  if "samples" not in p.parts]
    if not candidates:
        raise FileNotFoundError("no evaluation output found under exp_local/ or generated_output/; "
                                "run evaluation_batch.py or pass --generated_output_path")
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    return sorted(newest.parent.glob("*.jsonl"), key=natural_key)


def report(paths: list[Path]) -> str:
    """Accuracy per file, and an SC@k table for files with several runs."""
    scores = {str(p): score_file(p) for p in paths}
    columns = {
        "file": list(scores), "examples": [s["n"] for s in scores.values()],
        "runs": [s["runs"] for s in scores.values()],
        "accuracy %": [round(100 * s["accuracy"], 2) for s in scores.values()]}
    if any(s["official_accuracy"] is not None for s in scores.values()):  # official files only
        columns["official scorer %"] = ["-" if s["official_accuracy"] is None
                                        else round(100 * s["official_accuracy"], 2)
                                        for s in scores.values()]
    table = pd.DataFrame(columns)
    text = table.to_string(index=False)
    sc = {p: s["sc"] for p, s in scores.items() if s["sc"]}
    if sc:
        sc_frame = pd.DataFrame({p: {f"SC@{k}": round(100 * v, 2) for k, v in t.items()}
                                 for p, t in sc.items()}).T
        text += "\n\nself-consistency (accuracy % by number of voting runs)\n" + sc_frame.to_string()
    return text
