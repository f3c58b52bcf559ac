"""GSM8K in the GSM8K-Aug equation format: `question||<<a=b>> <<c=d>> #### answer`."""
from __future__ import annotations

import re

from dot.tasks.base import Example, Task

_NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)$")


def normalise_number(text: str) -> str:
    """Canonical form of a numeric answer: no thousands commas, no leading '+', no trailing
    '.', no leading zeros, integral decimals as integers ('1,000.0' -> '1000', '-3' stays).
    Text that is not a number comes back stripped, commas removed."""
    text = text.strip().replace(",", "").rstrip(".").strip()
    if text.startswith("+"):
        text = text[1:]
    if not _NUMBER.match(text):
        return text
    negative = text.startswith("-")
    digits = text.lstrip("-")
    whole, _, frac = digits.partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    value = whole + ("." + frac if frac else "")
    return "-" + value if negative and value != "0" else value


class GSM8K(Task):
    name = "gsm8k"
    data_dir = "gsm8k"

    def check_line(self, source: str, target: str) -> str | None:
        answer = target.split("####", 1)[1]
        if not self.is_answer(answer):
            return f"the answer {answer.strip()!r} is not a number"
        return None

    def is_answer(self, gold: str) -> bool:
        return bool(_NUMBER.match(normalise_number(gold)))

    def thoughts(self, target: str) -> list[str]:
        # One equation per thought; the last equation keeps '#### answer'. Every thought starts
        # with a space, so their concatenation is ' ' + target.
        pieces = target.split(" ")
        return [" " + p for p in pieces[:-3] + [" ".join(pieces[-3:])]]

    def answer_only(self, answer: str) -> str:
        return " #### " + answer

    def extract_answer(self, generated: str) -> str:
        if "####" not in generated:
            return normalise_number(generated)
        return normalise_number(generated.split("####", 1)[1].split("\n")[0])

    def gold_answer(self, example: Example) -> str:
        return normalise_number(example.answer)

    def is_final_thought(self, thought: str) -> bool:
        return "####" in thought
