"""Trained models side by side: exact answers, network calls per example and examples/s.

    python bench/bench_decoding.py AR=exp_local/ar "blocks of 2=exp_local/b2" \\
        "fast=exp_local/b32:steps=32,threshold=0.9" --limit 200 --batch-sizes 1 64

Each model is `LABEL=RUN[:key=value,...]`: a run folder (or anything `--weights_path` takes)
and sampler settings (`steps` = T, then any option of the run's backbone, e.g. `threshold`,
`margin`, `predictor`). Every model decodes the same first `--limit` problems of the split at
each batch size; the settings take turns within each of `--rounds` rounds, so a change of the
machine's speed hits all of them alike, and examples/s is the median over the rounds. The
`ratio` column divides by the first model's examples/s at the same batch size (put the AR
baseline first). Calls are counted per example (the calls it needed, as if decoded alone; a
batch makes as many as its slowest row). The CSV feeds `python -m dot.report.plots calls`.
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from typing import Any

import torch

from _common import RESULTS, machine_line, pick_device, print_table, write_csv
from dot.checkpoint import CheckpointError
from dot.data import load_split
from dot.decoding import Decoding
from dot.evaluate import evaluate
from dot.loading import load_for_eval
from dot.tasks import get_task

COLUMNS = ("model", "batch", "examples", "exact", "token_acc", "calls_mean", "calls_max",
           "examples_per_s", "ratio", "settings")


@dataclass
class Model:
    label: str
    path: str
    steps: int | None
    options: dict[str, Any]

    @classmethod
    def parse(cls, spec: str) -> "Model":
        label, sep, rest = spec.partition("=")
        if not sep:
            raise SystemExit(f"error: model {spec!r} must be LABEL=RUN[:key=value,...]")
        path, _, settings = rest.partition(":")
        options: dict[str, Any] = {}
        for item in filter(None, settings.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise SystemExit(f"error: setting {item!r} of {label!r} must be key=value")
            options[key] = _value(value)
        steps = options.pop("steps", None)
        return cls(label, path, int(steps) if steps is not None else None, options)

    def settings(self, default_steps: int) -> str:
        return ",".join([f"T={self.steps or default_steps}"]
                        + [f"{k}={v}" for k, v in self.options.items()])


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def run(models: list[Model], batch_sizes: list[int], limit: int, rounds: int, split: str,
        device: torch.device) -> list[dict[str, Any]]:
    try:
        loaded = [(m, *load_for_eval(m.path, device)) for m in models]
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err} (models are LABEL=RUN[:key=value,...]; a label "
                         "holds no '=')") from None
    task = get_task(loaded[0][2].data.task)
    try:
        examples, source = load_split(task, split, loaded[0][2].data.get(split))
    except FileNotFoundError:
        examples, source = load_split(task, "valid", loaded[0][2].data.get("valid"))
    examples = examples[:limit]
    print(f"# {len(examples)} problems of {task.name} from {source}")
    rows: list[dict[str, Any]] = []
    for batch in batch_sizes:
        speeds: dict[str, list[float]] = {m.label: [] for m in models}
        summaries: dict[str, dict[str, Any]] = {}
        for _ in range(rounds):
            for model, backbone, cfg in loaded:
                steps = model.steps or cfg.sampling.steps
                decoding = Decoding(steps, cfg.data.multipass, cfg.eval.cot_steps,
                                    options=model.options)
                s = evaluate(backbone, task, examples, decoding, seq_len=cfg.seq_len,
                             batch_size=batch, progress=False)
                speeds[model.label].append(s["examples_per_s"])
                summaries[model.label] = s
        for model, _, cfg in loaded:
            s = summaries[model.label]
            rows.append(dict(model=model.label, batch=batch, examples=s["n_examples"],
                             exact=100 * s["accuracy"], token_acc=100 * s["token_acc"],
                             calls_mean=s["nfe_per_example"], calls_max=s["nfe_max"],
                             examples_per_s=statistics.median(speeds[model.label]),
                             settings=model.settings(cfg.sampling.steps)))
        base = rows[-len(models)]["examples_per_s"]
        for row in rows[-len(models):]:
            row["ratio"] = row["examples_per_s"] / base
            print(f"  B={batch:<3} {row['model']:>24}  exact {row['exact']:6.2f} %  calls "
                  f"{row['calls_mean']:6.2f} (max {row['calls_max']})  "
                  f"{row['examples_per_s']:8.2f} ex/s  x{row['ratio']:.2f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="LABEL=RUN[:key=value,...]; the first is the baseline")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    p.add_argument("--limit", type=int, default=200, help="first N problems of the split")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds (median examples/s)")
    p.add_argument("--split", default="test", choices=["test", "valid"])
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(RESULTS / "decoding.csv"))
    args = p.parse_args(argv)
    device = pick_device(args.device)
    models = [Model.parse(spec) for spec in args.models]
    print(f"decoding benchmark: {machine_line(device)}")
    rows = run(models, args.batch_sizes, args.limit, args.rounds, args.split, device)
    print()
    print_table(rows, COLUMNS)
    print(f"\nwrote {write_csv(args.out, rows, COLUMNS)}")


if __name__ == "__main__":
    main()
