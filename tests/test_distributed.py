"""Data parallelism on torch's engine (training.strategy): 2 gloo processes on CPU reproduce the
one-process run, whatever the strategy; checkpoints stay in the one-process layout."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from dot.checkpoint import META, load_checkpoint
from dot.distributed import Context, Engine, resolve_strategy

# decay none: a run stopped at step 2 and resumed to step 4 follows the same lr
TINY = ["data.task=mult2x2", "training.batch_size=8", "training.eval_freq=0", "training.log_freq=1",
        "eval.n_examples=4", "model.hidden_size=32", "model.n_blocks=2", "model.cond_dim=16",
        "device=cpu", "optim.decay=none", "training.snapshot_freq_for_preemption=100"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def finetune(run_dir: Path, *overrides: str, procs: int = 1) -> None:
    launch = [sys.executable]
    if procs > 1:
        launch += ["-m", "torch.distributed.run", "--nproc_per_node", str(procs),
                   "--master_port", "29531"]
    proc = subprocess.run([*launch, "finetune.py", *TINY, *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(run_dir: Path) -> list[float]:
    with open(run_dir / "logs" / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_strategy_resolution():
    assert resolve_strategy("auto", 1) == "none" and resolve_strategy("fsdp", 1) == "none"
    assert resolve_strategy("auto", 2) == "ddp" and resolve_strategy("zero", 4) == "zero"
    with pytest.raises(ValueError, match="unsynchronised"):
        resolve_strategy("none", 2)
    with pytest.raises(ValueError, match="training.strategy='deepspeed'"):
        resolve_strategy("deepspeed", 2)


def test_grad_norm_and_loss_module_in_one_process():
    model = torch.nn.Linear(2, 1, bias=True)
    engine = Engine("none", Context(0, 1, torch.device("cpu")), model,
                    loss=lambda x, _: (model(x).sum(), {}), eval_loss=None, shard_units=[])
    loss, _ = engine.module(torch.tensor([[1.0, 2.0], [3.0, -1.0]]), None)
    loss.backward()  # d/dw = sum of inputs = (4, 1), d/db = 2
    assert engine.grad_norm(list(model.parameters())).item() == pytest.approx((16 + 1 + 4) ** 0.5)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Reference runs, one process, accum 1, per backbone."""
    runs = {}

    def get(backbone: str) -> Path:
        if backbone not in runs:
            runs[backbone] = tmp_path_factory.mktemp(f"one-{backbone}")
            finetune(runs[backbone], f"backbone={backbone}", "training.n_iters=4")
        return runs[backbone]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("backbone,strategy", [("sedd", "ddp"), ("sedd", "zero"), ("sedd", "fsdp"),
                                               ("plaid", "ddp"), ("plaid", "zero"),
                                               ("plaid", "fsdp"), ("ar", "fsdp")])
def test_two_processes_match_one_process(tmp_path, one_process, backbone, strategy):
    """2 processes x 2 accumulation steps give the one-process loss curve to 1e-5, and the same
    final weights and evaluation."""
    one = one_process(backbone)
    two = tmp_path / "two"
    finetune(two, f"backbone={backbone}", "training.n_iters=4", f"training.strategy={strategy}",
             "training.accum=2", procs=2)
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    assert len(losses(one)) == 4 and len(set(losses(one))) > 1
    a, b = load_checkpoint(one / META), load_checkpoint(two / META)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:  # full tensors in the one-process layout, whatever the strategy
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-6)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    summary = lambda run: json.loads(next((run / "eval").glob("*.summary.json")).read_text())  # noqa: E731
    assert summary(two)["accuracy"] == summary(one)["accuracy"]
    assert (two / "loss.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["full", "sharded"])
def test_fsdp_run_resumes_under_fsdp_and_in_one_process(tmp_path, one_process, layout):
    """A run stopped at step 2 under fsdp resumes to the same losses under fsdp, and its
    checkpoint (one full file, or a file per process) resumes a one-process run the same way."""
    reference = losses(one_process("sedd"))
    run = tmp_path / "fsdp"
    fsdp = ["backbone=sedd", "training.strategy=fsdp", f"training.checkpoint_format={layout}"]
    finetune(run, *fsdp, "training.n_iters=2", procs=2)
    shards = sorted(p.name for p in (run / "checkpoints-meta").glob("*/*.pth"))
    assert shards == ([] if layout == "full" else ["rank0-of-2.pth", "rank1-of-2.pth"])
    single = tmp_path / "single"
    shutil.copytree(run / "checkpoints-meta", single / "checkpoints-meta")
    finetune(run, *fsdp, "training.n_iters=4", "training.allow_config_change=true", procs=2)
    assert losses(run) == pytest.approx(reference, rel=1e-5)
    if layout == "sharded":  # the step-2 shards were replaced by the step-4 ones
        assert [p.name for p in (run / "checkpoints-meta").iterdir() if p.is_dir()] == [
            "checkpoint-shards-step4"]
    finetune(single, "backbone=sedd", "training.n_iters=4")
    assert losses(single)[-2:] == pytest.approx(reference[2:], rel=1e-5)
    full = load_checkpoint(run / META)  # one process reads a sharded checkpoint whole
    one = load_checkpoint(one_process("sedd") / META)
    for k in one["model"]:
        torch.testing.assert_close(full["model"][k], one["model"][k], rtol=1e-4, atol=1e-6)


def test_sharded_checkpoint_with_a_missing_shard_is_one_clear_error(tmp_path):
    from dot.checkpoint import CheckpointError, save_atomic

    path = tmp_path / "checkpoint.pth"
    save_atomic({"step": 3, "model": {"w": {"__shard__": "/model/w", "shape": [4]}},
                 "shards": {"folder": "checkpoint-shards-step3", "world_size": 2}}, path)
    save_atomic({"/model/w": torch.ones(2)}, tmp_path / "checkpoint-shards-step3" / "rank0-of-2.pth")
    with pytest.raises(CheckpointError, match="rank1-of-2.pth is missing"):
        load_checkpoint(path)
    save_atomic({"/model/w": torch.zeros(2)}, tmp_path / "checkpoint-shards-step3" / "rank1-of-2.pth")
    assert load_checkpoint(path)["model"]["w"].tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.slow
def test_sharded_evaluation_writes_the_one_process_results(tmp_path, one_process):
    """torchrun evaluation_batch.py deals the batches over 2 processes and writes the records
    of one process, in the same order (only the wall-time field differs)."""
    run = one_process("sedd")

    def evaluate(out: Path, procs: int) -> list[dict]:
        launch = [sys.executable] + (["-m", "torch.distributed.run", "--nproc_per_node", "2",
                                      "--master_port", "29532"] if procs > 1 else [])
        args = ["--weights_path", str(run), "--limit", "7", "--batch_size", "2", "--runs", "2",
                "--predictor", "euler", "--sampling_timesteps", "4", "--output", str(out),
                "--no_progress", "--device", "cpu"]
        proc = subprocess.run([*launch, "evaluation_batch.py", *args], cwd=ROOT, env=ENV,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("results: ") == 1  # process 0 alone reports
        lines = out.with_suffix(".jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]
    one, two = evaluate(tmp_path / "one", 1), evaluate(tmp_path / "two", 2)
    assert [r["run"] for r in one] == [0] * 7 + [1] * 7
    assert two == one
    assert len({r["prediction"] for r in one}) > 1  # the euler sampler's noise matters
    assert [r["prediction"] for r in one if r["run"] == 0] != [r["prediction"] for r in one if r["run"] == 1]


@pytest.mark.parametrize("backbone", ["sedd", "plaid"])
def test_activation_checkpointing_keeps_the_losses(tmp_path, backbone):
    """Recomputing every block in backward changes memory, not the numbers (dropout included:
    the recomputation replays the RNG state)."""
    from dot.config import compose_config
    from dot.train import Trainer

    curves, calls = [], []
    for ckpt in (False, True):
        cfg = compose_config([f"backbone={backbone}", *TINY, "training.n_iters=3",
                              f"training.activation_checkpointing={ckpt}", "model.dropout=0.1"])
        trainer = Trainer(cfg, tmp_path / str(ckpt))
        count = [0]
        trainer.backbone.shard_units()[0].register_forward_pre_hook(
            lambda *_: count.__setitem__(0, count[0] + 1))
        curves.append([trainer.train_step()["loss"] for _ in range(3)])
        calls.append(count[0])
    assert curves[1] == pytest.approx(curves[0], rel=1e-6)
    assert calls[1] > calls[0]  # the block really ran again in backward
