"""Token accuracy, self-consistency voting and SC@k.

Vote tie-break (deterministic): among the most frequent non-empty answers, the one that
appeared first (lowest run index) wins. An empty answer (nothing extracted) only wins when
every run is empty. The official DoT code breaks ties the other way (latest first occurrence).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence


def majority_vote(answers: Sequence[str]) -> str:
    """The self-consistency answer of a list of runs' answers (see module docstring)."""
    if not answers:
        raise ValueError("majority_vote needs at least one answer")
    counts = Counter(a for a in answers if a)
    if not counts:
        return ""
    best = max(counts.values())
    return next(a for a in answers if a and counts[a] == best)


def sc_accuracy(per_example: Iterable[tuple[str, Sequence[str]]], k: int) -> float:
    """Accuracy of voting over the first `k` runs; items are (gold, answers by run)."""
    items = list(per_example)
    if not items:
        return 0.0
    return sum(majority_vote(runs[:k]) == gold for gold, runs in items) / len(items)


def sc_table(per_example: Iterable[tuple[str, Sequence[str]]], runs: int) -> dict[int, float]:
    """{k: SC@k} for k = 1..runs."""
    items = list(per_example)
    return {k: sc_accuracy(items, k) for k in range(1, runs + 1)}


def token_accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Share of the gold ids matched position by position (an empty gold counts as 0 of 1)."""
    return sum(a == b for a, b in zip(pred, gold)) / max(len(gold), 1)
