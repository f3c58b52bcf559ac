"""Run folders and checkpoints.

A run folder (`exp_local/<task>/<date>/<time>/`) holds `.hydra/config.yaml`,
`checkpoints-meta/checkpoint.pth` (latest state, rewritten for resuming),
`checkpoints/checkpoint_<step>.pth` (kept snapshots), `samples/`, `logs/` and `eval/`; a
sharded checkpoint (`dot.sharded`) has its shard folder beside the file.
Checkpoints are dicts `{"format": "dot-run-v1", "backbone", "step", "seq_len", "model", "ema",
"optimizer", "clip_norms"}` written atomically (temporary file, then rename) and read with
`weights_only=True`, since a checkpoint is untrusted input.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

FORMAT = "dot-run-v1"
META = Path("checkpoints-meta") / "checkpoint.pth"
RUNS_ROOT = Path("exp_local")


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as on the Hugging Face hub


class CheckpointError(ValueError):
    """Weights or a checkpoint that cannot be loaded: the file, what was found, what to do.
    The one error type of every loader (ours and the backbones')."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint or weights file that does not exist."""


def read_tensors(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)` of an untrusted file, or a `.safetensors` file; any
    failure (missing, truncated, corrupt, code-executing pickle) is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path, device=str(device))
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # corrupt or truncated file, unsafe pickle, not a torch file
        raise CheckpointError(f"cannot read {path}: {type(err).__name__}: {str(err)[:200]}; the "
                              "file is damaged or not a weights file (re-download or re-save "
                              "it)") from None


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file beside `path`, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    rank_of: tuple[int, int] | None = None) -> dict[str, Any]:
    """A checkpoint file; a sharded one (`dot.sharded`) comes back with full tensors, or with
    this process's shards when `rank_of` = (rank, world size) matches its writers."""
    path = Path(path)
    state = read_tensors(path, device)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    if "shards" in state:
        from dot.sharded import resolve
        return resolve(state, path, device, rank_of)
    return state


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "config.yaml").is_file() and (path / META).is_file()


def run_checkpoint(path: str | Path) -> tuple[Path, Path] | None:
    """(run folder, checkpoint file) for a run folder, its `checkpoints/` folder (the newest
    snapshot), its `checkpoints-meta/` folder, or a checkpoint file in either; else None."""
    p = Path(path)
    if p.is_file():
        run, ckpt = p.parent.parent, p
    elif p.name == "checkpoints" and p.is_dir():
        snapshots = sorted(p.glob("checkpoint_*.pth"), key=lambda f: snapshot_step(f) or -1)
        if not snapshots:
            raise CheckpointError(f"{p}: no checkpoint_<step>.pth in this folder")
        run, ckpt = p.parent, snapshots[-1]
    elif p.name == META.parent.name and p.is_dir():
        run, ckpt = p.parent, p / META.name
    else:
        run, ckpt = p, p / META
    return (run, ckpt) if (run / ".hydra" / "config.yaml").is_file() and ckpt.is_file() else None


def snapshot_step(path: Path) -> int | None:
    """The step of a kept snapshot `checkpoints/checkpoint_<step>.pth`; None for others."""
    stem = path.stem
    if path.parent.name == "checkpoints" and stem.startswith("checkpoint_") and stem[11:].isdigit():
        return int(stem[11:])
    return None


def latest_run(root: str | Path = RUNS_ROOT, accepting: dict[str, Any] | None = None) -> Path:
    """The most recently written run folder under `root`; with `accepting`, the newest whose
    backbone takes those sampler options (`Backbone.accepts`: e.g. predictor=dpm_solver)."""
    from omegaconf import OmegaConf

    from dot.backbone import backbone_class

    runs = [p.parents[1] for p in Path(root).glob("**/checkpoints-meta/checkpoint.pth")]
    runs = sorted((r for r in runs if is_run_dir(r)), key=lambda r: (r / META).stat().st_mtime)
    if not runs:
        raise CheckpointError(f"no run folder with {META} under {Path(root).resolve()}; train one "
                              "with `python finetune.py` or pass --weights_path")
    if not accepting:
        return runs[-1]
    names = {r: OmegaConf.load(r / ".hydra" / "config.yaml").get("backbone", {}).get("name")
             for r in runs}
    mine = [r for r in runs if names[r] and backbone_class(names[r]).accepts(accepting)]
    if not mine:
        others = ", ".join(f"{names[r]} ({r})" for r in runs[-3:])
        flags = ", ".join(f"{k}={v}" for k, v in accepting.items())
        raise CheckpointError(
            f"no run under {Path(root).resolve()} takes the sampler settings given ({flags}); "
            f"the newest runs there are: {others}. Pass --weights_path, or drop those flags")
    return mine[-1]


def dot_run_of(init: str) -> tuple[Path, dict[str, Any]] | None:
    """(run folder, checkpoint) of the finetune.py run an `init=` value names (a local folder,
    or a repo pushed with `dot.hub`, fetched); None for `scratch` and for the backbones' own
    weight layouts (official dot-sedd run folders included: their checkpoints carry no format)."""
    if init == "scratch":
        return None
    from dot.hub import fetch_run

    run = fetch_run(init) or Path(init)
    if not is_run_dir(run):
        return None
    state = load_checkpoint(run / META)
    return (run, state) if state.get("format") == FORMAT else None


def load_run_weights(model: torch.nn.Module, state: dict[str, Any], run_dir: Path,
                     use_ema: bool = True) -> None:
    """Load a run checkpoint's weights into `model` strictly, the EMA weights when present."""
    result = model.load_state_dict(state["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{run_dir / META} does not match the model of {run_dir}/.hydra/"
                              f"config.yaml: missing {result.missing_keys[:5]}, unexpected "
                              f"{result.unexpected_keys[:5]}")
    if use_ema and state.get("ema"):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, t in state["ema"]["shadow_params"].items():
                params[name].copy_(t)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", use_ema: bool = True,
             state: dict[str, Any] | None = None):
    """(backbone, config) of one of our run folders, with the EMA weights when present."""
    from omegaconf import OmegaConf

    from dot.backbone import backbone_class
    from dot.tokenization import load_tokenizer, run_tokenizer_name

    run_dir = Path(run_dir)
    from dot.config import with_defaults

    cfg = with_defaults(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    cfg.init = "scratch"  # the weights come from the checkpoint
    state = state if state is not None else load_checkpoint(run_dir / META, device)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{run_dir / META} is not a dot run checkpoint (format "
                              f"{state.get('format')!r}); pass the backbone's own weights folder")
    name = run_tokenizer_name(cfg)
    if name.endswith(".json") and (run_dir / name).is_file():  # a file shipped with the run
        name = str(run_dir / name)
    tok = load_tokenizer(name, digits=cfg.data.get("digit", False))
    backbone = backbone_class(cfg.backbone.name).from_config(cfg, tok)
    model = backbone.model.to(device)
    load_run_weights(model, state, run_dir, use_ema)
    model.eval()
    cfg.seq_len = int(state["seq_len"])
    return backbone, cfg
