"""Figures from run folders and evaluation summaries (matplotlib, Agg backend: no display needed).

    python -m dot.report.plots loss RUN --out loss.png
    python -m dot.report.plots steps RUN/eval/*.summary.json --out acc_vs_T.png
    python -m dot.report.plots sc RUN/eval/test-T64-runs5.summary.json --out sc.png
    python -m dot.report.plots speed --dot SEDD/eval/*.summary.json --ar AR/eval/*.summary.json --out speed.png
    python -m dot.report.plots time DoT=RUN_A AR=RUN_B --out time_to_acc.png
    python -m dot.report.plots calls bench/results/decoding.csv --out calls.png

Inputs are what the project already writes: `<run>/logs/metrics.csv` (dot.train: step, loss,
lr, grad_norm, steps_per_s, seconds; eval_loss, valid_acc, valid_token_acc on eval steps) and
`<out>.summary.json` (dot.evaluate: steps, accuracy, nfe_per_example, examples_per_s, sc,
multipass). Every function takes paths or already-loaded dicts and returns the PNG path.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

Summary = Mapping[str, Any]


# ---------------------------------------------------------------------------------- readers
def read_metrics(run_dir: str | Path) -> dict[str, list[tuple[float, float]]]:
    """column -> [(step, value)] from `<run>/logs/metrics.csv`, skipping blank cells.

    Columns appear only on some rows (eval_loss, valid_acc on eval steps), so each keeps its
    own step list.
    """
    path = Path(run_dir) / "logs" / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finetune.py run folder?")
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = float(row["step"])
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    try:
                        series[key].append((step, float(value)))
                    except ValueError:
                        pass
    return dict(series)


def load_summary(summary: str | Path | Summary) -> dict[str, Any]:
    """A summary dict, read from `*.summary.json` when given a path (remembering the path)."""
    if isinstance(summary, Mapping):
        return dict(summary)
    data = json.loads(Path(summary).read_text())
    data.setdefault("path", str(summary))
    return data


def _xy(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


def spread_labels(fig: plt.Figure, labels: Sequence[matplotlib.text.Annotation]) -> None:
    """Move point labels up, lowest first, until none overlaps another: labels of nearby
    points (AR and a fast DoT setting at the same accuracy) stay readable."""
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    for label in sorted(labels, key=lambda a: a.xy[1]):
        for _ in range(len(labels) * 3):
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            x, y = label.xyann
            label.xyann = (x, y + (box.height + 1) * 72 / fig.dpi)  # offset points
        placed.append(label.get_window_extent(renderer))


def _save(fig: plt.Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    for ax in [a for top in fig.axes for a in (top, *top.child_axes)]:  # insets too
        spread_labels(fig, [t for t in ax.texts if isinstance(t, matplotlib.text.Annotation)
                            and t.anncoords == "offset points"])
    tmp = out.with_name(out.name + f".part{os.getpid()}")
    try:  # never a half-drawn figure: write beside it, then rename
        fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or "png")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    plt.close(fig)
    return out


def _save_accuracy_plot(fig: plt.Figure, ax: plt.Axes, out_png: str | Path,
                        ylabel: str = "accuracy (%)") -> Path:
    """The shared finish of every accuracy figure: 0-100 % axis, grid, legend, save."""
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out_png)


# ---------------------------------------------------------------------------------- figures
def loss_curve(run_dir: str | Path, out_png: str | Path) -> Path:
    """Training loss and eval_loss vs step; on a second axis the validation exact-answer and
    token accuracy and the training token accuracy, when they were logged."""
    m = read_metrics(run_dir)
    if "loss" not in m:
        raise ValueError(f"{run_dir}: metrics.csv has no loss column")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*_xy(m["loss"]), label="train loss", color="tab:blue")
    if "eval_loss" in m:
        ax.plot(*_xy(m["eval_loss"]), "o-", label="eval loss", color="tab:orange", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    accuracies = [("valid_acc", "s--", "tab:green", "valid exact"),
                  ("valid_token_acc", "^:", "tab:olive", "valid tokens"),
                  ("token_acc", "-", "tab:gray", "train tokens")]
    if any(key in m for key, *_ in accuracies):
        ax2 = ax.twinx()
        for key, style, color, label in accuracies:
            if key in m:
                ax2.plot(*_xy(m[key]), style, color=color, label=label, ms=3, lw=1)
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best")
    ax.set_title(Path(run_dir).name)
    return _save(fig, out_png)


def series_label(s: Summary) -> str:
    """How a summary's curve is named: DoT or DoT-MP plus its sampler options."""
    if "label" in s:
        return str(s["label"])
    opts = ", ".join(f"{k}={v}" for k, v in sorted((s.get("options") or {}).items()))
    return ("DoT-MP" if s.get("multipass") else "DoT") + (f" ({opts})" if opts else "")


def accuracy_vs_steps(summaries: Iterable[str | Path | Summary], out_png: str | Path) -> Path:
    """Accuracy vs sampling steps T (log2 axis), one line per series; NFE/example annotated."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in map(load_summary, summaries):
        groups[series_label(s)].append(s)
    if not groups:
        raise ValueError("accuracy_vs_steps: no summaries given")
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, items in sorted(groups.items()):
        items.sort(key=lambda s: s["steps"])
        xs = [s["steps"] for s in items]
        ys = [100 * s["accuracy"] for s in items]
        err = [100 * s.get("accuracy_std", 0.0) for s in items]
        ax.errorbar(xs, ys, yerr=err if any(err) else None, marker="o", capsize=3, label=label)
        for s, x, y in zip(items, xs, ys):
            if "nfe_per_example" in s:
                ax.annotate(f"{s['nfe_per_example']:.0f}", (x, y), textcoords="offset points",
                            xytext=(0, 6), ha="center", fontsize=7, color="grey")
    ax.set_xscale("log", base=2)
    ticks = sorted({s["steps"] for items in groups.values() for s in items})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("sampling steps T  (grey: NFE per example)")
    return _save_accuracy_plot(fig, ax, out_png)


def sc_curve(summary: str | Path | Summary, out_png: str | Path) -> Path:
    """Self-consistency: SC@k vs the number of voting runs k, against mean single-run accuracy."""
    s = load_summary(summary)
    sc = {int(k): float(v) for k, v in (s.get("sc") or {}).items()}
    if not sc:
        raise ValueError("the summary has no SC@k (evaluate with --runs K > 1)")
    ks = sorted(sc)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(ks, [100 * sc[k] for k in ks], "o-", label="SC@k")
    ax.axhline(100 * s["accuracy"], color="grey", ls="--", label="mean single run")
    ax.set_xlabel("runs voting (k)")
    ax.set_xticks(ks)
    ax.set_title(f"self-consistency, T={s.get('steps', '?')}")
    return _save_accuracy_plot(fig, ax, out_png)


def eval_figures(eval_dir: str | Path) -> list[Path]:
    """An evaluation folder's figures, written by training and evaluation: accuracy vs T for
    each (data, split, number of examples) among its summaries
    (`accuracy_vs_T-<data-split>-n<N>.png`, so a `--limit 8` try or another dataset never
    joins the full test curve) and SC@k of each multi-run summary (`<name>.sc.png`)."""
    eval_dir = Path(eval_dir)
    groups: dict[str, list[Path]] = defaultdict(list)
    made = []
    for path in sorted(eval_dir.glob("*.summary.json")):
        summary = load_summary(path)
        stem = path.name[:-len(".summary.json")]
        data_split = re.split(r"-T\d+", stem, maxsplit=1)[0]  # result_name's leading fields
        groups[f"{data_split}-n{summary['n_examples']}"].append(path)
        if summary.get("sc"):
            made.append(sc_curve(summary, path.with_name(stem + ".sc.png")))
    return [accuracy_vs_steps(paths, eval_dir / f"accuracy_vs_T-{key}.png")
            for key, paths in sorted(groups.items())] + made


def run_figures(run_dir: str | Path) -> list[Path]:
    """A run folder's figures: `loss.png` from its metrics, and its eval folder's."""
    run_dir = Path(run_dir)
    made = []
    if (run_dir / "logs" / "metrics.csv").is_file():
        made.append(loss_curve(run_dir, run_dir / "loss.png"))
    return made + eval_figures(run_dir / "eval")


@dataclass(frozen=True)
class Point:
    """One model + sampler setting on the speed/accuracy plane."""

    label: str
    accuracy: float  # 0..1
    examples_per_s: float
    family: str = "DoT"  # DoT | AR (colour and marker)

    @classmethod
    def from_summary(cls, summary: str | Path | Summary, family: str = "DoT",
                     label: str | None = None) -> "Point":
        s = load_summary(summary)
        if label is None:
            label = "AR" if family == "AR" else \
                f"T={s['steps']}{' MP' if s.get('multipass') else ''}"
        return cls(label, float(s["accuracy"]), float(s["examples_per_s"]), family)


def speed_accuracy(points: Iterable[Point | Mapping[str, Any]], out_png: str | Path) -> Path:
    """Throughput (examples/s, log axis) vs accuracy: DoT's T trades speed for accuracy, AR
    sits at one point."""
    pts = [p if isinstance(p, Point) else Point(**p) for p in points]
    if not pts:
        raise ValueError("speed_accuracy: no points given")
    style = {"DoT": ("tab:blue", "o"), "AR": ("tab:red", "s")}
    fig, ax = plt.subplots(figsize=(6, 4))
    for family in dict.fromkeys(p.family for p in pts):
        fam = [p for p in pts if p.family == family]
        color, marker = style.get(family, ("tab:grey", "^"))
        ax.scatter([p.examples_per_s for p in fam], [100 * p.accuracy for p in fam],
                   c=color, marker=marker, label=family, zorder=3)
        for p in fam:
            ax.annotate(p.label, (p.examples_per_s, 100 * p.accuracy), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
    if max(p.examples_per_s for p in pts) / max(min(p.examples_per_s for p in pts), 1e-12) > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("throughput (examples / s)")
    return _save_accuracy_plot(fig, ax, out_png)


def time_to_accuracy(runs: Mapping[str, str | Path] | Sequence[str | Path],
                     out_png: str | Path) -> Path:
    """Validation exact-answer accuracy (left) and token accuracy (right) vs wall-clock
    training minutes for several runs (e.g. DoT vs AR).

    `seconds` (training time over every invocation, periodic evaluations included) is logged
    on every row, the accuracies on eval rows; they are joined on step.
    """
    named = dict(runs) if isinstance(runs, Mapping) else {Path(r).name: r for r in runs}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    plotted = 0
    for label, run in named.items():
        m = read_metrics(run)
        seconds = dict(m.get("seconds", []))
        if not m.get("valid_acc"):
            print(f"warning: {run} logged no valid_acc (training.eval_freq=0?)", file=sys.stderr)
            continue
        for ax, key in zip(axes, ("valid_acc", "valid_token_acc")):
            pts = [(seconds[step], acc) for step, acc in m.get(key, []) if step in seconds]
            ax.plot([t / 60 for t, _ in pts], [100 * a for _, a in pts], "o-", ms=3, label=label)
        plotted += 1
    if not plotted:
        plt.close(fig)
        raise ValueError("time_to_accuracy: no run has valid_acc in its metrics.csv")
    for ax, title in zip(axes, ("exact answers", "tokens")):
        ax.set_xlabel("training wall time (minutes)")
        ax.set_title(title)
    axes[1].set_ylabel("validation token accuracy (%)")
    axes[1].set_ylim(-2, 102)
    axes[1].grid(alpha=0.3)
    return _save_accuracy_plot(fig, axes[0], out_png, "validation exact accuracy (%)")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (calls, accuracy) points no other point beats on both: fewer-or-equal calls and
    higher-or-equal accuracy, one strictly. Sorted by calls."""
    front: list[tuple[float, float]] = []
    for calls, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((calls, acc))
    return front


def _calls_panel(ax: plt.Axes, pts: Sequence[tuple[str, float, float]], log: bool = True,
                 unlabelled: Sequence[tuple[str, float, float]] = ()) -> None:
    """Points (label, calls, exact %) with their Pareto front, on a log calls axis by default;
    the `unlabelled` ones get a point but no label."""
    front = pareto_front([(c, a) for _, c, a in pts])
    ax.step([c for c, _ in front], [a for _, a in front], where="post", color="tab:grey",
            alpha=0.6, label="Pareto front", zorder=2)
    for label, calls, acc in pts:
        is_ar = label.lower().startswith("ar")
        ax.scatter([calls], [acc], c="tab:red" if is_ar else "tab:blue",
                   marker="s" if is_ar else "o", zorder=3)
        if (label, calls, acc) not in unlabelled:
            ax.annotate(label, (calls, acc), fontsize=7, textcoords="offset points",
                        xytext=(4, -10))
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def crowded_corner(pts: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The points (label, calls, exact %) at >= 95 % within 1.25x of the fewest calls such a
    point needs, when there are three or more of them (else none): the inset's points."""
    fewest = min((c for _, c, a in pts if a >= 95), default=0.0)
    crowd = [p for p in pts if p[2] >= 95 and p[1] <= 1.25 * fewest]
    return crowd if len(crowd) >= 3 else []


def calls_accuracy(csv_paths: Sequence[str | Path], out_png: str | Path, batch: int = 1) -> Path:
    """Exact accuracy vs network calls per example (log axis), one point per decoding of
    `bench/bench_decoding.py`, with the Pareto front: what a user picks from. When three or
    more accurate points (>= 95 %) lie within 1.25x of the fewest calls, an inset zooms on
    them (linear calls axis), since that corner is where the fast decoders crowd."""
    pts: list[tuple[str, float, float]] = []
    for path in csv_paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if int(row["batch"]) == batch:
                    pts.append((row["model"], float(row["calls_mean"]), float(row["exact"])))
    if not pts:
        raise ValueError(f"calls_accuracy: no rows of batch {batch} in {list(map(str, csv_paths))}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    crowd = crowded_corner(pts)
    _calls_panel(ax, pts, unlabelled=crowd)
    if crowd:
        inset = ax.inset_axes([0.22, 0.1, 0.62, 0.62])
        _calls_panel(inset, crowd, log=False)
        low = min(a for *_, a in crowd)
        inset.set_ylim(low - 0.15 * (100.5 - low), 100.5)
        inset.tick_params(labelsize=7)
        inset.set_title("zoom: the fewest calls", fontsize=7)
        inset.grid(alpha=0.3)
    ax.set_xlabel("network calls per example (mean)")
    return _save_accuracy_plot(fig, ax, out_png, "exact answers (%)")


# ---------------------------------------------------------------------------------- CLI
def _named(items: Sequence[str]) -> dict[str, str]:
    """LABEL=PATH (or PATH, labelled by its folder name)."""
    out = {}
    for item in items:
        label, sep, path = item.partition("=")
        out[label if sep else Path(item).name] = path if sep else item
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dot.report.plots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("loss", help="loss / eval_loss / valid_acc vs step of a run")
    a.add_argument("run")
    b = sub.add_parser("steps", help="accuracy vs sampling steps T from summaries")
    b.add_argument("summaries", nargs="+")
    c = sub.add_parser("sc", help="SC@k of a multi-run summary")
    c.add_argument("summary")
    d = sub.add_parser("speed", help="examples/s vs accuracy, DoT vs AR")
    d.add_argument("--dot", nargs="*", default=[], help="DoT summaries (one point each)")
    d.add_argument("--ar", nargs="*", default=[], help="AR summaries")
    e = sub.add_parser("time", help="validation accuracy vs training wall time of several runs")
    e.add_argument("runs", nargs="+", help="LABEL=RUN or RUN")
    f = sub.add_parser("calls", help="exact accuracy vs network calls (bench_decoding.py CSVs)")
    f.add_argument("csvs", nargs="+")
    f.add_argument("--batch", type=int, default=1, help="which batch size's rows")
    for s in (a, b, c, d, e, f):
        s.add_argument("--out", required=True, help="output PNG")
    args = p.parse_args(argv)
    try:
        if args.command == "loss":
            out = loss_curve(args.run, args.out)
        elif args.command == "steps":
            out = accuracy_vs_steps(args.summaries, args.out)
        elif args.command == "sc":
            out = sc_curve(args.summary, args.out)
        elif args.command == "speed":
            pts = [Point.from_summary(s, "DoT") for s in args.dot] + \
                  [Point.from_summary(s, "AR") for s in args.ar]
            out = speed_accuracy(pts, args.out)
        elif args.command == "calls":
            out = calls_accuracy(args.csvs, args.out, args.batch)
        else:
            out = time_to_accuracy(_named(args.runs), args.out)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
