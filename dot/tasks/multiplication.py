"""Multi-digit multiplication in the Implicit-CoT format (4x4, 5x5, and any size).

A line is a pure function of the operands (see shared/spec/dot_data.md §2): numbers are written
least-significant digit first, digits separated by spaces; the rationale lists the partial
products A*b_i*10^i, with the running sum in parentheses after every middle partial.
"""
from __future__ import annotations

import random
import re
from typing import Iterable

from dot.tasks.base import Example, Task


def render(x: int, width: int) -> str:
    """`x` zero-padded to `width` digits, least-significant digit first, space separated."""
    digits = str(x).zfill(width)
    if len(digits) != width:
        raise ValueError(f"{x} does not fit in {width} digits")
    return " ".join(reversed(digits))


def format_example(a: int, b: int, a_digits: int, b_digits: int) -> str:
    """The exact data line for a x b (without the trailing newline)."""
    n, m = a_digits, b_digits
    steps, running = [], 0
    for i in range(m):
        partial = a * (b // 10**i % 10) * 10**i
        running += partial
        step = render(partial, n + 1 + i)
        if 0 < i < m - 1:
            step += f" ( {render(running, n + 1 + i)} )"
        steps.append(step)
    return f"{render(a, n)} * {render(b, m)}||{' + '.join(steps)} #### {render(a * b, n + m)}"


def _digits(text: str, width: int) -> bool:
    """`text` is `width` single digits separated by single spaces."""
    parts = text.split(" ")
    return len(parts) == width and all(len(p) == 1 and p in "0123456789" for p in parts)


def parse_operands(source: str) -> tuple[int, int]:
    """Operands of a source `R(A) * R(B)` (inverse of `render`)."""
    left, right = source.split(" * ")
    return (int("".join(reversed(left.split()))), int("".join(reversed(right.split()))))


def sample_pairs(a_digits: int, b_digits: int, n: int, seed: int,
                 exclude: Iterable[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """`n` distinct operand pairs without leading zeros, none in `exclude`, reproducible."""
    lo_a, hi_a = 10 ** (a_digits - 1), 10**a_digits - 1
    lo_b, hi_b = 10 ** (b_digits - 1), 10**b_digits - 1
    available = (hi_a - lo_a + 1) * (hi_b - lo_b + 1)
    taken = set(exclude)
    if n > available - len(taken):
        raise ValueError(f"only {available - len(taken)} unused {a_digits}x{b_digits} operand "
                         f"pairs exist; asked for {n}")
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        pair = (rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b))
        if pair not in taken:
            taken.add(pair)
            pairs.append(pair)
    return pairs


class Multiplication(Task):
    """n-digit by m-digit multiplication; `4by4`/`5by5` are the paper's data sets."""

    tokenizer = "char"  # one token per digit and space

    def check_line(self, source: str, target: str) -> str | None:
        n, m = self.a_digits, self.b_digits
        operands = source.split(" * ")
        if len(operands) != 2 or not all(_digits(x, k) for x, k in zip(operands, (n, m))):
            return (f"the question must be two operands of {n} and {m} digits, least "
                    f"significant first, space separated, joined by ' * '")
        answer = target.split("####", 1)[1].strip()
        if not _digits(answer, n + m):
            return f"the answer must be {n + m} space-separated digits"
        a, b = parse_operands(source)
        if int("".join(reversed(answer.split()))) != a * b:
            return f"the answer is not {a} * {b} = {a * b}"
        return None

    def __init__(self, a_digits: int, b_digits: int, name: str | None = None):
        self.a_digits, self.b_digits = a_digits, b_digits
        self.name = name or f"mult{a_digits}x{b_digits}"
        self.data_dir = self.name

    def prompt(self, source: str) -> str:
        return source + " = "

    def thoughts(self, target: str) -> list[str]:
        rationale, answer = target.split("####")
        parts = [p.strip() for p in rationale.strip().split("+")]
        return [p + " + " for p in parts[:-1]] + [parts[-1] + " = ", answer.strip()]

    def answer_only(self, answer: str) -> str:
        return answer

    def extract_answer(self, generated: str) -> str:
        tail = generated.rsplit("####", 1)[-1] if "####" in generated else generated.rsplit("=", 1)[-1]
        return " ".join(tail.strip(" +").split())

    def gold_answer(self, example: Example) -> str:
        return " ".join(example.answer.split())

    def is_answer(self, gold: str) -> bool:
        return _digits(gold, self.a_digits + self.b_digits)

    def is_final_thought(self, thought: str) -> bool:
        stripped = thought.strip()
        return bool(stripped) and not stripped.endswith(("+", "="))

    def generate(self, n: int, seed: int, exclude: Iterable[tuple[int, int]] = ()) -> list[str]:
        """`n` data lines with distinct operand pairs, none of them in `exclude`."""
        return [format_example(a, b, self.a_digits, self.b_digits)
                for a, b in sample_pairs(self.a_digits, self.b_digits, n, seed, exclude)]


_SIZE = re.compile(r"^(?:mult)?(\d+)(?:x|by)(\d+)$")


def multiplication_task(name: str) -> Multiplication | None:
    """`4by4`, `4x4`, `mult3x3`, `mult12x3` ... -> a Multiplication task (None if no match)."""
    match = _SIZE.match(name)
    if not match:
        return None
    a, b = int(match.group(1)), int(match.group(2))
    if a < 1 or b < 1:
        return None
    canonical = f"{a}by{b}" if (a, b) in ((4, 4), (5, 5)) else f"mult{a}x{b}"
    return Multiplication(a, b, canonical)
