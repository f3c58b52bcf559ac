"""Where a task's splits come from, and the `python -m dot.data` command line.

Resolution order for a split: an explicit path (config `data.train` / `data.valid` /
`data.test`); `data/<task>/<split>.txt` in the project; the shared validation copies beside
the project (`../shared/data/{4x4,5x5,gsm8k}/valid.txt`); for multiplication, lines generated
by rule. Generated training lines never reuse an operand pair of the evaluation splits.
"""
from __future__ import annotations

from pathlib import Path

from dot.data.readers import DataFormatError, read_examples
from dot.tasks import Example, Multiplication, Task
from dot.tasks.multiplication import parse_operands
from dot.tasks.word_problems import WordProblems

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = PROJECT_ROOT / "data"
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
_SHARED_NAMES = {"4by4": "4x4", "5by5": "5x5", "gsm8k": "gsm8k"}
SPLITS = ("train", "valid", "test")
# Seeds of the generated evaluation splits; training lines use the run's seed and exclude them.
_EVAL_SEEDS = {"test": 1_000_003, "valid": 2_000_003}

__all__ = ["DataFormatError", "find_split_file", "load_eval_split", "load_split", "generated_lines",
           "read_examples"]


def find_split_file(task: Task, split: str, root: Path = DATA_ROOT) -> Path | None:
    """The file holding `split` of `task`, if one exists locally."""
    candidates = [root / task.data_dir / f"{split}.txt", root / task.data_dir / f"{split}.jsonl"]
    if task.data_dir in _SHARED_NAMES:
        candidates.append(SHARED_DATA / _SHARED_NAMES[task.data_dir] / f"{split}.txt")
    return next((p for p in candidates if p.is_file()), None)


def eval_size(task: Multiplication) -> int:
    """Size of a generated valid/test split: 1000, or a tenth of all pairs for tiny sizes."""
    pairs = 9 * 10 ** (task.a_digits - 1) * 9 * 10 ** (task.b_digits - 1)
    return min(1000, pairs // 10)


def has_upstream(task: Task) -> bool:
    """Tasks with published splits (4by4, 5by5, gsm8k) are never evaluated on generated ones."""
    return task.data_dir in _SHARED_NAMES


def generated_lines(task: Multiplication, split: str, n_train: int, seed: int,
                    root: Path = DATA_ROOT) -> list[str]:
    """Lines of a generated split; training excludes every evaluation pair (files or generated)."""
    if split != "train":
        return task.generate(eval_size(task), _EVAL_SEEDS[split])
    held_out: set[tuple[int, int]] = set()
    for other in ("valid", "test"):
        path = find_split_file(task, other, root)
        if path is None and has_upstream(task):
            continue  # an upstream split not present here: nothing generated stands in for it
        sources = ([e.source for e in read_examples(path, task)] if path
                   else [line.split("||")[0] for line in generated_lines(task, other, 0, 0, root)])
        held_out.update(parse_operands(s) for s in sources)
    pairs = 9 * 10 ** (task.a_digits - 1) * 9 * 10 ** (task.b_digits - 1)
    return task.generate(min(n_train, pairs - len(held_out)), seed, exclude=held_out)


def word_problem_lines(task: WordProblems, split: str, n_train: int, seed: int,
                       root: Path = DATA_ROOT) -> list[str]:
    """Lines of a generated `gsm8k_toy` split (500 for valid / test); training lines never
    repeat a question of the evaluation splits."""
    if split != "train":
        return task.generate(500, _EVAL_SEEDS[split])
    held_out = set()
    for other in ("valid", "test"):
        path = find_split_file(task, other, root)
        held_out.update([e.source for e in read_examples(path, task)] if path else
                        [line.split("||")[0] for line in word_problem_lines(task, other, 0, 0, root)])
    return task.generate(n_train, seed, exclude=held_out)


def _missing(task: Task, split: str, root: Path) -> str:
    """What to do about a split that is not here: the upstream file with its size and sha256."""
    from dot.data.fetch import FILES

    where = root / task.data_dir / f"{split}.txt"
    upstream = next((u for u in FILES.get(task.data_dir, []) if u.split == split), None)
    if upstream is None:
        return f"no {split} split for task {task.name}: put it at {where} or set data.{split}=PATH"
    hint = (" To try the GSM8K workflow offline, data.task=gsm8k_toy (`bash run_train.sh "
            "cpu-gsm8k-toy`) generates GSM8K-format word problems." if task.name == "gsm8k" else "")
    return (f"no {split} split for task {task.name} here: put the upstream {upstream.path} "
            f"({upstream.size:,} bytes, sha256 {upstream.sha256}) at {where}, run `python -m "
            f"dot.data fetch {task.data_dir}` where the network allows, or set "
            f"data.{split}=PATH.{hint}")


def load_split(task: Task, split: str, path: str | Path | None = None, *, n_train: int = 100_000,
               seed: int = 0, root: Path = DATA_ROOT) -> tuple[list[Example], str]:
    """Examples of a split and a description of where they came from."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if path is not None:
        return read_examples(path, task), str(path)
    found = find_split_file(task, split, root)
    if found is not None:
        return read_examples(found, task), str(found)
    if isinstance(task, Multiplication) and (split == "train" or not has_upstream(task)):
        lines = generated_lines(task, split, n_train, seed, root)
        return ([task.make_example(i, *line.split("||")) for i, line in enumerate(lines)],
                f"generated {task.name} {split} ({len(lines)} lines)")
    if isinstance(task, WordProblems):
        lines = word_problem_lines(task, split, n_train, seed, root)
        return ([task.make_example(i, *line.split("||")) for i, line in enumerate(lines)],
                f"generated {task.name} {split} ({len(lines)} lines)")
    raise FileNotFoundError(_missing(task, split, root))


def load_eval_split(task: Task, split: str, path: str | Path | None = None,
                    valid_path: str | Path | None = None, root: Path = DATA_ROOT
                    ) -> tuple[list[Example], str]:
    """An evaluation split; a missing test split falls back to valid, and the source says so."""
    try:
        return load_split(task, split, path, root=root)
    except FileNotFoundError:
        if split != "test" or path is not None:
            raise
    examples, source = load_split(task, "valid", valid_path, root=root)
    return examples, f"{source} (no test split found; using valid)"
