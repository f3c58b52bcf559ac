"""Fine-tune (or train from scratch) a DoT model: `python finetune.py [overrides]`.

Examples:
    python finetune.py                                  # built-in default (see README)
    python finetune.py data.multipass=True              # DoT-MP
    python finetune.py backbone=plaid model=plaid1b init=PATH/plaid1b_weights data.task=gsm8k
    torchrun --nproc_per_node 2 finetune.py             # data parallel, same global batch
    python finetune.py hydra.run.dir=exp_local/...      # resume a run in place
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def _shared_run_dir() -> None:
    """Under torchrun, every process must write to the run folder chosen by rank 0."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or any(a.startswith("hydra.run.dir=") for a in sys.argv):
        return
    import torch.distributed as dist

    from dot.distributed import setup

    setup("auto")
    stamp = [time.strftime("%Y.%m.%d/%H%M%S")]
    dist.broadcast_object_list(stamp, src=0)
    sys.argv.append(f"hydra.run.dir=exp_local/${{data.task}}/{stamp[0]}")


@hydra.main(version_base=None, config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from dot.train import train

    train(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    _shared_run_dir()
    main()
