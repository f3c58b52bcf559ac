import random

import pytest

from conftest import FIXTURES
from dot.collate import SequenceTooLongError, collate, collate_prompts
from dot.data.readers import read_dot_text
from dot.examples import multi_pass_pair, single_pass_pair, tokenize, training_pair
from dot.tasks import format_example, get_task
from dot.tokenization import CharTokenizer

TOK = CharTokenizer()


def _gsm8k_examples():
    task = get_task("gsm8k")
    return task, read_dot_text(FIXTURES / "gsm8k_small.txt", task)


def test_multi_pass_pairs_rebuild_single_pass_target():
    task, examples = _gsm8k_examples()
    for ex in examples:
        tex = tokenize(ex, task, TOK)
        prefix, target = single_pass_pair(tex, TOK)
        assert prefix == TOK.encode(ex.prompt) + [TOK.sep_id]
        assert TOK.decode(target[:-1]) == " " + ex.target and target[-1] == TOK.eos_id
        pieces = [multi_pass_pair(tex, TOK, k) for k in range(len(ex.thoughts))]
        rebuilt = [i for _, t in pieces for i in t]
        assert rebuilt == target  # the passes concatenate to the single-pass target
        # EOS only after the last thought; each prefix holds the earlier thoughts and SEP.
        assert [t[-1] == TOK.eos_id for _, t in pieces] == [False] * (len(pieces) - 1) + [True]
        for k, (p, _) in enumerate(pieces):
            assert p == list(tex.prompt) + [i for t in tex.thoughts[:k] for i in t] + [TOK.sep_id]


def test_glance_and_hidden_thought():
    task = get_task("mult2x2")
    ex = task.make_example(0, *format_example(12, 34, 2, 2).split("||"))
    tex = tokenize(ex, task, TOK)
    prefix, target = multi_pass_pair(tex, TOK, 0, glance=True)
    assert prefix == list(tex.prompt)  # no SEP: the model writes the current thought, SEP, next
    assert target == list(tex.thoughts[0]) + [TOK.sep_id] + list(tex.thoughts[1])
    hidden = tokenize(ex, task, TOK, hidden_thought=True)
    assert [TOK.decode(t) for t in hidden.thoughts] == [ex.answer]
    rng = random.Random(0)
    ks = {len(training_pair(tex, TOK, rng, multipass=True)[0]) for _ in range(200)}
    assert len(ks) == len(tex.thoughts)  # every thought index is drawn


def test_collate_keeps_target_and_cuts_prefix_from_the_left():
    ids, fixed, attn = collate([([1, 2, 3, 4, TOK.sep_id], [10, 11, 12]), ([5, TOK.sep_id], [9])],
                               seq_len=6, pad_id=TOK.pad_id)
    assert ids.tolist() == [[3, 4, TOK.sep_id, 10, 11, 12], [5, TOK.sep_id, 9, 0, 0, 0]]
    assert fixed.tolist() == [[True] * 3 + [False] * 3, [True, True] + [False] * 4]
    assert attn.tolist() == [[True] * 6, [True] * 3 + [False] * 3]
    ids, fixed, _ = collate([([7, TOK.sep_id], list(range(10, 20)))], seq_len=4, pad_id=0)
    assert ids.tolist() == [[TOK.sep_id, 10, 11, 12]] and fixed.sum() == 1


def test_test_time_overflow_names_the_example():
    with pytest.raises(SequenceTooLongError, match="gsm8k example 7: the prompt has 5 tokens"):
        collate_prompts([[1, 2, 3, 4, 1]], seq_len=5, pad_id=0, names=["gsm8k example 7"])
    ids, fixed = collate_prompts([[4, 1], [5, 6, 1]], seq_len=4, pad_id=0)
    assert ids.tolist() == [[4, 1, 0, 0], [5, 6, 1, 0]]
    assert fixed.tolist() == [[True, True, False, False], [True, True, True, False]]
