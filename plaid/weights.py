"""The four Plaid modules and their on-disk layout (spec §1).

Official checkpoints are a folder of four plain state dicts, `noise_schedule.pt`,
`gamma_bounds.pt`, `embedding_matrix.pt` and `model.pt`, float32, no `module.` prefix, loaded
strictly. `Plaid` holds the four modules under those names (so its own state dict is the four
files' keys prefixed by the module name) plus the loss's cross-step EMA state.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from dot.checkpoint import CheckpointError, read_tensors
from plaid.embedding import EmbeddingMatrix
from plaid.model import DiffusionModel
from plaid.schedule import GammaBounds, NoiseSchedule

MODULE_NAMES = ("noise_schedule", "gamma_bounds", "embedding_matrix", "model")
EMA_INIT = 1e-8  # initial value of the five reconstruction-split EMAs (spec §5.2)


class WeightsError(CheckpointError):
    """Plaid weights that do not fit the model (the project's CheckpointError)."""


class Plaid(nn.Module):
    """Everything Plaid trains, as one module: the four official modules plus loss state.

    `reconst_ema` = (bias, m_r, q_r, m_d, q_d), the bias-corrected EMAs of the reconstruction and
    diffusion losses and their squares that choose the reconstruction batch size (§5.2). It is a
    buffer so training checkpoints carry it; it is not part of the official four files.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, n_blocks: int,
                 n_heads: int, schedule_width: int = 1024):
        super().__init__()
        self.noise_schedule = NoiseSchedule(schedule_width)
        self.gamma_bounds = GammaBounds()
        self.embedding_matrix = EmbeddingMatrix(vocab_size, embed_dim)
        self.model = DiffusionModel(vocab_size, embed_dim, hidden_size, n_blocks, n_heads)
        self.reset_loss_state()

    def reset_loss_state(self) -> None:
        self.register_buffer("reconst_ema", torch.full((5,), EMA_INIT, dtype=torch.float64,
                                                       device=self.gamma_bounds.gamma_0.device))

    def gamma(self, t: Tensor) -> Tensor:
        """Bounded γ(t) in float64."""
        return self.gamma_bounds(self.noise_schedule(t))

    def official_state_dicts(self) -> dict[str, dict[str, Tensor]]:
        """The four official state dicts (float32 copies on CPU)."""
        return {name: {k: v.detach().float().cpu().clone()
                       for k, v in getattr(self, name).state_dict().items()}
                for name in MODULE_NAMES}

    def load_official_state_dicts(self, state_dicts: dict[str, dict[str, Tensor]],
                                  assign: bool = False) -> None:
        """Strict load of the four official state dicts; every mismatch is reported at once."""
        problems = []
        for name in MODULE_NAMES:
            expected = getattr(self, name).state_dict()
            got = state_dicts[name]
            problems += [f"{name}.pt: missing key {k!r} (expected shape {list(expected[k].shape)})"
                         for k in expected if k not in got]
            problems += [f"{name}.pt: unexpected key {k!r}" for k in got if k not in expected]
            problems += [f"{name}.pt: key {k!r} has shape {list(got[k].shape)}, "
                         f"expected {list(expected[k].shape)}"
                         for k in expected if k in got and got[k].shape != expected[k].shape]
        if problems:
            raise WeightsError("Plaid weights do not match the model:\n  " + "\n  ".join(problems))
        for name in MODULE_NAMES:
            getattr(self, name).load_state_dict(state_dicts[name], strict=True, assign=assign)


def read_state_dicts(path: str | os.PathLike) -> dict[str, dict[str, Tensor]]:
    """The four state dicts of a weights folder; names every missing file in one error."""
    folder = Path(path)
    missing = [f"{name}.pt" for name in MODULE_NAMES if not (folder / f"{name}.pt").is_file()]
    if missing:
        raise WeightsError(f"Plaid weights folder {folder} lacks {', '.join(missing)} (expected "
                           f"{', '.join(n + '.pt' for n in MODULE_NAMES)})")
    states = {name: read_tensors(folder / f"{name}.pt") for name in MODULE_NAMES}
    for name, state in states.items():
        if not (isinstance(state, dict) and all(isinstance(v, Tensor) for v in state.values())):
            raise WeightsError(f"{folder / (name + '.pt')}: expected a state dict (name -> "
                               f"tensor), found a {type(state).__name__}")
    return states


def _dims(state_dicts: dict[str, dict[str, Tensor]]) -> dict[str, int]:
    """Architecture read off the tensor shapes; n_heads comes from the rotary buffer (d_h/2)."""
    try:
        model = state_dicts["model"]
        vocab_size, embed_dim = state_dicts["embedding_matrix"]["matrix"].shape
        hidden_size = model["input_linear.weight"].shape[0]
        head_dim = 2 * model["rotary_emb.inv_freq"].shape[0]
        n_blocks = 1 + max(int(m.group(1)) for k in model
                           if (m := re.match(r"blocks\.(\d+)\.", k)))
        schedule_width = state_dicts["noise_schedule"]["W1"].shape[0]
    except (KeyError, ValueError) as err:
        raise WeightsError(f"cannot infer the Plaid architecture from the weights: {err!r}") from err
    return dict(vocab_size=vocab_size, embed_dim=embed_dim, hidden_size=hidden_size,
                n_blocks=n_blocks, n_heads=hidden_size // head_dim, schedule_width=schedule_width)


def load_weights(path: str | os.PathLike) -> Plaid:
    """Build a Plaid model shaped like the weights in `path` and load them strictly.

    The model is built on the meta device and the loaded tensors are assigned, so a 1B model
    costs its weights' memory once.
    """
    state_dicts = read_state_dicts(path)
    with torch.device("meta"):
        plaid = Plaid(**_dims(state_dicts))
    plaid.load_official_state_dicts(state_dicts, assign=True)
    plaid.reset_loss_state()
    return plaid


def load_weights_into(plaid: Plaid, path: str | os.PathLike) -> None:
    """Load a weights folder into an existing model (the config decides the architecture)."""
    plaid.load_official_state_dicts(read_state_dicts(path))


def save_weights(plaid: Plaid, path: str | os.PathLike) -> None:
    """Write the official four-file layout, readable by the official code and `load_weights`."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for name, state_dict in plaid.official_state_dicts().items():
        torch.save(state_dict, folder / f"{name}.pt")
