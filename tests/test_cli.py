"""The user-facing commands on a tiny run folder: evaluation_batch.py, cal_acc_gsm.py, run_eval.sh."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import cal_acc_gsm
import evaluation_batch
from conftest import FIXTURES, ROOT, TINY
from dot.config import compose_config
from dot.loading import load_for_eval
from dot.train import Trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run folders under <tmp>/exp_local: Plaid, SEDD, SEDD with blocks, then (newest) AR."""
    root = tmp_path_factory.mktemp("work")
    made = {}
    for name in ("plaid", "sedd", "sedd_block", "ar"):
        run = root / "exp_local" / "mult2x2" / f"run_{name}"
        trainer = Trainer(compose_config([f"backbone={name}", *TINY]), run)
        trainer.train_step()
        trainer.save()
        (run / ".hydra").mkdir(parents=True)
        from omegaconf import OmegaConf
        OmegaConf.save(trainer.cfg, run / ".hydra" / "config.yaml")
        made[name] = run
    return root, made


def test_evaluation_batch_writes_results_and_summary(runs, capsys):
    _, made = runs
    out = made["sedd"] / "eval" / "custom"
    code = evaluation_batch.main(["--weights_path", str(made["sedd"]), "--limit", "6",
                                  "--sampling_timesteps", "2", "--runs", "2", "--apply_sc",
                                  "--output", str(out), "--no_progress"])
    assert code == 0
    records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(records) == 12 and {r["run"] for r in records} == {0, 1}
    assert all(r["nfe"] == 3 for r in records)  # 2 steps + the final denoiser
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert set(summary["sc"]) == {"1", "2"}
    assert "SC@k" in capsys.readouterr().out
    assert (out.parent / "accuracy_vs_T-custom-n6.png").is_file() and (out.parent / "custom.sc.png").is_file()


def test_block_diffusion_run_decodes_block_by_block(runs):
    """The run's backbone.block_tokens survives the checkpoint: T steps (+ denoiser) per block."""
    _, made = runs
    out = made["sedd_block"] / "eval" / "blocks"
    assert evaluation_batch.main(["--weights_path", str(made["sedd_block"]), "--limit", "4",
                                  "--sampling_timesteps", "2", "--output", str(out),
                                  "--no_progress"]) == 0
    records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(records) == 4
    # 2 confidence steps per block of 2 tokens: 1 or 2 calls a block (a step that reveals both
    # leaves nothing for the second), never a denoiser call; symbols tokens + EOS
    for r in records:
        n_blocks = math.ceil((len(r["prediction"].split()) + 1) / 2)
        assert n_blocks <= r["nfe"] <= 2 * n_blocks, r
    backbone, _ = load_for_eval(str(made["sedd_block"]), torch.device("cpu"))
    assert backbone.block_tokens == 2 and not backbone.model.time_conditioning


def test_parallel_commit_and_block_size_flags(runs, capsys):
    """--threshold 1e-9 makes every position sure: one call per block, whatever T, and the
    per-example count is in the records; --block_tokens 4 halves the blocks; both flags are
    named errors on a backbone without them (AR) and on a model trained without blocks."""
    _, made = runs
    run = made["sedd_block"]
    out = run / "eval" / "fast"
    assert evaluation_batch.main(["--weights_path", str(run), "--limit", "4", "--threshold",
                                  "1e-9", "--sampling_timesteps", "8", "--output", str(out),
                                  "--no_progress"]) == 0
    fast = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    for r in fast:
        assert r["nfe"] == math.ceil((len(r["prediction"].split()) + 1) / 2), r
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["nfe_max"] == max(r["nfe"] for r in fast)
    assert evaluation_batch.main(["--weights_path", str(run), "--limit", "4", "--threshold",
                                  "1e-9", "--block_tokens", "4", "--output", str(out),
                                  "--no_progress"]) == 0
    wide = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    for r in wide:
        assert r["nfe"] == math.ceil((len(r["prediction"].split()) + 1) / 4), r
    capsys.readouterr()
    assert evaluation_batch.main(["--weights_path", str(made["ar"]), "--threshold", "0.9"]) == 2
    assert "threshold do not apply to the ar backbone" in capsys.readouterr().err
    assert evaluation_batch.main(["--weights_path", str(made["sedd"]), "--block_tokens", "4",
                                  "--limit", "2", "--no_progress"]) == 2
    assert "trained without blocks" in capsys.readouterr().err


def test_per_thought_writes_one_row_per_thought_and_needs_multipass(runs, capsys):
    _, made = runs
    run = made["sedd_block"]
    assert evaluation_batch.main(["--weights_path", str(run), "--per_thought"]) == 2
    assert "--per_thought decodes DoT-MP passes" in capsys.readouterr().err
    out = run / "eval" / "passes"
    assert evaluation_batch.main(["--weights_path", str(run), "--per_thought", "--cot",
                                  "--limit", "3", "--output", str(out)]) == 0
    rows = json.loads((run / "eval" / "passes-per_thought.json").read_text())["thoughts"]
    # mult2x2 chains: two partial products, then the answer; every example has all three
    assert [(r["thought"], r["examples"]) for r in rows] == [(0, 3), (1, 3), (2, 3)]
    assert all(0.0 <= r["exact"] <= 1.0 for r in rows)
    assert "thought  examples  exact   tokens" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--sampling_timesteps", "0"], "--sampling_timesteps must be >= 1"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--runs", "-1"], "--runs must be >= 1"),
    (["--threshold", "1.5"], "--threshold must be in (0, 1]"),
    (["--score_temp", "0"], "--score_temp must be > 0"),
    (["--dataset", "6by6x"], "--dataset: unknown task '6by6x'"),
    (["--data_path", "/nonexistent/test.txt"], "--data_path /nonexistent/test.txt: no such file"),
])
def test_bad_flags_fail_before_any_model_is_loaded(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluation_batch.main(["--weights_path", "owner/not-downloaded", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_missing_weights_path_is_named_before_anything_loads(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluation_batch.main(["--weights_path", "/nonexistent/run"])
    assert exit_info.value.code == 2
    assert "--weights_path /nonexistent/run: no such file or folder" in capsys.readouterr().err


def test_backbone_specific_flags_are_rejected_by_name(runs, capsys):
    _, made = runs
    assert evaluation_batch.main(["--weights_path", str(made["sedd"]), "--score_temp", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "score_temp do not apply to the sedd backbone" in err
    for flags in (["--dpm_solver"], ["--predictor", "ancestral"]):  # Plaid's samplers on SEDD
        assert evaluation_batch.main(["--weights_path", str(made["sedd"]), "--limit", "1",
                                      "--no_progress", *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "unknown predictor" in err[0] and "analytic" in err[0]


def test_defaults_use_the_newest_run_and_cal_acc_scores_it(runs, capsys, monkeypatch):
    root, made = runs
    monkeypatch.chdir(root)
    os.utime(made["ar"] / "checkpoints-meta" / "checkpoint.pth")  # the newest run
    assert evaluation_batch.main(["--limit", "4", "--no_progress"]) == 0
    assert "ar from" in capsys.readouterr().out
    assert (made["ar"] / "eval" / "test-T1-first4.jsonl").is_file()
    assert cal_acc_gsm.main([]) == 0
    assert "test-T1-first4.jsonl" in capsys.readouterr().out
    # A Plaid-only flag asks for the newest Plaid run.
    assert evaluation_batch.main(["--dpm_solver", "--sampling_timesteps", "8", "--limit", "3",
                                  "--no_progress"]) == 0
    assert "plaid from" in capsys.readouterr().out
    summary = json.loads((made["plaid"] / "eval" / "test-T8-predictor=dpm_solver-first3.summary.json")
                         .read_text())
    assert summary["nfe_per_example"] == 9  # 8 solver steps + the decoding call at the end


def test_run_eval_sweep_decodes_every_T_and_scores_the_run(runs):
    """`bash run_eval.sh sweep RUN`: one result file per T = 1..64, then cal_acc_gsm on them.
    A 2-token block never needs more than 2 network calls, whatever T is (reuse_unchanged)."""
    _, made = runs
    run = made["sedd_block"]
    proc = subprocess.run(["bash", str(ROOT / "run_eval.sh"), "sweep", str(run), "--limit", "2"],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    nfe = {}
    for T in (1, 2, 4, 8, 16, 32, 64):
        summary = json.loads((run / "eval" / f"test-T{T}-first2.summary.json").read_text())
        assert summary["steps"] == T and summary["n_examples"] == 2
        nfe[T] = summary["nfe_per_example"]
        assert f"test-T{T}-first2.jsonl" in proc.stdout
    assert all(nfe[T] <= 2 * nfe[1] for T in nfe)  # T = 1: one call per block


def test_weights_path_accepts_checkpoint_files_and_folders(runs):
    """The run folder, its checkpoints/ folder (newest snapshot) or a checkpoint file; an older
    snapshot's results carry its step, so they never overwrite the run's own."""
    _, made = runs
    run = made["ar"]
    (run / "checkpoints").mkdir(exist_ok=True)
    for step in (1, 3):
        shutil.copy(run / "checkpoints-meta" / "checkpoint.pth",
                    run / "checkpoints" / f"checkpoint_{step}.pth")
    cases = {run / "checkpoints": "test-T1-first2-step3",
             run / "checkpoints" / "checkpoint_1.pth": "test-T1-first2-step1",
             run / "checkpoints-meta" / "checkpoint.pth": "test-T1-first2"}
    for path, name in cases.items():
        target = run / "eval" / f"{name}.jsonl"
        target.unlink(missing_ok=True)
        assert evaluation_batch.main(["--weights_path", str(path), "--limit", "2",
                                      "--no_progress"]) == 0
        assert target.is_file(), path


def test_another_dataset_gets_its_own_name_and_overflow_is_an_error(runs, capsys):
    _, made = runs
    run = made["sedd"]
    assert evaluation_batch.main(["--weights_path", str(run), "--dataset", "mult1x1", "--limit",
                                  "2", "--sampling_timesteps", "1", "--no_progress"]) == 0
    assert (run / "eval" / "mult1x1-test-T1-first2.jsonl").is_file()
    capsys.readouterr()
    # GSM8K questions do not fit in the rows of a 2x2 run: an error, never "0 %" (either mode)
    for mode in ([], ["--cot"]):
        assert evaluation_batch.main(["--weights_path", str(run), "--dataset", "gsm8k",
                                      "--data_path", str(FIXTURES / "gsm8k_small.txt"), "--limit",
                                      "2", "--no_progress", *mode]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "leaving no room to generate" in err[0], err
    assert not list((run / "eval").glob("gsm8k_small-*"))


def test_plaid_only_flags_without_a_plaid_run_name_the_runs_there(tmp_path):
    from omegaconf import OmegaConf

    from dot.checkpoint import CheckpointError, latest_run

    run = tmp_path / "exp_local" / "mult2x2" / "only_sedd"
    (run / "checkpoints-meta").mkdir(parents=True)
    (run / "checkpoints-meta" / "checkpoint.pth").write_bytes(b"")
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"backbone": {"name": "sedd"}}), run / ".hydra" / "config.yaml")
    assert latest_run(tmp_path / "exp_local") == run
    with pytest.raises(CheckpointError, match=r"predictor=dpm_solver.*sedd \(.*only_sedd\)"):
        latest_run(tmp_path / "exp_local", accepting={"predictor": "dpm_solver"})
    assert latest_run(tmp_path / "exp_local", accepting={"predictor": "analytic"}) == run


@pytest.mark.parametrize("script", ["run_train.sh", "run_eval.sh"])
def test_recipe_scripts_list_their_recipes(script):
    """`--help` names every recipe of the script's case list; an unknown one is refused."""
    import re

    text = (ROOT / script).read_text()
    recipes = re.findall(r"^  ([a-z][a-z0-9|-]*)\)", text, flags=re.M)
    assert len(recipes) >= 5
    shown = subprocess.run(["bash", str(ROOT / script), "--help"], capture_output=True, text=True)
    assert shown.returncode == 0
    listed = [line.split()[0] for line in shown.stdout.splitlines()[2:]]
    assert listed == recipes
    bad = subprocess.run(["bash", str(ROOT / script), "no-such-recipe"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "unknown recipe 'no-such-recipe'" in bad.stderr


def test_sampler_flags_come_from_the_backbones():
    """evaluation_batch.py names no backbone's option: each flag is declared by a backbone
    (`Backbone.sampler_flags`), passes only when given, and an alias flag sets its options."""
    from dot.backbone import backbone_class, backbone_names

    parse = evaluation_batch.parse_args
    assert parse([]).options == {}
    assert parse(["--dpm_solver", "--score_temp", "0.5"]).options == {"predictor": "dpm_solver",
                                                                       "score_temp": 0.5}
    assert parse(["--threshold", "0.9", "--no-sliding"]).options == {"threshold": 0.9,
                                                                     "sliding": False}
    declared = set(vars(parse([])))
    for name in backbone_names():
        assert backbone_class(name).sample_options <= declared
    with pytest.raises(SystemExit):
        parse(["--block_tokens", "0"])  # the flag's check: a count
