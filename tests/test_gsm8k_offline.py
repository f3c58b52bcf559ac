"""GSM8K without the network: the message that says what is missing, the generated
`gsm8k_toy` word problems that run the workflow end to end, and `data.tokenizer=auto`."""
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from dot.config import compose_config
from dot.data import load_split, read_examples
from dot.tasks import get_task
from dot.tokenization import TokenizerError, run_tokenizer_name, tokenizer_name
from dot.train import Trainer

TRAIN_SHA = "6f9a20bc1476ca65eee9bc5117c2d0582b1f1733d5148ffc0ff29cad2a9e9c6b"  # upstream train.txt


def test_missing_gsm8k_train_split_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_split(get_task("gsm8k"), "train", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "gsm8k" / "train.txt") in message
    assert TRAIN_SHA in message and "87,580,525 bytes" in message
    assert "python -m dot.data fetch gsm8k" in message and "gsm8k_toy" in message


def test_finetune_on_gsm8k_offline_is_one_line(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "finetune.py", "data.task=gsm8k",
                             f"data.train={tmp_path / 'absent.txt'}", f"hydra.run.dir={run}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not run.exists()


def _check_equations(target: str) -> str:
    """Every <<expr=value>> holds, each step uses the previous result; returns the answer."""
    equations = re.findall(r"<<([^=]+)=([^>]+)>>", target)
    assert len(equations) == 2
    for expr, value in equations:
        assert eval(expr) == float(value)  # noqa: S307 - digits and one operator
    assert equations[0][1] in equations[1][0]
    return equations[-1][1]


def test_word_problems_are_gsm8k_lines_with_right_arithmetic(tmp_path):
    task = get_task("gsm8k_toy")
    examples, source = load_split(task, "valid", root=tmp_path)
    assert len(examples) == 500 and "generated" in source
    for e in examples:
        answer = _check_equations(e.target)
        assert task.gold_answer(e) == answer and int(answer) >= 0
        assert len(e.thoughts) == 2 and task.is_final_thought(e.thoughts[-1])
    # a file of such lines reads back through the GSM8K reader
    path = tmp_path / "toy.txt"
    path.write_text("".join(f"{e.source}||{e.target}\n" for e in examples[:20]))
    assert [e.target for e in read_examples(path, task)] == [e.target for e in examples[:20]]
    train, _ = load_split(task, "train", n_train=3000, seed=1, root=tmp_path)
    again, _ = load_split(task, "train", n_train=3000, seed=1, root=tmp_path)
    assert [e.source for e in train] == [e.source for e in again]
    test, _ = load_split(task, "test", root=tmp_path)
    held_out = {e.source for e in examples + test}
    assert len({e.source for e in train}) == 3000 and not held_out & {e.source for e in train}


@pytest.mark.parametrize("overrides, expected", [
    (["data.task=mult3x3"], "char"),
    (["data.task=gsm8k_toy", "backbone=plaid"], "char"),
    (["data.task=gsm8k"], "gpt2"),              # SEDD's pretrained tokenizer
    (["data.task=gsm8k", "backbone=plaid"], "owt2"),
    (["data.task=gsm8k", "backbone=ar"], "gpt2"),
    (["data.task=gsm8k", "data.tokenizer=char"], "char"),  # a named tokenizer wins
])
def test_auto_tokenizer(overrides, expected):
    assert run_tokenizer_name(compose_config(overrides)) == expected


def test_auto_tokenizer_needs_a_backbone_tokenizer_for_language():
    with pytest.raises(TokenizerError, match="data.tokenizer=auto"):
        tokenizer_name("auto", None, None)


@pytest.mark.parametrize("multipass", [False, True])
def test_gsm8k_toy_run_trains_decodes_and_scores(tmp_path, multipass):
    cfg = compose_config(["data.task=gsm8k_toy", f"data.multipass={multipass}", "data.n_train=64",
                          "training.batch_size=8", "training.n_iters=2", "training.eval_freq=0",
                          "eval.n_examples=4", "eval.cot_steps=3", "model.hidden_size=32",
                          "model.n_blocks=1", "model.cond_dim=16", "device=cpu"])
    summary = Trainer(cfg, tmp_path).run()
    assert summary["n_examples"] == 4 and 0.0 <= summary["accuracy"] <= 1.0
    assert summary["nfe_per_example"] >= 1
    records = (tmp_path / "eval").glob("*.jsonl")
    assert next(records).read_text().count('"task": "gsm8k_toy"') == 4
