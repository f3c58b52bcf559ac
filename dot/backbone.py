"""The contract between the backbone-agnostic DoT pipeline and a diffusion backbone.

The trainer (`dot.train`) and the evaluator (`dot.evaluate`) only talk to a backbone through
this class, so SEDD, Plaid and the autoregressive baseline plug into the same loop.

Sequence layout shared by every backbone (built by `dot.collate`)::

    input_ids      = source + [SEP] + target + [EOS] + [PAD]...
    fixed_mask     = True on source + SEP (the conditioning prefix, never noised or scored)
    attention_mask = True on every real token (False on padding)

In multi-pass mode the target is one thought; EOS follows only the last thought, so a
generated thought ends at the first PAD (or EOS when the chain is finished).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dot.rng import RowRandom
from dot.tokenization import Tokenizer


@dataclass
class Batch:
    """One micro-batch of training or validation rows.

    `rows` are the global indices of these rows inside the step's global batch; together with
    `RowRandom` they make the noise of a row independent of how the batch is split over
    processes and accumulation steps.
    """

    input_ids: Tensor  # [B, L] int64
    fixed_mask: Tensor  # [B, L] bool, True = conditioning prefix (source + SEP)
    attention_mask: Tensor  # [B, L] bool, True = real token, False = padding
    rows: Tensor  # [B] int64, global row indices within the step
    global_batch_size: int
    step: int

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.input_ids.to(device), self.fixed_mask.to(device),
                     self.attention_mask.to(device), self.rows, self.global_batch_size, self.step)


@dataclass
class SampleResult:
    """Output of one conditional generation pass.

    `ids` has the input's shape with every non-fixed position generated; `nfe` counts network
    evaluations for the whole batch pass; `chain` (only when asked for) holds the decoded-token
    state after every denoising step, each [B, L], for visualising the chain. `row_nfe` [B]
    (where a sampler stops rows early) counts the calls each row needed, i.e. what it would
    have cost decoded alone; None means every row needed all `nfe`.
    """

    ids: Tensor
    nfe: int
    chain: list[Tensor] | None = field(default=None)
    row_nfe: Tensor | None = field(default=None)


@dataclass(frozen=True)
class SamplerFlag:
    """One sampler option of a backbone as a flag of evaluation_batch.py (`--name`).

    `kind`: `value` (the flag takes the option's value, of `type`), `switch` (`--name` sets
    True) or `bool` (`--name` / `--no_name`). `check` names the range a value must have
    (`count` >= 1, `positive` > 0, `probability` in (0, 1]). A flag with `sets` is not an
    option of its own but stands for others (Plaid's `--dpm_solver` = `--predictor dpm_solver`).
    """

    name: str
    help: str
    kind: str = "value"
    type: Any = str
    choices: tuple[Any, ...] | None = None
    check: str | None = None
    sets: tuple[tuple[str, Any], ...] = ()


@dataclass
class Pretrained:
    """Weights a backbone read from its own layout, and what they are as config values.

    `values` maps dotted config keys to values (`{"model.n_blocks": 24, "seq_len": 256}`):
    the architecture read from the weights, and the data settings and row length a foreign run
    folder names; `dot.loading` sets them over the backbone's defaults."""

    weights: Any
    tokenizer: Tokenizer
    values: dict[str, Any]


class Backbone(abc.ABC):
    """A trainable generative model of `input_ids` given the fixed prefix.

    Subclasses own `self.model`: the one `nn.Module` holding every trained parameter and buffer
    (checkpoints store its state dict; EMA and the optimizer see its parameters).
    """

    name: ClassVar[str]
    # The sampler options `sample` accepts, as evaluation flags; evaluation rejects any other
    # option with a clear error. `sample_options` (their names) is derived from them.
    sampler_flags: ClassVar[tuple[SamplerFlag, ...]] = ()
    sample_options: ClassVar[frozenset[str]] = frozenset()
    predictors: ClassVar[frozenset[str]] = frozenset()  # values of the `predictor` option

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.sample_options = frozenset(f.name for f in cls.sampler_flags if not f.sets)

    def __init__(self, cfg: Any, tokenizer: Tokenizer, model: nn.Module):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.model = model

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg: Any, tokenizer: Tokenizer) -> "Backbone":
        """Build the model described by the Hydra config (`cfg.init`: 'scratch' or weights)."""

    # the backbone's own weight layouts, as `read_pretrained` reads them (for error messages)
    weights_layout: ClassVar[str] = ""

    @classmethod
    def recognises(cls, path: str) -> bool:
        """Whether `read_pretrained` reads `path` (a local folder, or an id it can fetch)."""
        return False

    @classmethod
    def read_pretrained(cls, path: str, device: torch.device, *, digit: bool = False,
                        tokenizer: str | None = None) -> "Pretrained":
        """Read weights in the backbone's own layout for evaluation, and describe them as
        config values; `dot.loading` composes the config and calls `from_pretrained`."""
        raise ValueError(f"the {cls.name} backbone loads only run folders written by finetune.py")

    @classmethod
    def from_pretrained(cls, cfg: Any, found: "Pretrained") -> "Backbone":
        """The backbone around weights `read_pretrained` returned, under the composed config."""
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups; the default is one AdamW group from `cfg.optim`."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad],
                 "lr": self.cfg.optim.lr, "weight_decay": self.cfg.optim.weight_decay}]

    def shard_units(self) -> list[nn.Module]:
        """The modules that FSDP shards (and activation checkpointing wraps) one at a time; by
        default every transformer block: the items of each `nn.ModuleList` named `blocks`."""
        return [block for name, m in self.model.named_modules()
                if name.rsplit(".", 1)[-1] == "blocks" and isinstance(m, nn.ModuleList)
                for block in m]

    @abc.abstractmethod
    def loss(self, batch: Batch, rng: RowRandom) -> tuple[Tensor, dict[str, float]]:
        """Training loss of a micro-batch (a scalar to backpropagate) and metrics to log.

        The scalar must be the mean over the *global* batch restricted to these rows, i.e. the
        trainer sums the returned values over micro-batches and processes; use
        `batch.global_batch_size` as the divisor.
        """

    @torch.no_grad()
    def eval_loss(self, batch: Batch, rng: RowRandom) -> tuple[Tensor, dict[str, float]]:
        """Validation loss; by default the training loss without gradients."""
        return self.loss(batch, rng)

    def after_optimizer_step(self, step: int) -> None:
        """Hook for state a backbone keeps across steps (e.g. Plaid's loss-variance EMAs)."""

    @classmethod
    def check_sample_options(cls, options: dict[str, Any]) -> None:
        """Refuse sampler options this backbone does not have, and predictors it does not
        know (never ignore one silently)."""
        unknown = sorted(set(options) - cls.sample_options)
        if unknown:
            raise ValueError(f"sampler option(s) {', '.join(unknown)} do not apply to the "
                             f"{cls.name} backbone (it accepts: "
                             f"{', '.join(sorted(cls.sample_options)) or 'none'})")
        if "predictor" in options and options["predictor"] not in cls.predictors:
            raise ValueError(f"unknown predictor {options['predictor']!r} for the {cls.name} "
                             f"backbone; use one of {sorted(cls.predictors)} (sampling.predictor)")

    @classmethod
    def accepts(cls, options: dict[str, Any]) -> bool:
        try:
            cls.check_sample_options(options)
        except ValueError:
            return False
        return True

    @abc.abstractmethod
    def sample(self, input_ids: Tensor, fixed_mask: Tensor, steps: int,
               generator: torch.Generator, record_chain: bool = False,
               **options: Any) -> SampleResult:
        """Generate every non-fixed position of `input_ids` [B, L] with `steps` denoising steps.

        Fixed positions must come back unchanged. `options` are backbone-specific sampler
        settings (names listed in `sample_options`).
        """


ENTRY_POINTS = "dot.backbones"  # the entry-point group every backbone package registers in


def backbone_names() -> list[str]:
    """The registered backbones (`[project.entry-points."dot.backbones"]` of each package)."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINTS))


def backbone_class(name: str) -> type[Backbone]:
    """Look up a backbone class by its config name (`backbone.name`); a backbone's module (and
    its dependencies) is imported only when it is asked for."""
    found = [ep for ep in entry_points(group=ENTRY_POINTS) if ep.name == name]
    if not found:
        names = backbone_names()
        hint = "" if names else " (none is registered: install the project, `pip install -e .`)"
        raise ValueError(f"unknown backbone {name!r}; choose one of {names}{hint} "
                         f"(config key backbone=...)")
    return found[0].load()
