import json

import cal_acc_gsm
from dot.report.score_files import score_file

E = "<|endoftext|>"


def _row(question, gold, pred):
    return {"recover": f"{question}{E}||{pred}{E}{E}", "source": f"{question}{E}||{gold}{E}{E}"}


def test_official_format_hand_counted(tmp_path, capsys):
    rows = [
        _row("q1", "<<3+4=7>> #### 7", "<<3+4=7>> #### 7"),             # right (both scorers)
        _row("q2", "<<5-8=-3>> #### -3", "<<5-8=-3>> #### -3"),         # right; official rejects '-3'
        _row("q3", "<<2*1000=2000>> #### 2,000", "<<2*1e3>> #### 2000"),  # right; official rejects
        _row("q4", "<<1+1=2>> #### 2", "<<1+1=3>> #### 3"),             # wrong
        {"recover": "q5 truncated, no end marker", "source": f"q5{E}||<<1=1>> #### 1{E}"},  # wrong
    ]
    path = tmp_path / "step_8.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    score = score_file(path)
    assert score["accuracy"] == 3 / 5 and score["official_accuracy"] == 1 / 5
    assert cal_acc_gsm.main(["--generated_output_path", str(tmp_path), "--steps", "8"]) == 0
    out = capsys.readouterr().out
    assert "60.0" in out and "20.0" in out and "official scorer %" in out


def test_our_format_with_runs_gives_sc_table(tmp_path, capsys):
    recs = []
    for run, preds in enumerate([["7", "1"], ["7", "2"], ["3", "2"]]):
        for task_id, (gold, pred) in enumerate(zip(["7", "2"], preds)):
            recs.append(dict(task="gsm8k", task_id=task_id, run=run, question="q", gold=gold,
                             prediction=f" <<x>> #### {pred}", answer=pred, correct=pred == gold,
                             nfe=8, seconds=0.1))
    path = tmp_path / "test-T8-runs3.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    score = score_file(path)
    assert score["runs"] == 3 and score["accuracy"] == 4 / 6  # 1 + 2 + 1 right
    assert score["sc"] == {1: 0.5, 2: 0.5, 3: 1.0}
    assert cal_acc_gsm.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "SC@3" in out
    assert "official" not in out and "None" not in out  # that column is for official files


def test_unknown_format_is_an_error(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text('{"foo": 1}\n')
    assert cal_acc_gsm.main([str(tmp_path / "x.jsonl")]) == 2
    assert "neither dot results" in capsys.readouterr().err


def test_result_files_sort_by_the_number_of_steps():
    from pathlib import Path

    from dot.report.score_files import natural_key
    names = ["test-T16.jsonl", "test-T2.jsonl", "test-T1.jsonl", "test-T64-mp.jsonl"]
    assert [p.name for p in sorted(map(Path, names), key=natural_key)] == \
        ["test-T1.jsonl", "test-T2.jsonl", "test-T16.jsonl", "test-T64-mp.jsonl"]
