"""The shared trainer: lr schedule, clipping, EMA, resume and data parallelism."""
import csv
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

import conftest
from dot.backbone import backbone_names
from dot.config import compose_config
from dot.ema import EMA
from dot.train import GradClipper, Trainer, lr_factor

TINY = [*conftest.TINY, "model.n_blocks=2", "training.log_freq=1", "eval.n_examples=4",
        "training.snapshot_freq_for_preemption=3"]


def test_lr_factor_by_hand():
    opt = OmegaConf.create({"zero_lr_steps": 2, "warmup": 10, "decay": "linear"})
    assert [lr_factor(s, opt, 110) for s in (1, 2, 3, 5)] == [0.0, 0.0, 0.3, 0.5]
    assert lr_factor(60, opt, 110) == pytest.approx(0.5)
    opt.decay = "cosine"
    assert lr_factor(60, opt, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    # a time budget three quarters spent takes over from the step count (0.5 of n_iters)
    assert lr_factor(60, opt, 110, time_used=0.75) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_factor(60, opt, 110, time_used=0.25) == lr_factor(60, opt, 110)
    assert lr_factor(60, opt, 110, time_used=1.5) == 0.0
    # in warmup the clock has no say: the same lr on a fast and a slow machine
    assert lr_factor(5, opt, 110, time_used=0.3) == lr_factor(5, opt, 110) == 0.5


def test_time_budget_spans_resumes(tmp_path):
    """training.max_minutes counts every invocation of a run: a resumed run whose budget is
    spent trains no further step, and the spent time is kept in the checkpoint."""
    cfg = compose_config(["backbone=ar", *TINY, "training.n_iters=5000", "training.max_minutes=0.004",
                          "eval.n_examples=2", "training.log_freq=1"])
    first = Trainer(cfg, tmp_path / "run")
    summary = first.run()
    assert 1 <= first.step < 5000 and first.train_seconds >= 0.24
    # the guard's cut is reported in the results summary, not only in the log
    cut = {"step": first.step, "n_iters": 5000, "max_minutes": 0.004}
    assert summary["training_cut_short"] == cut
    written = json.loads(next((tmp_path / "run" / "eval").glob("*.summary.json")).read_text())
    assert written["training_cut_short"] == cut
    again = Trainer(cfg, tmp_path / "run")
    assert again.step == first.step and again.train_seconds == pytest.approx(first.train_seconds)
    again.run()
    assert again.step == first.step
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    seconds = [float(r["seconds"]) for r in rows]
    assert seconds == sorted(seconds) and len(rows) == first.step


def test_log_lines_print_above_the_progress_bar(tmp_path, capsys):
    """A log line never continues the bar's line: the bar is cleared before it is written."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)  # a console handler, as Hydra's
    logging.getLogger().addHandler(handler)
    logging.getLogger("dot").setLevel(logging.INFO)
    try:
        Trainer(compose_config(["backbone=ar", *TINY, "training.n_iters=3"]), tmp_path).run()
    finally:
        logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    segments = [seg for line in err.split("\n") for seg in line.split("\r")]
    logged = [seg for seg in segments if "step 1:" in seg or "step 2:" in seg]
    assert logged and all("train:" not in seg for seg in logged)


def test_grad_clipper_fixed_and_quantile():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    assert GradClipper(1.0, None)([p], 1, torch.tensor(5.0)) == pytest.approx(5.0)
    assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(1.0, rel=1e-5)
    clip = GradClipper(None, 0.95)
    clip.norms[:] = torch.arange(1000, dtype=torch.float)  # quantile 0.95 -> 949.05
    p.grad = torch.tensor([2000.0, 0, 0, 0])
    clip([p], 7, torch.tensor(2000.0))
    assert p.grad[0].item() == pytest.approx(949.05, rel=1e-4) and clip.norms[7] == 2000.0


def test_ema_warmup_rule():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay_1 = 2/11
    assert ema.shadow["weight"].item() == pytest.approx(1 - 2 / 11)
    with ema.applied(model):
        assert model.weight.item() == pytest.approx(1 - 2 / 11)
    assert model.weight.item() == 1.0


@pytest.mark.parametrize("backbone", backbone_names())
def test_resume_continues_with_identical_losses(tmp_path, backbone):
    cfg = compose_config([f"backbone={backbone}", *TINY, "training.n_iters=6"])
    full = Trainer(cfg, tmp_path / "full")
    losses = [full.train_step()["loss"] for _ in range(6)]

    part = Trainer(cfg, tmp_path / "part")
    for _ in range(3):
        part.train_step()
    part.save()
    del part  # "interrupted" after the step-3 checkpoint
    resumed = Trainer(cfg, tmp_path / "part")
    assert resumed.step == 3
    again = [resumed.train_step()["loss"] for _ in range(3)]
    assert again == pytest.approx(losses[3:], rel=1e-6, abs=1e-7)
    assert len(set(losses)) > 1  # the losses really change from step to step




def test_training_and_decoding_do_not_import_the_reporting_tools():
    import subprocess
    import sys

    code = ("import sys, dot.train, dot.evaluate; "
            "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'dot.report'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
