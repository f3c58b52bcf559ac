"""From examples to (fixed prefix, target) token pairs: single-pass DoT, DoT-MP and glance.

* single pass: fixed = prompt + SEP, target = all thoughts + EOS.
* multi-pass (thought k): fixed = prompt + thoughts[:k] + SEP, target = thought k, with EOS
  only after the last thought; a generated thought therefore ends at the first PAD.
* glance (DoT-MP coupled sampling): fixed = prompt + thoughts[:k], target = thought k + SEP +
  thought k+1 (+ EOS if last): the model also writes the current thought and the separator.
* hidden_thought: the chain is replaced by the answer alone (`Task.answer_only`).

Source and every thought are tokenized separately, as in both official code bases, so the
ids of a thought do not depend on which pass it is generated in.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from dot.tasks import Example, Task
from dot.tokenization import Tokenizer


@dataclass(frozen=True)
class TokenizedExample:
    task_id: int
    prompt: tuple[int, ...]
    thoughts: tuple[tuple[int, ...], ...]

    @property
    def target(self) -> list[int]:
        return [i for t in self.thoughts for i in t]


def tokenize(example: Example, task: Task, tokenizer: Tokenizer,
             hidden_thought: bool = False) -> TokenizedExample:
    thoughts = ([task.answer_only(example.answer)] if hidden_thought else example.thoughts)
    return TokenizedExample(example.task_id, tuple(tokenizer.encode(example.prompt)),
                            tuple(tuple(tokenizer.encode(t)) for t in thoughts))


def single_pass_pair(ex: TokenizedExample, tok: Tokenizer) -> tuple[list[int], list[int]]:
    return list(ex.prompt) + [tok.sep_id], ex.target + [tok.eos_id]


def multi_pass_pair(ex: TokenizedExample, tok: Tokenizer, k: int,
                    glance: bool = False) -> tuple[list[int], list[int]]:
    """The training pair for thought `k` (0-based); glance needs a thought k+1."""
    n = len(ex.thoughts)
    if not 0 <= k < n:
        raise IndexError(f"thought {k} of an example with {n} thoughts")
    before = list(ex.prompt) + [i for t in ex.thoughts[:k] for i in t]

    def ending(j: int) -> list[int]:
        return list(ex.thoughts[j]) + ([tok.eos_id] if j == n - 1 else [])

    if glance and k + 1 < n:
        return before, list(ex.thoughts[k]) + [tok.sep_id] + ending(k + 1)
    return before + [tok.sep_id], ending(k)


def training_pair(ex: TokenizedExample, tok: Tokenizer, rng: random.Random, multipass: bool,
                  glance: float = 0.0) -> tuple[list[int], list[int]]:
    """A random training pair: a uniform thought index k for DoT-MP, glance with prob `glance`."""
    if not multipass:
        return single_pass_pair(ex, tok)
    k = rng.randrange(len(ex.thoughts))
    use_glance = glance > 0 and k + 1 < len(ex.thoughts) and rng.random() < glance
    return multi_pass_pair(ex, tok, k, use_glance)
