"""What every reasoning task provides: how to prompt, how to cut a rationale into thoughts,
and how to read the answer back out of generated text."""
from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One line of a DoT data file: `source||rationale #### answer`.

    `thoughts` concatenate to the single-pass target; DoT-MP generates them one per pass.
    """

    task_id: int
    source: str
    target: str  # everything after '||' as written in the file
    prompt: str  # the text the model is conditioned on
    thoughts: tuple[str, ...]
    answer: str  # the gold answer as written (before normalisation)


class Task(abc.ABC):
    name: str
    # Directory name under data/ (e.g. '4by4').
    data_dir: str
    # What data.tokenizer=auto picks: a tokenizer name, or None for natural language (the
    # backbone's own pretrained tokenizer, backbone.text_tokenizer).
    tokenizer: str | None = None

    def make_example(self, task_id: int, source: str, target: str) -> Example:
        """Build an Example from the two halves of a data line (validated by the reader)."""
        answer = target.split("####", 1)[1].strip()
        return Example(task_id, source, target, self.prompt(source), tuple(self.thoughts(target)),
                       answer)

    def prompt(self, source: str) -> str:
        return source

    def check_line(self, source: str, target: str) -> str | None:
        """What is wrong with a data line of this task (None: nothing); readers name the line."""
        return None

    def is_answer(self, gold: str) -> bool:
        """Whether a normalised gold answer (a results file's `gold`) is one of this task's."""
        return bool(gold.strip())

    @abc.abstractmethod
    def thoughts(self, target: str) -> list[str]:
        """Cut `rationale #### answer` into the reasoning steps DoT-MP generates one by one."""

    @abc.abstractmethod
    def answer_only(self, answer: str) -> str:
        """The target used with `hidden_thought` (the answer without its rationale)."""

    @abc.abstractmethod
    def extract_answer(self, generated: str) -> str:
        """The normalised answer in generated target text ('' when there is none)."""

    @abc.abstractmethod
    def gold_answer(self, example: Example) -> str:
        """The normalised gold answer, comparable with `extract_answer`'s output."""

    @abc.abstractmethod
    def is_final_thought(self, thought: str) -> bool:
        """Whether a generated thought ends the chain (DoT-MP stops for that example)."""
