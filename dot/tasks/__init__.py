"""Task registry: `get_task('gsm8k' | '4by4' | '4x4' | '5by5' | 'mult3x3' ...)`."""
from __future__ import annotations

from dot.tasks.base import Example, Task
from dot.tasks.gsm8k import GSM8K
from dot.tasks.multiplication import Multiplication, format_example, multiplication_task
from dot.tasks.word_problems import WordProblems

__all__ = ["Example", "Task", "GSM8K", "Multiplication", "WordProblems", "format_example",
           "get_task"]


def get_task(name: str) -> Task:
    """The task called `name`; multiplication accepts any `<n>x<m>` / `<n>by<m>` size."""
    if name == "gsm8k":
        return GSM8K()
    if name == "gsm8k_toy":
        return WordProblems()
    task = multiplication_task(name)
    if task is None:
        raise ValueError(f"unknown task {name!r}: use gsm8k, gsm8k_toy (generated word problems), "
                         "4by4 (4x4), 5by5 (5x5) or mult<N>x<M> for generated multiplication "
                         "(config key data.task)")
    return task
