"""The project's Hydra configuration: composing it outside `finetune.py` (tests, evaluation of
raw weights), and checking the shared settings of a composed config."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from dot.checkpoint import HUB_ID

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """`configs/config.yaml` composed with command-line style overrides."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="config", overrides=overrides or [])


def with_defaults(stored: DictConfig) -> DictConfig:
    """A run's stored config over today's defaults of its backbone: a setting added since the
    run was trained reads as its default (the one in configs/), so code reads configs strictly."""
    base = compose_config([f"backbone={stored.backbone.name}"])
    OmegaConf.set_struct(base, False)
    return OmegaConf.merge(base, stored)


class ConfigError(ValueError):
    """A config value of the wrong type or out of range (named by its key)."""


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _count(v: Any) -> bool:  # 0 = off
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


# key -> (check, what a valid value is); the settings every backbone reads
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (_count, "an integer >= 0"),
    "training.batch_size": (_positive_int, "an integer >= 1"),
    "training.accum": (_positive_int, "an integer >= 1"),
    "training.n_iters": (_count, "an integer >= 0"),
    "training.log_freq": (_positive_int, "an integer >= 1"),
    "training.eval_freq": (_count, "an integer >= 0 (0 = off)"),
    "training.snapshot_freq": (_positive_int, "an integer >= 1"),
    "training.snapshot_freq_for_preemption": (_positive_int, "an integer >= 1"),
    "training.block_size": (_optional(_positive_int), "null or an integer >= 1"),
    "training.max_minutes": (_optional(_positive), "null or a number > 0"),
    "training.ema": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1)"),
    "eval.batch_size": (_positive_int, "an integer >= 1"),
    "eval.n_examples": (_optional(_positive_int), "null or an integer >= 1"),
    "eval.valid_examples": (_optional(_count), "null or an integer >= 0"),
    "eval.cot_steps": (_positive_int, "an integer >= 1"),
    "optim.lr": (_positive, "a finite number > 0"),
    "optim.eps": (_positive, "a finite number > 0"),
    "optim.beta1": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1)"),
    "optim.beta2": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1)"),
    "optim.weight_decay": (lambda v: _count(v) or (isinstance(v, float) and v >= 0),
                           "a number >= 0"),
    "optim.warmup": (_count, "an integer >= 0"),
    "optim.zero_lr_steps": (_count, "an integer >= 0"),
    "optim.grad_clip": (_optional(_positive), "null or a number > 0"),
    "optim.clip_quantile": (_optional(lambda v: _positive(v) and v <= 1), "null or in (0, 1]"),
    "sampling.steps": (_positive_int, "an integer >= 1"),
    "data.n_train": (_positive_int, "an integer >= 1"),
    "data.glance": (lambda v: isinstance(v, (int, float)) and 0 <= v <= 1, "a number in [0, 1]"),
}


def check_config(cfg: DictConfig) -> None:
    """Refuse a composed config whose shared settings have the wrong type or range, before
    anything is built; every bad key is named with what it should be."""
    bad = []
    for key, (check, want) in RULES.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING:
            bad.append(f"{key} is missing")
        elif not check(value):
            bad.append(f"{key}={value!r} must be {want}")
    for key in ("data.train", "data.valid", "data.test"):  # files the user named must exist
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not Path(str(value)).is_file():
            bad.append(f"{key}={value}: no such file")
    init = str(OmegaConf.select(cfg, "init", default="scratch"))
    if init != "scratch" and not Path(init).exists() and not HUB_ID.match(init):
        bad.append(f"init={init}: no such file or folder, nor a hub id (owner/name)")
    if bad:
        raise ConfigError("bad config: " + "; ".join(bad))


_MISSING = object()
