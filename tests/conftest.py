import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

torch.set_num_threads(int(os.environ.get("DOT_TEST_THREADS", "2")))


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} not available (shared data lives beside the project)")
    return path


# The tiny model every training test builds on: 2x2 multiplication, one small block, CPU.
TINY = ["data.task=mult2x2", "data.tokenizer=symbols", "training.batch_size=8",
        "training.eval_freq=0", "model.hidden_size=32", "model.n_blocks=1", "model.cond_dim=16",
        "device=cpu"]


@pytest.fixture
def tiny_config():
    """`tiny_config("backbone=ar", ...)`: the composed TINY config with more overrides."""
    from dot.config import compose_config

    return lambda *overrides: compose_config([*TINY, *overrides])
