"""One evaluation as a request: pick the run, load it, name the outputs, decode, score, draw.

`evaluation_batch.py` parses its flags into an `EvalRequest` and calls `run_request`; code
(notebooks, sweeps) can build a request directly.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dot import distributed
from dot.checkpoint import latest_run, run_checkpoint, snapshot_step
from dot.data import load_eval_split
from dot.decoding import Decoding
from dot.evaluate import evaluate, format_summary, result_name
from dot.loading import load_for_eval
from dot.report.per_thought import format_per_thought, per_thought_accuracy, write_per_thought
from dot.tasks import get_task


@dataclass
class EvalRequest:
    """What to evaluate and how; None means the run's own setting (its config)."""

    weights_path: str | None = None  # None: the newest run whose backbone takes `options`
    options: dict[str, Any] = field(default_factory=dict)  # the backbone's sampler options
    dataset: str | None = None
    split: str = "test"
    data_path: str | None = None
    sampling_timesteps: int | None = None
    cot: bool | None = None
    cot_steps: int | None = None
    runs: int = 1
    batch_size: int = 64
    limit: int | None = None
    seed: int = 2024
    seq_len: int | None = None
    output: str | None = None
    save_chain: bool = False
    per_thought: bool = False
    digit: bool = False
    tokenizer: str | None = None
    progress: bool = True


def run_request(req: EvalRequest, device: torch.device, is_main: bool = True) -> int:
    """Evaluate as the request says; only the main process prints and writes. Returns the
    exit code (2 for a request that does not fit the model)."""
    def print_main(*a, **k) -> None:
        if is_main:
            print(*a, **k)

    options = req.options
    # Without --weights_path: the newest run whose backbone takes the sampler flags given.
    weights = req.weights_path or str(latest_run(accepting=options))
    found = run_checkpoint(weights)
    backbone, cfg = load_for_eval(weights, device, digit=req.digit, dataset=req.dataset,
                                  tokenizer=req.tokenizer)
    backbone.check_sample_options(options)

    task = get_task(req.dataset or cfg.data.task)
    multipass = cfg.data.multipass if req.cot is None else req.cot
    steps = req.sampling_timesteps or cfg.sampling.steps
    examples, source = load_eval_split(task, req.split, req.data_path or cfg.data.get(req.split),
                                       cfg.data.get("valid"))
    limited = bool(req.limit) and req.limit < len(examples)
    examples = examples[: req.limit] if limited else examples
    # the data in the name when it is not the run's own split; the step for an older snapshot
    data = Path(req.data_path).stem if req.data_path else (
        task.name if task.name != cfg.data.task else None)
    step = snapshot_step(found[1]) if found else None
    name = result_name(req.split, steps, multipass, options, req.runs,
                       first=len(examples) if limited else None, data=data) + (
        f"-step{step}" if step is not None else "")
    run_dir = found[0] if found else Path(weights)
    out = Path(req.output) if req.output else run_dir / "eval" / name
    if not run_dir.is_dir() and not req.output:
        out = Path("generated_output") / task.name / name
    print_main(f"{backbone.name} from {weights}; {len(examples)} examples from {source}; T={steps}")
    if req.per_thought:
        if distributed.is_initialized():
            print_main("error: --per_thought runs in one process (start it without torchrun)",
                       file=sys.stderr)
            return 2
        if not multipass:
            print_main("error: --per_thought decodes DoT-MP passes; this model is single-pass "
                       "(data.multipass=false; add --cot to force it)", file=sys.stderr)
            return 2
        generator = torch.Generator(device=device).manual_seed(req.seed)
        rows = per_thought_accuracy(backbone, task, examples, Decoding(steps, options=options),
                                    seq_len=req.seq_len or cfg.seq_len, generator=generator,
                                    batch_size=req.batch_size)
        print_main(format_per_thought(rows))
        path = write_per_thought(out.with_name(out.name + "-per_thought.json"), rows,
                                 source=source, steps=steps)
        print_main(f"results: {path}")
        return 0
    decoding = Decoding(steps, multipass, req.cot_steps or cfg.eval.cot_steps,
                        req.save_chain, options)
    summary = evaluate(backbone, task, examples, decoding, seq_len=req.seq_len or cfg.seq_len,
                       out=out, runs=req.runs, seed=req.seed,
                       hidden_thought=cfg.data.hidden_thought, batch_size=req.batch_size,
                       progress=req.progress, source_name=source, shard=True)
    print_main(format_summary(summary))
    print_main(f"results: {summary['results']}")
    if not is_main:
        return 0
    from dot.report.plots import eval_figures  # matplotlib only once the decoding is done
    print_main("figures: " + ", ".join(str(f) for f in eval_figures(out.parent)))
    return 0

