"""SEDD as a DoT backbone: score-entropy training and conditional PC sampling.

`self.model` is the bare DDiT, so the trainer's checkpoints hold the official state-dict
layout (spec §1.3) and `load_model` reads them back. The graph and the noise schedule hold no
trained state.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from dot.backbone import Backbone, Batch, Pretrained, SampleResult, SamplerFlag
from dot.rng import RowRandom
from dot.tokenization import Tokenizer
from sedd_backend.blocks import block_ids, sample_blocks, sample_sliding, two_copy_model
from sedd_backend.graph import Graph, get_graph
from sedd_backend.load import load_model
from sedd_backend.losses import denoiser_log_score, next_token_loss, score_entropy_loss
from sedd_backend.model import DDiT, build_model
from sedd_backend.noise import Noise, get_noise
from sedd_backend.sampling import PREDICTORS, ParallelCommit, pc_sample


class SEDDBackbone(Backbone):
    name = "sedd"
    predictors = frozenset(PREDICTORS)
    sampler_flags = (
        SamplerFlag("predictor", " | ".join(PREDICTORS)),
        SamplerFlag("noise_removal", "final denoising step", kind="bool"),
        SamplerFlag("threshold", "confidence predictors: reveal every masked position with "
                    "probability >= this in the same call (parallel decoding)", type=float,
                    check="probability"),
        SamplerFlag("margin", "confidence predictors: reveal every masked position whose top-1 "
                    "beats the top-2 probability by >= this (early commit)", type=float,
                    check="probability"),
        SamplerFlag("block_tokens", "block diffusion: decode in blocks of this many tokens "
                    "(default: the run's backbone.block_tokens)", type=int, check="count"),
        SamplerFlag("sliding", "block models with causal clean attention: one call a block, each "
                    "block starting after the run the last call wrote (default: the run's "
                    "sampling.sliding)", kind="bool"),
        SamplerFlag("drafts", "sliding: keep the unsure rest of a window as a draft that the next "
                    "call checks with the next-token head (default: the run's sampling.drafts)",
                    kind="bool"),
        SamplerFlag("draft_threshold", "drafts: end the draft before its first token of "
                    "probability below this (default: the run's sampling.draft_threshold)",
                    type=float, check="probability"),
    )

    def __init__(self, cfg: Any, tokenizer: Tokenizer, model: DDiT, graph: Graph, noise: Noise):
        super().__init__(cfg, tokenizer, model)
        self.graph, self.noise = graph, noise
        bb = cfg.backbone
        if bb.clean_attention not in ("block", "causal"):
            raise ValueError(f"backbone.clean_attention={bb.clean_attention!r} must be block or "
                             "causal")
        if bb.next_token_loss and (not self.causal_clean or not bb.block_tokens
                                   or not float(bb.next_token_loss) > 0):
            raise ValueError(f"backbone.next_token_loss={bb.next_token_loss} must be a weight > 0 "
                             "of a block model (backbone.block_tokens) with "
                             "backbone.clean_attention=causal")

    @classmethod
    def from_config(cls, cfg: Any, tokenizer: Tokenizer) -> "SEDDBackbone":
        """Random weights for `init: scratch`, else the weights of a hub id or local folder."""
        tokens = tokenizer.vocab_size
        if cfg.init == "scratch":
            graph = get_graph(cfg.graph.type, tokens)
            model, noise = build_model(cfg.model, cfg.graph.type, tokens), get_noise(cfg.noise)
        else:
            model, graph, noise = load_model(cfg.init)
            _check_loaded(cfg, tokens, model, graph, noise)
            for module in model.modules():  # dropout is a training choice, not part of the weights
                if isinstance(module, nn.Dropout):
                    module.p = float(cfg.model.dropout)
        model.time_conditioning = bool(cfg.backbone.time_conditioning)
        return cls(cfg, tokenizer, model.train(), graph, noise)

    weights_layout = ("a SEDD checkpoint (config.json + model.safetensors / pytorch_model.bin, "
                      "a hub id such as louaaron/sedd-small, or an official dot-sedd run folder)")

    @classmethod
    def recognises(cls, path: str) -> bool:
        from dot.checkpoint import HUB_ID, is_run_dir

        p = Path(path)
        return (p / "config.json").is_file() or is_run_dir(p) or (not p.exists() and
                                                                   bool(HUB_ID.match(path)))

    @classmethod
    def read_pretrained(cls, path: str, device: torch.device, *, digit: bool = False,
                        tokenizer: str | None = None) -> Pretrained:
        """A hub id, hub-layout folder or official dot-sedd run folder, for evaluation.

        These carry no tokenizer name: the vocabulary must be GPT-2's (50257 tokens; `digit`
        does not apply to GPT-2). Data flags and the row length come from an official run's
        config when present (`data.multipass`, `data.hidden_thought`, `training.block_size`),
        else DoT's defaults (single pass, 128); the sampler keeps our config's defaults (DoT
        decodes with its own sampler, not the pretraining config's sampling section).
        """
        from dot.tokenization import load_tokenizer

        model, graph, noise = load_model(path, device)
        tokenizer_name = tokenizer or "gpt2"
        tok = load_tokenizer(tokenizer_name)
        tokens = graph.dim - 1 if graph.absorb else graph.dim
        if tokens != tok.vocab_size:
            raise ValueError(f"{path}: a model over {tokens} tokens, but tokenizer "
                             f"{tokenizer_name} has {tok.vocab_size}; pass the tokenizer the "
                             "weights were trained with (--tokenizer; GPT-2 for louaaron/sedd-*)")
        run_cfg = Path(path) / ".hydra" / "config.yaml"
        found = OmegaConf.load(run_cfg) if run_cfg.is_file() else OmegaConf.create()
        data = found.get("data", {})
        values = {"data.tokenizer": tokenizer_name, "data.task": data.get("task", "gsm8k"),
                  "data.multipass": bool(data.get("multipass", False)),
                  "data.hidden_thought": bool(data.get("hidden_thought", False)),
                  "graph.type": "absorb" if graph.absorb else "uniform",
                  "seq_len": int(found.get("training", {}).get("block_size", 128)),
                  **{f"model.{k}": v for k, v in model.arch.items()}}
        return Pretrained((model, graph, noise), tok, values)

    @classmethod
    def from_pretrained(cls, cfg: Any, found: Pretrained) -> "SEDDBackbone":
        model, graph, noise = found.weights
        return cls(cfg, found.tokenizer, model, graph, noise)

    @property
    def causal_clean(self) -> bool:
        """`backbone.clean_attention=causal`: decoded tokens are read token by token."""
        return self.cfg.backbone.clean_attention == "causal"

    @property
    def block_tokens(self) -> int | None:
        """Tokens per block of block diffusion (`sedd_backend.blocks`); None = whole target."""
        size = self.cfg.backbone.block_tokens
        return int(size) if size else None

    def log_score(self, x_BL: Tensor, sigma_B: Tensor, attn_mask: Tensor | None = None,
                  positions: Tensor | None = None,
                  kv_cache: list[dict[str, Tensor]] | None = None,
                  prev_BL: Tensor | None = None) -> Tensor:
        """The network's log-score, or the one implied by denoiser logits (cross_entropy)."""
        out_BLV = self.model(x_BL, sigma_B, attn_mask, positions, kv_cache, prev_BL)
        if self.cfg.backbone.objective == "cross_entropy":
            return denoiser_log_score(out_BLV, sigma_B.expand(x_BL.shape[0]))
        return out_BLV

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device  # the official loss reads model.device (bug 1)

    def loss(self, batch: Batch, rng: RowRandom) -> tuple[Tensor, dict[str, float]]:
        """Sum of the rows' score-entropy losses / global batch size (summed by the trainer)."""
        batch = batch.to(self._device())
        bb = self.cfg.backbone  # configs/backbone/sedd.yaml, read strictly
        model, stats, segments, clean = self.model, {}, None, {}
        t_range = tuple(bb.t_range)
        if self.block_tokens:
            size = self.block_tokens
            if bb.train_blocks:  # each row draws one of the layouts
                layouts = bb.train_blocks
                pick_B = rng.randint(len(layouts)).to(batch.input_ids.device)
                table = torch.tensor([[m.tokens, *m.t_range] for m in layouts],
                                     device=batch.input_ids.device)[pick_B]
                size, t_range = table[:, 0].long(), (table[:, 1], table[:, 2])
            offset = None
            if bb.random_block_starts:
                size_B = torch.as_tensor(size, device=batch.input_ids.device)
                offset = (rng.rand().to(batch.input_ids.device) * size_B).long()
            segments = block_ids(batch.fixed_mask, size, offset)
            model = two_copy_model(self.model, batch.input_ids, batch.fixed_mask, segments,
                                   causal=self.causal_clean, clean_out=clean)
        loss_B = score_entropy_loss(model, self.graph, self.noise, batch.input_ids,
                                    batch.fixed_mask, rng,
                                    weighting=bb.loss_weighting, order=bb.mask_order,
                                    real_BL=batch.attention_mask, objective=bb.objective,
                                    stats=stats, t_range=t_range,
                                    segments_BL=segments)
        if bb.next_token_loss:
            ar_B = next_token_loss(clean["out"], batch.input_ids, batch.fixed_mask,
                                   batch.attention_mask, stats)
            loss_B = loss_B + bb.next_token_loss * ar_B
        loss = loss_B.sum() / batch.global_batch_size
        return loss, {"loss": loss.item(), **stats}

    @torch.no_grad()
    def sample(self, input_ids: Tensor, fixed_mask: Tensor, steps: int,
               generator: torch.Generator, record_chain: bool = False,
               **options: Any) -> SampleResult:
        """PC sampling with the fixed positions projected back to `input_ids` at every step.

        Options: `predictor` (see `sedd_backend.sampling.PREDICTORS`), `noise_removal`
        (final denoiser), `threshold` and `margin` (`ParallelCommit`: confidence predictors
        reveal every sure position in one call), `block_tokens` (decode a block-diffusion
        model in blocks of another size, e.g. one trained on `backbone.train_blocks`);
        defaults from `cfg.sampling`. `cfg.sampling.skip_finished` stops
        network calls once no position is masked (identical ids, lower nfe);
        `cfg.sampling.reuse_unchanged` lets a sigma-blind network's confidence steps reuse the
        previous call when nothing was revealed (identical ids, lower nfe). With
        `backbone.block_tokens` the target is decoded block by block, `steps` per block, with
        the clean prefix cached when that is exact (`backbone.time_conditioning=false`) unless
        `cfg.sampling.kv_cache` is false.
        """
        self.check_sample_options(options)
        sampling = self.cfg.sampling
        device = self._device()
        ids_BL, fixed_BL = input_ids.to(device), fixed_mask.to(device).bool()
        was_training = self.model.training
        self.model.eval()
        predictor = options.get("predictor", sampling.predictor)
        denoise = bool(options.get("noise_removal", sampling.noise_removal))
        commit = ParallelCommit(options.get("threshold", sampling.threshold),
                                options.get("margin", sampling.margin))
        savings = {"commit": commit,
                   "skip_finished": commit.active or bool(sampling.skip_finished),
                   "reuse_unchanged": (not self.model.time_conditioning
                                       and bool(sampling.reuse_unchanged))}
        try:
            size = int(options.get("block_tokens") or self.block_tokens or 0)
            if options.get("block_tokens") and not self.block_tokens:
                raise ValueError("block_tokens: this model was trained without blocks "
                                 "(backbone.block_tokens=null); decode it whole")
            if options.get("sliding", sampling.sliding):
                result = self._sample_sliding(ids_BL, fixed_BL, size, predictor, commit,
                                              record_chain,
                                              bool(options.get("drafts", sampling.drafts)),
                                              float(options.get("draft_threshold",
                                                                sampling.draft_threshold)))
            elif size:
                tok = self.tokenizer
                cached = not self.model.time_conditioning and sampling.kv_cache
                result = sample_blocks(self.log_score, self.graph, self.noise, ids_BL, fixed_BL,
                                       size, steps, generator, eos_id=tok.eos_id,
                                       pad_id=tok.pad_id, predictor=predictor, denoise=denoise,
                                       record_chain=record_chain, **savings,
                                       n_layers=len(self.model.blocks) if cached else None,
                                       causal=self.causal_clean)
            else:
                result = pc_sample(
                    lambda x_BL, sigma_B: self.log_score(x_BL, sigma_B).exp(), self.graph,
                    self.noise, tuple(ids_BL.shape), steps, generator, predictor=predictor,
                    denoise=denoise, project=lambda x_BL: torch.where(fixed_BL, ids_BL, x_BL),
                    device=device, record_chain=record_chain, **savings)
        finally:
            self.model.train(was_training)
        back = input_ids.device
        chain = None if result.chain is None else [x.to(back) for x in result.chain]
        return SampleResult(result.ids.to(back), result.nfe, chain, result.row_nfe.to(back))

    def _sample_sliding(self, ids_BL: Tensor, fixed_BL: Tensor, size: int, predictor: str,
                        commit: ParallelCommit, record_chain: bool,
                        drafts: bool, draft_threshold: float) -> SampleResult:
        """`sampling.sliding`: one call a block, blocks starting where the last run ended;
        `sampling.drafts`: the rest of a block is a draft the next call checks."""
        if not size or predictor != "left_to_right" or not commit.active:
            raise ValueError("sampling.sliding needs a block model (backbone.block_tokens), "
                             "sampling.predictor=left_to_right and sampling.threshold or margin")
        if self.model.time_conditioning or not self.causal_clean:
            raise ValueError("sampling.sliding needs a model trained with "
                             "backbone.time_conditioning=false and backbone.clean_attention=causal")
        if not self.graph.absorb:
            raise ValueError("sampling.sliding needs the absorbing graph (graph.type=absorb)")
        return sample_sliding(self.log_score, commit, ids_BL, fixed_BL, size,
                              len(self.model.blocks), mask_id=self.graph.dim - 1,
                              eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
                              record_chain=record_chain, drafts=drafts,
                              draft_threshold=draft_threshold)


def _check_loaded(cfg: Any, tokens: int, model: DDiT, graph: Graph, noise: Noise) -> None:
    """The loaded weights must agree with the tokenizer and the config they are trained under."""
    model_tokens = graph.dim - 1 if graph.absorb else graph.dim
    if model_tokens != tokens:
        raise ValueError(f"init={cfg.init} has a vocabulary of {model_tokens} tokens but "
                         f"data.tokenizer={cfg.data.tokenizer} has {tokens}; use the tokenizer the "
                         "model was trained with (data.tokenizer=gpt2 for louaaron/sedd-*)")
    wanted = {k: cfg.model.get(k, False) for k in model.arch}
    cfg_noise = get_noise(cfg.noise)
    same_noise = type(cfg_noise) is type(noise) and vars(cfg_noise) == vars(noise)
    if wanted != model.arch or (cfg.graph.type == "absorb") != graph.absorb or not same_noise:
        raise ValueError(f"init={cfg.init} is a {model.arch} model with graph "
                         f"{type(graph).__name__} and noise {type(noise).__name__}{vars(noise)}, "
                         f"but the config asks for {wanted}, graph.type={cfg.graph.type}, "
                         f"noise={dict(cfg.noise)}; select the matching config (e.g. model=small "
                         "for louaaron/sedd-small)")
