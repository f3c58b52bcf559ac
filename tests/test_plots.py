"""dot.report.plots: readers and every figure, from small synthetic runs and summaries."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dot.report import plots
from dot.report.plots import (
    Point,
    accuracy_vs_steps,
    calls_accuracy,
    crowded_corner,
    eval_figures,
    loss_curve,
    main,
    pareto_front,
    read_metrics,
    sc_curve,
    series_label,
    speed_accuracy,
    time_to_accuracy,
)


def fake_run(path, seconds_per_step=1.0, accs=(0.1, 0.4, 0.7)):
    """metrics.csv as dot.train writes it: eval columns only on eval rows (blank elsewhere)."""
    (path / "logs").mkdir(parents=True)
    fields = ["loss", "grad_norm", "lr", "step", "seconds", "steps_per_s", "eval_loss",
              "valid_acc", "valid_token_acc"]
    with open(path / "logs" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for i, step in enumerate(range(10, 70, 10)):
            row = dict(loss=3.0 / (i + 1), grad_norm=1.0, lr=1e-3, step=step,
                       seconds=step * seconds_per_step, steps_per_s=1 / seconds_per_step)
            if i % 2 == 1:
                row.update(eval_loss=3.5 / (i + 1), valid_acc=accs[i // 2], valid_token_acc=0.5)
            w.writerow(row)
    return path


def summary(steps, acc, multipass=False, **extra):
    return {**dict(steps=steps, accuracy=acc, accuracy_std=0.0, nfe_per_example=steps + 1,
                   examples_per_s=100.0 / steps, sc={}, multipass=multipass, options={}), **extra}


def assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert (pixels < 128).mean() > 0.005  # something was drawn, not a blank canvas


def test_read_metrics_keeps_eval_columns_on_their_own_steps(tmp_path):
    m = read_metrics(fake_run(tmp_path / "run"))
    assert [s for s, _ in m["loss"]] == [10, 20, 30, 40, 50, 60]
    assert m["valid_acc"] == [(20, 0.1), (40, 0.4), (60, 0.7)]
    assert [s for s, _ in m["eval_loss"]] == [20, 40, 60]
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        read_metrics(tmp_path / "nothing")


def test_loss_curve_png(tmp_path):
    assert_png(loss_curve(fake_run(tmp_path / "run"), tmp_path / "figs" / "loss.png"))


def test_accuracy_vs_steps_from_files_and_dicts(tmp_path):
    files = []
    for T, acc in ((1, 0.2), (4, 0.5), (16, 0.8)):
        files.append(tmp_path / f"T{T}.summary.json")
        files[-1].write_text(json.dumps(summary(T, acc)))
    out = accuracy_vs_steps([*files, summary(8, 0.6, multipass=True)], tmp_path / "acc.png")
    assert_png(out)
    assert series_label(summary(8, 0.6, multipass=True, options={"predictor": "euler"})) \
        == "DoT-MP (predictor=euler)"
    with pytest.raises(ValueError):
        accuracy_vs_steps([], tmp_path / "none.png")


def test_sc_curve(tmp_path):
    s = summary(64, 0.5, runs=5)
    s["sc"] = {"1": 0.5, "2": 0.5, "3": 0.6, "4": 0.62, "5": 0.65}  # JSON keys are strings
    assert_png(sc_curve(s, tmp_path / "sc.png"))
    with pytest.raises(ValueError, match="--runs"):
        sc_curve(summary(64, 0.5), tmp_path / "no.png")


def test_eval_figures_of_an_eval_folder(tmp_path, monkeypatch):
    """One accuracy-vs-T figure per (data, split, size), one SC figure per multi-run summary:
    a `--limit 8` try and another dataset's decoding get their own figures."""
    full = dict(n_examples=100)
    for name, s in {"test-T1": summary(1, 0.2, **full), "test-T4": summary(4, 0.5, **full),
                    "test-T4-runs3": summary(4, 0.5, sc={"1": 0.5, "2": 0.55, "3": 0.6}, **full),
                    "test-T1-first8": summary(1, 0.9, n_examples=8),
                    "gsm8k-test-T4": summary(4, 0.1, **full)}.items():
        (tmp_path / f"{name}.summary.json").write_text(json.dumps(s))
    drawn = {}
    real = plots.accuracy_vs_steps
    monkeypatch.setattr(plots, "accuracy_vs_steps", lambda paths, out: drawn.setdefault(
        Path(out).name, sorted(Path(p).name for p in paths)) and real(paths, out))
    made = eval_figures(tmp_path)
    assert sorted(p.name for p in made) == [
        "accuracy_vs_T-gsm8k-test-n100.png", "accuracy_vs_T-test-n100.png",
        "accuracy_vs_T-test-n8.png", "test-T4-runs3.sc.png"]
    assert drawn["accuracy_vs_T-test-n100.png"] == [
        "test-T1.summary.json", "test-T4-runs3.summary.json", "test-T4.summary.json"]
    for p in made:
        assert_png(p)
    assert eval_figures(tmp_path / "empty") == []


def test_speed_accuracy_points(tmp_path):
    p = Point.from_summary(summary(8, 0.6, multipass=True))
    assert (p.label, p.examples_per_s, p.family) == ("T=8 MP", 12.5, "DoT")
    ar = Point.from_summary(summary(1, 0.9), family="AR")
    assert ar.label == "AR"
    pts = [p, ar, dict(label="T=64", accuracy=0.7, examples_per_s=1.5, family="DoT")]
    assert_png(speed_accuracy(pts, tmp_path / "speed.png"))


def test_labels_of_nearby_points_do_not_overlap():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    crowd = [ax.annotate(f"setting {i}", (50 + 0.1 * i, 80), textcoords="offset points",
                         xytext=(4, 4)) for i in range(4)]
    alone = ax.annotate("alone", (10, 10), textcoords="offset points", xytext=(4, 4))
    plots.spread_labels(fig, crowd + [alone])
    r = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(r) for a in crowd + [alone]]
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(5) for j in range(i + 1, 5))
    assert alone.xyann == (4, 4)  # a label with room keeps its place
    plt.close(fig)


def test_time_to_accuracy_two_runs(tmp_path):
    runs = {"DoT": fake_run(tmp_path / "dot", 0.5), "AR": fake_run(tmp_path / "ar", 2.0)}
    assert_png(time_to_accuracy(runs, tmp_path / "tta.png"))
    no_eval = tmp_path / "noeval" / "logs"
    no_eval.mkdir(parents=True)
    (no_eval / "metrics.csv").write_text("loss,step,seconds\n1.0,10,1.0\n")
    with pytest.raises(ValueError, match="valid_acc"):
        time_to_accuracy([tmp_path / "noeval"], tmp_path / "x.png")


def test_cli(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    assert main(["loss", str(run), "--out", str(tmp_path / "l.png")]) == 0
    assert_png(tmp_path / "l.png")
    assert main(["time", f"DoT={run}", "--out", str(tmp_path / "t.png")]) == 0
    assert_png(tmp_path / "t.png")
    assert main(["loss", str(tmp_path / "missing"), "--out", str(tmp_path / "m.png")]) == 2
    assert "metrics.csv" in capsys.readouterr().err


def test_pareto_front_by_hand():
    # (calls, exact %): (8, 90) is beaten by (4, 95); (110, 100) is the only 100 % point
    pts = [(110, 100.0), (55, 99.0), (8, 90.0), (4, 95.0), (2, 10.0), (4, 80.0)]
    assert pareto_front(pts) == [(2, 10.0), (4, 95.0), (55, 99.0), (110, 100.0)]


def test_calls_accuracy_from_bench_csv(tmp_path):
    path = tmp_path / "decoding.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "batch", "calls_mean", "exact"])
        w.writeheader()
        w.writerows([dict(model="AR", batch=1, calls_mean=110, exact=100),
                     dict(model="fast", batch=1, calls_mean=7.5, exact=99.2),
                     dict(model="fast", batch=64, calls_mean=7.5, exact=99.2)])
    assert_png(calls_accuracy([path], tmp_path / "calls.png"))
    with pytest.raises(ValueError, match="no rows of batch 8"):
        calls_accuracy([path], tmp_path / "none.png", batch=8)


def test_crowded_corner_by_hand():
    """Accurate points within 1.25x of the fewest calls (8 -> up to 10) go to the inset; the
    inaccurate 6-call point and the 12-call one do not, and two points are no crowd."""
    pts = [("a", 8.0, 99.0), ("b", 9.5, 100.0), ("c", 10.0, 96.0), ("d", 12.0, 100.0),
           ("fast", 6.0, 50.0), ("AR", 110.0, 100.0)]
    assert crowded_corner(pts) == pts[:3]
    assert crowded_corner(pts[1:]) == []  # b (9.5) and c; d is past 1.25 x 9.5
