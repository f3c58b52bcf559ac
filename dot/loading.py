"""Load any supported weights for evaluation: our run folders, or a backbone's own formats
(SEDD hub ids / hub-layout folders / official run folders; Plaid's four-file folders)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dot.backbone import Backbone, backbone_class
from dot.checkpoint import (FORMAT, HUB_ID, META, CheckpointError, CheckpointNotFoundError,
                            is_run_dir, load_checkpoint, load_run, run_checkpoint)


def detect_backbone(path: str) -> str:
    """Which backbone's loader understands `path`."""
    p = Path(path)
    if not p.exists() and not HUB_ID.match(path):
        raise CheckpointNotFoundError(f"{path} not found (nor a hub id owner/name)")
    if is_run_dir(p):
        state_backbone = load_checkpoint(p / META).get("backbone")
        return state_backbone or "sedd"  # official dot-sedd run folders carry no name
    if (p / "model.pt").is_file() or (p / "noise_schedule.pt").is_file():
        return "plaid"
    if (p / "config.json").is_file() or (not p.exists() and HUB_ID.match(path)):
        return "sedd"  # hub layout, or a hub id such as louaaron/sedd-small
    raise CheckpointError(
        f"{path}: not a run folder (.hydra/config.yaml + {META}), a Plaid weights folder "
        "(model.pt, noise_schedule.pt, gamma_bounds.pt, embedding_matrix.pt) or a SEDD "
        "checkpoint (config.json + pytorch_model.bin / model.safetensors, or a hub id)")


def load_for_eval(path: str, device: torch.device, *, digit: bool = False,
                  dataset: str | None = None, tokenizer: str | None = None) -> tuple[Backbone, Any]:
    """(backbone in eval mode, config with data/sampling/eval/seq_len keys) for `path`."""
    found = run_checkpoint(path)
    if found:
        run, ckpt = found
        state = load_checkpoint(ckpt, device)
        if state.get("format") == FORMAT:
            return load_run(run, device, state=state)
    name = detect_backbone(path)
    return backbone_class(name).load_pretrained(path, device, digit=digit, dataset=dataset,
                                                tokenizer=tokenizer)
