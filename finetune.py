"""Fine-tune (or train from scratch) a DoT model: `python finetune.py [overrides]`.

Examples:
    python finetune.py                                  # built-in default (see README)
    python finetune.py data.multipass=True              # DoT-MP
    python finetune.py backbone=plaid model=plaid1b init=PATH/plaid1b_weights data.task=gsm8k
    torchrun --nproc_per_node 2 finetune.py             # data parallel, same global batch
    python finetune.py hydra.run.dir=exp_local/...      # resume a run with its own config

Errors print one line (`error: ...`) and exit 1; DOT_DEBUG=1 shows the traceback. Ctrl-C or
SIGTERM stops after the current step, saves a checkpoint and prints the resume command.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

_NEW_RUN_DIR = False  # set from the command line: the run folder did not exist before


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
    from dot.checkpoint import META, CheckpointError
    from dot.train import TrainingInterrupted, train

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        summary = train(cfg, run_dir, list(hydra_cfg.overrides.task))
    except TrainingInterrupted as stop:
        sys.exit(_fail(str(stop), stop.exit_code))
    except KeyboardInterrupt:
        sys.exit(_fail(f"interrupted; {run_dir / META} holds the last saved step "
                       f"(resume with: python finetune.py hydra.run.dir={run_dir})", 130))
    except (ValueError, OSError, CheckpointError) as err:
        if os.environ.get("DOT_DEBUG"):
            raise
        if _NEW_RUN_DIR and int(os.environ.get("RANK", "0")) == 0 and not (
                (run_dir / META).exists() or (run_dir / "logs").exists()):
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing was trained: leave nothing
        sys.exit(_fail(f"error: {err}", 1))
    if summary is not None:  # the main process draws the run's figures once training is done
        from dot.report.plots import run_figures

        print("figures: " + ", ".join(str(f) for f in run_figures(run_dir)))


def _fail(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code


if __name__ == "__main__":
    _shared_run_dir()
    from dot.resume import resume_argv, run_dir_of

    given = run_dir_of(sys.argv[1:])
    _NEW_RUN_DIR = given is None or not given.exists()
    sys.argv = resume_argv(sys.argv)
    main()
