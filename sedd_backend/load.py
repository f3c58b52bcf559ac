"""Load a trained SEDD model with its graph and noise schedule (spec §1).

Accepted sources, checked in this order:

* a local folder in the hub layout: `config.json` + `model.safetensors` or
  `pytorch_model.bin` (safetensors preferred);
* a training run folder: `.hydra/config.yaml` + `checkpoints-meta/checkpoint.pth`, either
  official (top-level `tokens`, EMA as a positional list) or ours (`format: dot-run-v1`,
  vocabulary from `data.tokenizer`, EMA as {name: tensor}); the EMA weights are used;
* a hub id such as `louaaron/sedd-small`, fetched with huggingface_hub.

Loading is strict, unlike the official `strict=False` (spec §10 bugs 13-15): every key and
shape must match the model the config describes; only `rotary_emb.inv_freq` may be absent
(it is recomputed anyway).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from dot.checkpoint import HUB_ID, META, CheckpointError, load_checkpoint, read_tensors
from sedd_backend.graph import Graph, get_graph
from sedd_backend.model import DDiT, build_model
from sedd_backend.noise import Noise, get_noise

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
RUN_CONFIG = Path(".hydra") / "config.yaml"
RUN_CHECKPOINT = META
OPTIONAL_KEYS = frozenset({"rotary_emb.inv_freq"})


def load_model(path_or_hub_id: str | os.PathLike, device: torch.device | str = "cpu"
               ) -> tuple[DDiT, Graph, Noise]:
    """(model in eval mode on `device`, graph, noise) from a folder or a hub id."""
    folder = _resolve(str(path_or_hub_id))
    if (folder / "config.json").is_file() and any((folder / f).is_file() for f in WEIGHT_FILES):
        cfg = _read_json(folder / "config.json")
        weights = next(folder / f for f in WEIGHT_FILES if (folder / f).is_file())
        model, graph, noise = _build(cfg, folder / "config.json")
        _load_strict(model, _read_weights(weights), weights)
    elif (folder / RUN_CONFIG).is_file() and (folder / RUN_CHECKPOINT).is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(folder / RUN_CONFIG)
        model, graph, noise = _build(cfg, folder / RUN_CONFIG)
        _load_strict(model, _run_state(model, folder / RUN_CHECKPOINT), folder / RUN_CHECKPOINT)
    else:
        raise CheckpointError(
            f"{folder} is not a SEDD model folder: expected either config.json plus one of "
            f"{', '.join(WEIGHT_FILES)} (hub layout), or {RUN_CONFIG} plus {RUN_CHECKPOINT} "
            f"(a training run); found {sorted(p.name for p in folder.iterdir())}. Point the "
            "path at the run folder itself (the one holding .hydra/), or at a hub snapshot.")
    return model.to(device).eval(), graph, noise


def _resolve(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the folder that holds it (a hub snapshot "
                              f"with config.json, or a run folder with {RUN_CONFIG})")
    if not HUB_ID.match(source):
        raise CheckpointError(f"{source} is neither a local folder nor a hub id (owner/name)")
    try:
        return download_hub(source)
    except Exception as err:  # offline, unknown repo, no weights: all end here
        raise CheckpointError(f"{source} is not a local folder and could not be fetched from the "
                              f"Hugging Face hub ({type(err).__name__}: {err}); check the path, or "
                              "download the repo and pass its folder") from err


def download_hub(repo_id: str) -> Path:
    """Fetch config.json and one weight file (safetensors first) into the hub cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    config = Path(hf_hub_download(repo_id, "config.json"))
    for name in WEIGHT_FILES:
        try:
            hf_hub_download(repo_id, name)
            return config.parent
        except EntryNotFoundError:
            continue
    raise FileNotFoundError(f"hub repo {repo_id} has none of {WEIGHT_FILES}")


def _build(cfg: Mapping[str, Any], config_file: Path) -> tuple[DDiT, Graph, Noise]:
    """Model, graph and noise as the config describes them (unknown keys ignored)."""
    try:
        if "tokens" in cfg:  # official configs
            tokens = int(cfg["tokens"])
        else:  # our run configs: the vocabulary is the tokenizer's
            from dot.tokenization import load_tokenizer

            tokens = load_tokenizer(cfg["data"]["tokenizer"]).vocab_size
        graph_type = cfg["graph"]["type"]
        return build_model(cfg["model"], graph_type, tokens), get_graph(graph_type, tokens), \
            get_noise(cfg["noise"])
    except (KeyError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{config_file}: cannot build a SEDD model from this config "
                              f"({type(err).__name__}: {err}); it needs tokens or "
                              "data.tokenizer, graph.type, noise.type and model.hidden_size, "
                              "cond_dim, n_heads, n_blocks, dropout, scale_by_sigma") from err


def _read_json(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); re-download the model "
                              "folder") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(cfg).__name__}")
    return cfg


def _read_weights(path: Path) -> dict[str, Tensor]:
    state = read_tensors(path)
    if not (isinstance(state, Mapping) and all(isinstance(v, Tensor) for v in state.values())):
        raise CheckpointError(f"{path}: expected a state dict (parameter name -> tensor), found "
                              f"a {type(state).__name__}; save model.state_dict()")
    return dict(state)


def _run_state(model: DDiT, path: Path) -> dict[str, Tensor]:
    """The checkpoint's model state dict with its EMA shadow weights in place of the parameters."""
    ckpt = load_checkpoint(path)
    if "model" not in ckpt:
        raise CheckpointError(f"{path}: not a training checkpoint (no 'model' entry)")
    if ckpt.get("backbone", "sedd") != "sedd":
        raise CheckpointError(f"{path}: this run trained backbone {ckpt['backbone']!r}, not sedd; "
                              "load it with that backbone")
    state = dict(ckpt["model"])
    ema = ckpt.get("ema")
    if not ema:
        return state
    names = [name for name, _ in model.named_parameters()]
    shadow = ema["shadow_params"]
    if isinstance(shadow, Mapping):  # ours: named
        missing, extra = sorted(set(names) - set(shadow)), sorted(set(shadow) - set(names))
        if missing or extra:
            raise CheckpointError(f"{path}: EMA shadow_params do not name the model's parameters: "
                                  f"missing {_short(missing)}, unexpected {_short(extra)}; the run "
                                  "config does not describe the model that was trained")
        state.update(shadow)
    else:  # official: a list in model.parameters() order
        if len(shadow) != len(names):
            raise CheckpointError(f"{path}: the EMA holds {len(shadow)} tensors but the model built "
                                  f"from the run config has {len(names)} parameters; the config "
                                  "(model.n_blocks etc.) does not match the checkpoint")
        state.update(zip(names, shadow))
    return state


def _short(keys: list[str], limit: int = 8) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more


def _load_strict(model: DDiT, state: Mapping[str, Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and k not in OPTIONAL_KEYS]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
             if k in state and k not in OPTIONAL_KEYS and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: weights do not match the model its config describes: missing keys "
            f"{_short(missing)}, unexpected keys {_short(unexpected)}, wrong shapes (file vs "
            f"model) {_short(wrong)}. Check that the config next to the weights (tokens or "
            "data.tokenizer, graph.type, model.hidden_size/n_heads/n_blocks/cond_dim) is the one "
            "they were trained with, and that keys carry no prefix such as 'module.'.")
    model.load_state_dict(state)
