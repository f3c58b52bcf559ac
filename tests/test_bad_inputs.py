"""A corpus of bad inputs, each made here from a good one: every reader, loader and config
check gives one error of the documented class that names the file (and line) or key."""
import json

import pytest

from dot.config import ConfigError, check_config, compose_config
from dot.data import DataFormatError, read_examples
from dot.tasks import format_example, get_task
from dot.train import NonFiniteLossError, Trainer

GOOD_4X4 = format_example(7365, 4347, 4, 4)  # the rule that reproduces the paper's 4x4 file
ANSWER = "#### 5 5 6 5 1 0 2 3"  # 32015655, least significant digit first
GOOD_GSM = "Tom has 3 apples and buys 4 more. How many apples?||<<3+4=7>> #### 7"


def write(tmp_path, name, data: bytes | str):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def test_the_good_lines_read():
    """The corpus' starting points are valid (7365 * 4347 = 32015655)."""
    assert 7365 * 4347 == 32015655 and GOOD_4X4.startswith("5 6 3 7 * 7 4 3 4||")
    assert GOOD_4X4.endswith(ANSWER)
    assert get_task("4by4").check_line(*GOOD_4X4.split("||")) is None
    assert get_task("gsm8k").check_line(*GOOD_GSM.split("||")) is None


@pytest.mark.parametrize("task, text, line, message", [
    ("4by4", GOOD_4X4.replace("5 6 3 7 *", "5 x 3 7 *"), 1, "two operands of 4 and 4 digits"),
    ("4by4", GOOD_4X4.replace("5 6 3 7 *", "5 6 3 *"), 1, "two operands of 4 and 4 digits"),
    ("4by4", GOOD_4X4.replace(ANSWER, ANSWER[:-2]), 1, "8 space-separated digits"),
    ("4by4", GOOD_4X4.replace(ANSWER, ANSWER[:-1] + "4"), 1, "the answer is not 7365 * 4347"),
    ("4by4", GOOD_4X4 + "\n" + GOOD_4X4 + "\n\n", 3, "blank line"),
    ("gsm8k", GOOD_GSM.replace("#### 7", "#### seven"), 1, "is not a number"),
    ("gsm8k", GOOD_GSM + "\r\n", 1, "carriage return"),
    ("gsm8k", GOOD_GSM + "\n" + GOOD_GSM.replace("||", "|"), 2, "exactly one '||'"),
])
def test_bad_text_lines_name_file_and_line(tmp_path, task, text, line, message):
    path = write(tmp_path, "bad.txt", text + ("" if text.endswith("\n") else "\n"))
    with pytest.raises(DataFormatError) as info:
        read_examples(path, get_task(task))
    assert str(info.value).startswith(f"{path}:{line}: ") and message in str(info.value)


def test_invalid_utf8_names_the_line(tmp_path):
    path = write(tmp_path, "bad.txt", (GOOD_GSM + "\n").encode() * 2 + b"Caf\xe9||<<1=1>> #### 1\n")
    with pytest.raises(DataFormatError, match=rf"^{path}:3: not UTF-8 \(byte 0xe9\)"):
        read_examples(path, get_task("gsm8k"))


def test_byte_order_mark_is_dropped(tmp_path):
    path = write(tmp_path, "bom.txt", b"\xef\xbb\xbf" + (GOOD_GSM + "\n").encode())
    assert read_examples(path, get_task("gsm8k"))[0].source == GOOD_GSM.split("||")[0]


@pytest.mark.parametrize("row, message", [
    ({"src": "q?", "rationales": "<<1+1=2>>", "trg": None}, "'trg' must be"),
    ({"src": None, "rationales": "", "trg": "2"}, "'src' must be"),
    ({"src": "q?", "rationales": ["<<1+1=2>>"], "trg": "2"}, "'rationales' must be"),
    ({"src": "q?", "rationales": "", "trg": "two"}, "is not a number"),
])
def test_bad_jsonl_fields(tmp_path, row, message):
    good = {"src": "q?", "rationales": "<<1+1=2>>", "trg": 2}
    path = write(tmp_path, "bad.jsonl", json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataFormatError) as info:
        read_examples(path, get_task("gsm8k"))
    assert str(info.value).startswith(f"{path}:2: ") and message in str(info.value)


@pytest.mark.parametrize("override, message", [
    ("training.batch_size=eight", "training.batch_size='eight' must be an integer >= 1"),
    ("training.batch_size=0", "training.batch_size=0 must be an integer >= 1"),
    ("optim.lr=nan", "optim.lr=nan must be a finite number > 0"),
    ("optim.lr=inf", "optim.lr=inf must be a finite number > 0"),
    ("optim.lr=-0.001", "optim.lr=-0.001 must be a finite number > 0"),
    ("training.max_minutes=0", "training.max_minutes=0 must be null or a number > 0"),
    ("sampling.steps=0", "sampling.steps=0 must be an integer >= 1"),
    ("training.ema=1.5", "training.ema=1.5 must be a number in [0, 1)"),
])
def test_config_values_are_checked_by_key(override, message):
    with pytest.raises(ConfigError) as info:
        check_config(compose_config([override]))
    assert message in str(info.value)


@pytest.mark.parametrize("recipe", [[], ["backbone=plaid"], ["backbone=ar"], ["backbone=sedd"],
                                    ["experiment=cpu_4x4_fast"], ["model=plaid1b", "backbone=plaid"]])
def test_every_shipped_config_passes_the_check(recipe):
    check_config(compose_config(recipe))


def test_a_loss_that_turns_non_finite_stops_the_run_with_its_step(tmp_path):
    cfg = compose_config(["backbone=ar", "data.task=mult2x2", "training.batch_size=8",
                          "training.eval_freq=0", "model.hidden_size=32", "model.n_blocks=1",
                          "device=cpu", "optim.lr=1e30", "optim.grad_clip=null",
                          "optim.warmup=0", "training.n_iters=50", "training.ema=0"])
    trainer = Trainer(cfg, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"training stopped at step \d+: loss") as info:
        trainer.run()
    assert "optim.lr (now 1e+30)" in str(info.value)
    assert 1 < trainer.step < 50
