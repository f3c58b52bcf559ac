"""finetune.py as a user runs it: resume keeps the run's config, Ctrl-C / SIGTERM save and
resume, a run shorter than log_freq finishes with its figures, a failed start leaves nothing."""
import csv
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

import conftest
from conftest import ROOT

TINY = ["backbone=ar", *conftest.TINY, "data.n_train=200", "eval.n_examples=8"]
META = ("checkpoints-meta", "checkpoint.pth")


def finetune(run, *overrides, wait=True):
    cmd = [sys.executable, "finetune.py", *TINY, *overrides, f"hydra.run.dir={run}"]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def step_of(run) -> int:
    return int(torch.load(run.joinpath(*META), weights_only=True)["step"])


def test_short_run_then_resume_keeps_its_config(tmp_path):
    run = tmp_path / "run"
    first = finetune(run, "training.n_iters=6", "training.log_freq=50")
    assert first.returncode == 0, first.stderr
    # fewer steps than log_freq: the steps are still logged and the loss figure drawn
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [6] and (run / "loss.png").is_file()
    # a default that changed since the run started (here: a key the code no longer has) is
    # not a change of the run: both sides are composed by today's code
    stored = OmegaConf.load(run / ".hydra" / "config.yaml")
    stored.training.retired_default = 1
    OmegaConf.save(stored, run / ".hydra" / "config.yaml")
    config = (run / ".hydra" / "config.yaml").read_text()
    overrides = (run / ".hydra" / "overrides.yaml").read_text()

    refused = finetune(run, "training.batch_size=16")
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "training.batch_size: 8 -> 16" in last
    assert "allow_config_change" in last

    again = finetune(run)  # only hydra.run.dir: the run's own overrides are replayed
    assert again.returncode == 0, again.stderr
    assert "resumed from" in (run / "finetune.log").read_text()
    assert (run / ".hydra" / "config.yaml").read_text() == config
    assert (run / ".hydra" / "overrides.yaml").read_text() == overrides
    assert step_of(run) == 6

    more = finetune(run, "training.n_iters=9", "training.allow_config_change=true")
    assert more.returncode == 0, more.stderr
    assert step_of(run) == 9
    changes = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "changes.yaml"))
    assert changes[0]["step"] == 6
    assert changes[0]["changes"] == {"training.n_iters": {"from": 6, "to": 9}}
    assert OmegaConf.load(run / ".hydra" / "config.yaml").training.n_iters == 9
    assert OmegaConf.load(run / ".hydra" / "config.original.yaml").training.n_iters == 6
    assert "training.n_iters=9" in OmegaConf.load(run / ".hydra" / "overrides.yaml")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_the_rerun_resumes(tmp_path, sig):
    run = tmp_path / "run"
    proc = finetune(run, "training.n_iters=3000", "training.log_freq=5",
                    "training.snapshot_freq_for_preemption=100000", wait=False)
    deadline = time.time() + 120
    while not (run / "logs" / "metrics.csv").is_file():  # training has started
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    step = step_of(run)
    assert 5 <= step < 3000
    assert f"interrupted ({sig.name}) at step {step}" in last
    assert f"python finetune.py hydra.run.dir={run}" in last

    resumed = finetune(run, f"training.n_iters={step + 5}", "training.allow_config_change=true")
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {step}" in (run / "finetune.log").read_text()
    assert step_of(run) == step + 5


def test_failed_start_leaves_no_run_folder(tmp_path):
    run = tmp_path / "new_run"
    missing = tmp_path / "nowhere" / "train.txt"
    result = finetune(run, f"data.train={missing}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(missing) in result.stderr.strip().splitlines()[-1]
    assert not run.exists()


def test_kill_9_at_a_random_point_then_rerun_gives_the_same_losses(tmp_path):
    n = 400  # long enough that the kill lands while training, however fast the machine is
    common = [f"training.n_iters={n}", "training.log_freq=1",
              "training.snapshot_freq_for_preemption=4"]
    full = finetune(tmp_path / "full", *common)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    proc = finetune(run, *common, wait=False)
    deadline = time.time() + 120
    while not run.joinpath(*META).is_file():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.1))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = step_of(run)
    assert proc.returncode == -signal.SIGKILL and killed_at < n
    rerun = finetune(run)
    assert rerun.returncode == 0, rerun.stderr
    assert f"at step {killed_at}" in (run / "finetune.log").read_text()

    def losses(r):
        return {int(row["step"]): float(row["loss"])
                for row in csv.DictReader(open(r / "logs" / "metrics.csv"))}

    expected, got = losses(tmp_path / "full"), losses(run)
    assert sorted(got) == list(range(1, n + 1))
    assert [got[s] for s in range(1, n + 1)] == pytest.approx(
        [expected[s] for s in range(1, n + 1)], rel=1e-6)
