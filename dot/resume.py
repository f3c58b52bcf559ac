"""A resumed run keeps the config it was started with.

`python finetune.py hydra.run.dir=RUN` resumes RUN when it holds a checkpoint. The run's
`.hydra/overrides.yaml` is replayed before the command line's overrides, so the config is
composed as at the start, and Hydra is told not to rewrite `.hydra/` (output_subdir=null).
An override that changes a setting of the run is refused, unless
`training.allow_config_change=true`: then the change is logged and appended to
`.hydra/changes.yaml`, `.hydra/config.yaml` becomes the effective config, and the config the
run started with stays in `.hydra/config.original.yaml`. Settings that cannot change the
trained model (`FREE`) may differ without being recorded.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dot.checkpoint import META

FREE = ("device", "eval.", "wandb.", "training.allow_config_change")
HYDRA_DIR = ".hydra"


class ConfigChangeError(ValueError):
    """A resume asked for a different config without `training.allow_config_change=true`."""


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_dir_of(argv: list[str]) -> Path | None:
    """The `hydra.run.dir=` of a command line, if any."""
    dirs = [a.split("=", 1)[1] for a in argv if _key(a) == "hydra.run.dir"]
    return Path(dirs[-1]) if dirs else None


def is_resumable(run_dir: Path | None) -> bool:
    return run_dir is not None and (run_dir / META).is_file() and \
        (run_dir / HYDRA_DIR / "config.yaml").is_file()


def resume_argv(argv: list[str]) -> list[str]:
    """`argv` for Hydra: an existing run's own overrides first, then the new ones."""
    run_dir = run_dir_of(argv[1:])
    if not is_resumable(run_dir):
        return argv
    path = run_dir / HYDRA_DIR / "overrides.yaml"
    first = list(OmegaConf.load(path)) if path.is_file() else []
    given = {_key(a) for a in argv[1:]}
    replay = [o for o in first if _key(o) not in given and not _key(o).startswith("hydra.")]
    return [argv[0], *replay, *argv[1:], "hydra.output_subdir=null"]


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for k, v in cfg.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: cfg}


def _compose(overrides: list[str]) -> DictConfig:
    """The project config under `overrides`, inside a running Hydra app or outside one."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    from dot.config import compose_config

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides)
    return compose_config(overrides)


def config_changes(cfg: DictConfig, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """key -> (value the run has, value asked for), for every setting that would change the
    run; raises ConfigChangeError when there are some and they are not allowed.

    Both sides are composed by today's code (the run's overrides, and `cfg`), so a default
    that changed since the run started is not taken for a change of the run.
    """
    if not is_resumable(run_dir):
        return {}
    path = run_dir / HYDRA_DIR / "overrides.yaml"
    first = [o for o in (OmegaConf.load(path) if path.is_file() else [])
             if not _key(o).startswith("hydra.")]
    old = _flat(OmegaConf.to_container(_compose(first), resolve=False))
    new = _flat(OmegaConf.to_container(cfg, resolve=False))
    changes = {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
               if old.get(k) != new.get(k) and not k.startswith(FREE)}
    if changes and not cfg.training.get("allow_config_change", False):
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        raise ConfigChangeError(
            f"{run_dir} was started with another config ({listed}); a resumed run keeps its "
            f"own config ({run_dir / HYDRA_DIR / 'config.yaml'}). Drop these overrides to "
            "resume it as it was, use a new hydra.run.dir for a new run, or add "
            "training.allow_config_change=true to change the run deliberately (recorded in "
            f"{run_dir / HYDRA_DIR / 'changes.yaml'}).")
    return changes


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def record_changes(cfg: DictConfig, run_dir: Path, changes: dict[str, tuple[Any, Any]],
                   step: int, overrides: list[str]) -> Path:
    """Keep the first config, make `cfg` the run's config, and log the change with its step."""
    hydra_dir = run_dir / HYDRA_DIR
    original = hydra_dir / "config.original.yaml"
    if not original.is_file():
        _write_text(original, (hydra_dir / "config.yaml").read_text())
    log_path = hydra_dir / "changes.yaml"
    entries = list(OmegaConf.load(log_path)) if log_path.is_file() else []
    entries.append({"step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
    _write_text(log_path, OmegaConf.to_yaml(OmegaConf.create(entries)))
    effective = OmegaConf.to_container(cfg, resolve=False)
    effective["training"]["allow_config_change"] = False  # permission is per command
    _write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(effective)))
    last = {_key(o): o for o in overrides}  # a later override of a key wins, as in Hydra
    kept = [o for k, o in last.items() if not k.startswith(("hydra.", "training.allow_config"))]
    _write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(kept)))
    return log_path
