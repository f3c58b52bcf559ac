"""Readers for the two DoT file formats, with one clear error per malformed line.

* DoT text (`question||rationale #### answer`, one per line). Lines are split on '\\n' only:
  GSM8K questions can contain U+2028, which `str.splitlines()` would wrongly break on.
* dot-sedd jsonl (`{"src", "rationales", "trg"}` per line).

Files must be UTF-8 (a leading byte-order mark is dropped); every line is also checked by its
task (`Task.check_line`: multiplication operands and answer, a numeric GSM8K answer), and an
error names the file and its 1-based line.
"""
from __future__ import annotations

import json
from pathlib import Path

from dot.tasks import Example, Task


class DataFormatError(ValueError):
    pass


def _check_line(path: Path, lineno: int, line: str, task: Task) -> tuple[str, str]:
    where = f"{path}:{lineno}"
    if "\r" in line:
        raise DataFormatError(f"{where}: carriage return in line; convert the file to '\\n' line ends")
    if line.count("||") != 1:
        raise DataFormatError(f"{where}: expected exactly one '||' between question and "
                              f"rationale, found {line.count('||')}: {line[:80]!r}")
    source, target = line.split("||")
    if target.count("####") != 1:
        raise DataFormatError(f"{where}: expected exactly one '####' before the answer, found "
                              f"{target.count('####')}: {line[:80]!r}")
    if not target.split("####")[1].strip():
        raise DataFormatError(f"{where}: empty answer after '####': {line[:80]!r}")
    problem = task.check_line(source, target)
    if problem:
        raise DataFormatError(f"{where}: {problem} (a {task.name} line): {line[:80]!r}")
    return source, target


def read_dot_text(path: str | Path, task: Task) -> list[Example]:
    """All examples of a DoT text file; task_id is the 0-based line index."""
    path = Path(path)
    lines = _read(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    examples = []
    for i, line in enumerate(lines):
        if not line.strip():
            raise DataFormatError(f"{path}:{i + 1}: blank line; remove it")
        examples.append(task.make_example(i, *_check_line(path, i + 1, line, task)))
    return _non_empty(path, examples)


def read_dot_jsonl(path: str | Path, task: Task) -> list[Example]:
    """All examples of a dot-sedd jsonl file (`src`, `rationales`, `trg`)."""
    path = Path(path)
    examples = []
    for i, line in enumerate(_read(path).split("\n")):
        if not line.strip():
            continue
        where = f"{path}:{i + 1}"
        try:
            row = json.loads(line)
            src, rationales, trg = row["src"], row["rationales"], row["trg"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataFormatError(f"{where}: not a JSON object with keys src, rationales, "
                                  f"trg ({err})") from None
        if not isinstance(src, str) or not src.strip():
            raise DataFormatError(f"{where}: 'src' must be a non-empty string, got {src!r}")
        if not isinstance(rationales, str):
            raise DataFormatError(f"{where}: 'rationales' must be a string, got {rationales!r}")
        if isinstance(trg, bool) or not isinstance(trg, (str, int, float)) or not str(trg).strip():
            raise DataFormatError(f"{where}: 'trg' must be a non-empty string or number, got "
                                  f"{trg!r}")
        target = (rationales + " " if rationales else " ") + "#### " + str(trg)
        problem = task.check_line(src, target)
        if problem:
            raise DataFormatError(f"{where}: {problem} (a {task.name} line)")
        examples.append(task.make_example(len(examples), src, target))
    return _non_empty(path, examples)


def read_examples(path: str | Path, task: Task) -> list[Example]:
    """Read a data file in either format (chosen by the `.jsonl` suffix)."""
    return (read_dot_jsonl if str(path).endswith(".jsonl") else read_dot_text)(path, task)


def _read(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found; run `python -m dot.data fetch "
                                f"<task>` or `python -m dot.data make-mult`, or set data.train/"
                                f"data.valid/data.test")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: not UTF-8 (byte {data[err.start]:#04x}); save the "
                              "file as UTF-8") from None
    return text.removeprefix("\ufeff")  # a byte-order mark some editors write


def _non_empty(path: Path, examples: list[Example]) -> list[Example]:
    if not examples:
        raise DataFormatError(f"{path}: no examples in file; the split is empty")
    return examples
