"""Load any supported weights for evaluation: our run folders, or a backbone's own formats
(SEDD hub ids / hub-layout folders / official run folders; Plaid's four-file folders)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf, open_dict

from dot.backbone import Backbone, backbone_class, backbone_names
from dot.checkpoint import (
    FORMAT,
    HUB_ID,
    META,
    CheckpointError,
    CheckpointNotFoundError,
    is_run_dir,
    load_checkpoint,
    load_run,
    run_checkpoint,
)
from dot.config import compose_config


def detect_backbone(path: str) -> str:
    """Which backbone reads `path`: ours for a finetune.py run folder, else the one backbone
    whose own layouts (`Backbone.recognises`) include it."""
    p = Path(path)
    if not p.exists() and not HUB_ID.match(path):
        raise CheckpointNotFoundError(f"{path} not found (nor a hub id owner/name)")
    if is_run_dir(p):
        name = load_checkpoint(p / META).get("backbone")
        if name:
            return name
    claims = [name for name in backbone_names() if backbone_class(name).recognises(path)]
    if len(claims) == 1:
        return claims[0]
    layouts = "; ".join(f"{name}: {backbone_class(name).weights_layout}"
                        for name in backbone_names() if backbone_class(name).weights_layout)
    if claims:
        raise CheckpointError(f"{path}: several backbones read it ({', '.join(claims)})")
    raise CheckpointError(f"{path}: not a run folder (.hydra/config.yaml + {META}) nor a layout "
                          f"a backbone reads ({layouts})")


def load_for_eval(path: str, device: torch.device, *, digit: bool = False,
                  dataset: str | None = None, tokenizer: str | None = None) -> tuple[Backbone, Any]:
    """(backbone in eval mode, config with data/sampling/eval/seq_len keys) for `path`; a hub
    id of a pushed DoT run (`dot.hub`) is fetched and read as a run folder."""
    from dot.hub import fetch_run

    fetched = fetch_run(path)
    path = str(fetched) if fetched else path
    found = run_checkpoint(path)
    if found:
        run, ckpt = found
        state = load_checkpoint(ckpt, device)
        if state.get("format") == FORMAT:
            return load_run(run, device, state=state)
    return load_pretrained(detect_backbone(path), path, device, digit=digit, dataset=dataset,
                           tokenizer=tokenizer)


def load_pretrained(name: str, path: str, device: torch.device, *, digit: bool = False,
                    dataset: str | None = None, tokenizer: str | None = None) -> tuple[Backbone, Any]:
    """Weights in backbone `name`'s own layout: the backbone describes them as config values
    (`Backbone.read_pretrained`), set here over its defaults; `dataset` names the task."""
    cls = backbone_class(name)
    found = cls.read_pretrained(path, device, digit=digit, tokenizer=tokenizer)
    cfg = compose_config([f"backbone={name}"])
    with open_dict(cfg):
        for key, value in found.values.items():
            OmegaConf.update(cfg, key, value, force_add=True)
        cfg.init = str(path)
        if dataset:
            cfg.data.task = dataset
    backbone = cls.from_pretrained(cfg, found)
    backbone.model.eval()
    return backbone, cfg
