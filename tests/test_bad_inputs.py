"""A corpus of bad inputs, each made here from a good one: every reader, loader and config
check gives one error of the documented class that names the file (and line) or key."""
import json
import re

import pytest
import torch
from omegaconf import OmegaConf

from dot.checkpoint import CheckpointError, load_checkpoint
from dot.config import ConfigError, check_config, compose_config
from dot.data import DataFormatError, read_examples
from dot.report.score_files import score_file
from dot.results import ResultsError
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


# ------------------------------------------------------------------ checkpoints and weights
class Exploit:
    def __reduce__(self):
        return (print, ("code ran",))


def _hub(tmp_path, weights="model.safetensors"):
    from test_sedd_load import hub_folder, random_state

    return hub_folder(tmp_path / "hub", random_state(0), weights=weights)


@pytest.mark.parametrize("damage, name, message", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:200]),
     "model.safetensors", "cannot read"),
    (lambda d: (d / "config.json").write_text('{"tokens": 30,'), "config.json", "not valid JSON"),
    (lambda d: (d / "model.safetensors").unlink() or torch.save([torch.zeros(2)],
                                                               d / "pytorch_model.bin"),
     "pytorch_model.bin", "expected a state dict"),
    (lambda d: (d / "model.safetensors").unlink() or torch.save({"w": Exploit()},
                                                               d / "pytorch_model.bin"),
     "pytorch_model.bin", "cannot read"),
])
def test_damaged_sedd_folder_names_the_file(tmp_path, capsys, damage, name, message):
    from sedd_backend import load_model

    folder = _hub(tmp_path)
    damage(folder)
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert str(folder / name) in str(info.value) and message in str(info.value)
    assert "code ran" not in capsys.readouterr().out  # a code-executing pickle is refused


def test_truncated_run_checkpoint_is_one_line_in_the_cli(tmp_path, capsys):
    import evaluation_batch

    cfg = compose_config(["backbone=ar", "data.task=mult2x2", "training.batch_size=8",
                          "model.hidden_size=32", "model.n_blocks=1", "device=cpu"])
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train_step()
    trainer.save()
    (tmp_path / "run" / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / "run" / ".hydra" / "config.yaml")
    meta = tmp_path / "run" / "checkpoints-meta" / "checkpoint.pth"
    meta.write_bytes(meta.read_bytes()[:1000])
    assert evaluation_batch.main(["--weights_path", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(meta) in err[0] and "damaged" in err[0]


def test_missing_checkpoint_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.pth not found"):
        load_checkpoint(tmp_path / "checkpoint.pth")


def test_damaged_plaid_module_file_names_it(tmp_path):
    from plaid.weights import WeightsError, read_state_dicts

    for name in ("noise_schedule", "gamma_bounds", "embedding_matrix", "model"):
        torch.save({"w": torch.zeros(1)}, tmp_path / f"{name}.pt")
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        read_state_dicts(tmp_path)
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pt")
    torch.save([torch.zeros(1)], tmp_path / "gamma_bounds.pt")
    with pytest.raises(WeightsError, match=r"gamma_bounds\.pt: expected a state dict"):
        read_state_dicts(tmp_path)


# ------------------------------------------------------------------ results files
def _ours(**over):
    row = dict(task="gsm8k", task_id=0, run=0, question="q", gold="7", prediction=" #### 7",
               answer="7", correct=True, nfe=1, seconds=0.1)
    return json.dumps({**row, **over})


@pytest.mark.parametrize("lines, message", [
    ([_ours(), _ours(task_id=1)[:-9]], ":2: not a JSON line"),
    ([_ours(), json.dumps({"task": "gsm8k", "run": 0, "gold": "1", "prediction": "x"})],
     ":2: lacks task_id"),
    ([_ours(gold="seven")], ":1: gold answer 'seven' is not a gsm8k answer"),
    ([_ours(run="0")], ":1: 'run' must be an integer"),
    ([json.dumps({"recover": "q<|endoftext|>||#### 1<|endoftext|>",
                  "source": "q<|endoftext|>||#### one<|endoftext|>"})],
     ":1: no numeric gold answer"),
])
def test_bad_result_rows_name_file_and_line(tmp_path, capsys, lines, message):
    import cal_acc_gsm

    path = write(tmp_path, "test-T1.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(ResultsError, match=re.escape(f"{path}{message}")):
        score_file(path)
    assert cal_acc_gsm.main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_tokenizer_files_missing_or_damaged(tmp_path):
    from dot.tokenization import TokenizerError, load_tokenizer

    with pytest.raises(FileNotFoundError, match="absent.json not found"):
        load_tokenizer(str(tmp_path / "absent.json"))
    bad = write(tmp_path, "bad.json", '{"model": ')
    with pytest.raises(TokenizerError, match=rf"{bad} cannot be read"):
        load_tokenizer(str(bad))


def test_files_named_in_the_config_must_exist(tmp_path):
    with pytest.raises(ConfigError) as info:
        check_config(compose_config([f"data.train={tmp_path / 'absent.txt'}",
                                     f"init={tmp_path / 'no_weights'}"]))
    assert f"data.train={tmp_path / 'absent.txt'}: no such file" in str(info.value)
    assert f"init={tmp_path / 'no_weights'}: no such file or folder" in str(info.value)
    check_config(compose_config(["init=louaaron/sedd-small"]))  # a hub id is fetched later
