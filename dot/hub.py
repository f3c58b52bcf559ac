"""Trained DoT runs on the Hugging Face Hub.

    python -m dot.hub push RUN owner/name [--private]   # weights, config, tokenizer, model card
    python evaluation_batch.py --weights_path owner/name # evaluate a pushed run
    python finetune.py init=owner/name ...               # start from its weights

A pushed repo is a run folder without the training state: `.hydra/config.yaml`,
`checkpoints-meta/checkpoint.pth` (model and EMA weights, no optimizer), the result summaries
`eval/*.summary.json`, `tokenizer.json` when the run used a tokenizer file, and `README.md`,
a model card with the run's results table. Fetched repos are ordinary run folders in the hub
cache, so every loader reads them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, snapshot_download
from omegaconf import OmegaConf

from dot.checkpoint import HUB_ID, META, CheckpointError, is_run_dir, load_checkpoint, save_atomic

CONFIG = Path(".hydra") / "config.yaml"
PATTERNS = [str(CONFIG), str(META), "eval/*.summary.json", "tokenizer.json", "README.md"]


def _card(run: Path, cfg: Any, state: dict[str, Any], repo_id: str) -> str:
    """The model card: what the model is, its results, how to use it."""
    rows = []
    for path in sorted((run / "eval").glob("*.summary.json")):
        s = json.loads(path.read_text())
        rows.append(f"| `{path.name[:-len('.summary.json')]}` | {s['n_examples']} | "
                    f"{100 * s['accuracy']:.2f} | {100 * s.get('token_acc', 0):.2f} | "
                    f"{s.get('nfe_per_example', 0):.1f} | {s.get('examples_per_s', 0):.1f} |")
    table = "\n".join(["| decoding | examples | exact % | token % | calls / example | examples/s |",
                       "| --- | --- | --- | --- | --- | --- |", *rows]) if rows else \
        "No evaluation was recorded in this run."
    return f"""---
library_name: dot
tags: [diffusion-of-thoughts, diffusion-language-model, {cfg.backbone.name}]
---
# {repo_id}

A Diffusion-of-Thoughts model trained with the `dot` toolkit: backbone `{cfg.backbone.name}`,
task `{cfg.data.task}`{' (DoT-MP)' if cfg.data.get('multipass') else ''}, tokenizer
`{cfg.data.tokenizer}`, {state['step']} training steps, rows of {state['seq_len']} tokens.

## Results (the run's own evaluations)

{table}

## Use

```bash
python evaluation_batch.py --weights_path {repo_id}
python finetune.py init={repo_id} ...   # continue from these weights
```
"""


def push(run: str | Path, repo_id: str, *, private: bool = False,
         api: HfApi | None = None) -> str:
    """Upload a run folder's model (not its optimizer state) as `repo_id`; returns the repo id."""
    run = Path(run)
    if not is_run_dir(run):
        raise CheckpointError(f"{run}: not a run folder (.hydra/config.yaml + {META})")
    if not HUB_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a hub repo id (owner/name)")
    cfg = OmegaConf.load(run / CONFIG)
    state = load_checkpoint(run / META)
    slim = {k: state.get(k) for k in ("format", "backbone", "step", "seq_len", "model", "ema",
                                       "train_seconds")}
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        tokenizer = Path(str(cfg.data.tokenizer))
        if tokenizer.suffix == ".json" and tokenizer.is_file():  # a file, not a built-in name
            shutil.copy(tokenizer, stage / "tokenizer.json")
            cfg.data.tokenizer = "tokenizer.json"  # read relative to the run folder
        (stage / CONFIG).parent.mkdir(parents=True)
        OmegaConf.save(cfg, stage / CONFIG)
        save_atomic(slim, stage / META)
        for path in (run / "eval").glob("*.summary.json"):
            (stage / "eval").mkdir(exist_ok=True)
            shutil.copy(path, stage / "eval" / path.name)
        (stage / "README.md").write_text(_card(run, cfg, state, repo_id))
        api = api or HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(stage),
                          commit_message=f"dot run {run.name}, step {state['step']}")
    return repo_id


def fetch_run(repo_id: str, api: HfApi | None = None) -> Path | None:
    """The local run folder of a pushed DoT repo (downloaded into the hub cache), or None when
    `repo_id` is not such a repo (e.g. a SEDD hub checkpoint, which its backbone reads)."""
    if Path(repo_id).exists() or not HUB_ID.match(repo_id):
        return None
    try:  # one request, no retries (model_info lists the repo's files)
        files = {f.rfilename for f in (api or HfApi()).model_info(repo_id).siblings or []}
    except Exception:  # offline or unknown: the backbones' own hub loaders say what failed
        return None
    if not {str(CONFIG), str(META)} <= files:
        return None
    return Path(snapshot_download(repo_id, allow_patterns=PATTERNS))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dot.hub", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    push_p = sub.add_parser("push", help="upload a run folder's model, config and model card")
    push_p.add_argument("run", type=Path)
    push_p.add_argument("repo_id")
    push_p.add_argument("--private", action="store_true")
    args = p.parse_args(argv)
    try:
        print(f"pushed {args.run} to https://huggingface.co/{push(args.run, args.repo_id, private=args.private)}")
    except (CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
