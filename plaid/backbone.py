"""Plaid behind the shared `dot.backbone.Backbone` interface (training, validation, sampling)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dot.backbone import Backbone, Batch, Pretrained, SampleResult, SamplerFlag
from dot.rng import RowRandom
from dot.tokenization import Tokenizer
from plaid.loss import LossOptions, diffusion_loss, reconst_batch_size, update_reconst_ema
from plaid.sampling import NetworkDenoiser, ancestral, decode, dpm_solver
from plaid.weights import Plaid, load_weights_into

# μP (MuAdam): matrices whose fan-in and fan-out both scale with width train at lr / width_mult
MUP_MATRICES = ("attn_qkv.weight", "attn_out.weight", "mlp.fc1.weight", "mlp.fc2.weight")
# used when neither the call nor cfg.sampling sets an option
class PlaidBackbone(Backbone):
    """Continuous-embedding diffusion (Plaid) fine-tuned and sampled the DoT way.

    `self.model` is a `plaid.weights.Plaid`: the four official modules plus the reconstruction
    EMAs as a buffer. `save_weights`/`load_weights_into` convert to/from the official layout.
    """

    name = "plaid"
    predictors = frozenset({"ancestral", "dpm_solver", "dpm"})  # dpm: an alias of dpm_solver
    sampler_flags = (
        SamplerFlag("predictor", "ancestral | dpm_solver"),
        SamplerFlag("dpm_solver", "DPM-Solver++ (= --predictor dpm_solver)", kind="switch",
                    sets=(("predictor", "dpm_solver"),)),
        SamplerFlag("score_temp", "score temperature", type=float, check="positive"),
        SamplerFlag("dpm_order", "DPM-Solver++ order", type=int, choices=(1, 2)),
        SamplerFlag("logit_sample", "sample tokens", kind="switch"),
        SamplerFlag("logit_temp", "temperature of --logit_sample", type=float, check="positive"),
        SamplerFlag("official_dpm", "reproduce the official DoT DPM-Solver (bugs included)",
                    kind="switch"),
        SamplerFlag("official_grid", "reproduce the official ancestral time grid", kind="switch"),
        # DoT's evaluation flag, accepted and always on here (DPM conditions on the clean
        # source; ancestral sampling follows how the model was trained, backbone.fix_src)
        SamplerFlag("fix_src", "condition on the clean source (always on in our sampler; "
                    "accepted for the official command lines)", kind="switch"),
    )

    def __init__(self, cfg: Any, tokenizer: Tokenizer, model: Plaid):
        super().__init__(cfg, tokenizer, model)
        bb = cfg.backbone  # every setting from configs/backbone/plaid.yaml, read strictly
        self.fix_src = bool(bb.fix_src)
        self.loss_options = LossOptions(
            selfcond=bool(bb.selfcond), fix_src=self.fix_src,
            bias_warmup_steps=int(bb.bias_warmup_steps), min_prob=float(bb.min_prob),
            total_steps=int(cfg.training.n_iters), ss_steps=int(bb.ss_steps))
        self.ema_beta = float(bb.reconst_bs_ema)
        self._pending: tuple[int, int, Tensor] | None = None  # (B_g, r, Σ stats) of this step

    @classmethod
    def from_config(cls, cfg: Any, tokenizer: Tokenizer) -> "PlaidBackbone":
        m = cfg.model
        plaid = Plaid(tokenizer.vocab_size, int(m.embed_dim), int(m.hidden_size), int(m.n_blocks),
                      int(m.n_heads), int(m.schedule_width))
        if cfg.init != "scratch":
            load_weights_into(plaid, cfg.init)
        return cls(cfg, tokenizer, plaid)

    weights_layout = "a Plaid weights folder (model.pt, noise_schedule.pt, gamma_bounds.pt, embedding_matrix.pt)"

    @classmethod
    def recognises(cls, path: str) -> bool:
        return any((Path(path) / f"{name}.pt").is_file() for name in ("model", "noise_schedule"))

    @classmethod
    def read_pretrained(cls, path: str, device: torch.device, *, digit: bool = False,
                        tokenizer: str | None = None) -> Pretrained:
        """A four-file weights folder (Plaid-1B or a DoT checkpoint) for evaluation.

        The folder names no tokenizer: owt2 by default (`digit` = DoT's --digit), or
        `tokenizer`; rows are 256 long and the sampler uses DoT's defaults (configs/backbone).
        """
        from dot.tokenization import load_tokenizer
        from plaid.weights import load_weights

        plaid = load_weights(path)
        name = tokenizer or "owt2"
        tok = load_tokenizer(name, digits=digit)
        vocab, embed_dim = plaid.embedding_matrix.matrix.shape
        if vocab != tok.vocab_size:
            raise ValueError(f"{path}: embeddings for {vocab} tokens, but tokenizer {name} has "
                             f"{tok.vocab_size}; pass the tokenizer the weights were trained with "
                             "(--tokenizer)")
        m = plaid.model
        values = {"data.tokenizer": name, "data.digit": digit, "data.task": "gsm8k",
                  "model.hidden_size": m.input_linear.weight.shape[0],
                  "model.n_blocks": len(m.blocks), "model.n_heads": m.blocks[0].n_heads,
                  "model.embed_dim": embed_dim, "seq_len": 256}
        return Pretrained(plaid.to(device), tok, values)

    @classmethod
    def from_pretrained(cls, cfg: Any, found: Pretrained) -> "PlaidBackbone":
        return cls(cfg, found.tokenizer, found.weights)

    def param_groups(self) -> list[dict[str, Any]]:
        """One group per module (two for `model`: μP matrices at lr / width_mult).

        The official decay is multiplicative per step, (1 − f(step)·wd_module) for every parameter
        of a module; AdamW decays by lr·f·weight_decay, so weight_decay = wd_module / lr.
        """
        bb = self.cfg.backbone
        lrs = {"model": float(self.cfg.optim.lr), **bb.module_lr}
        wds = dict(bb.module_weight_decay)
        width_mult = self.model.model.width_mult
        groups = []
        for name in ("model", "noise_schedule", "gamma_bounds", "embedding_matrix"):
            params = dict(getattr(self.model, name).named_parameters())
            mup = [p for k, p in params.items() if name == "model" and k.endswith(MUP_MATRICES)]
            rest = [p for k, p in params.items() if not (name == "model" and k.endswith(MUP_MATRICES))]
            for suffix, ps, lr in (("", rest, lrs[name]), ("_mup", mup, lrs[name] / width_mult)):
                if ps:
                    groups.append({"name": name + suffix, "params": ps, "lr": lr,
                                   "weight_decay": wds[name] / lr if lr > 0 else 0.0})
        return groups

    def loss(self, batch: Batch, rng: RowRandom) -> tuple[Tensor, dict[str, float]]:
        out = diffusion_loss(self.model, batch.input_ids, batch.attention_mask, batch.fixed_mask,
                             batch.rows, batch.global_batch_size, batch.step, rng,
                             self.loss_options, train=True)
        if torch.is_grad_enabled():  # a training step: remember the statistics for the EMAs
            r = reconst_batch_size(self.model.reconst_ema, batch.global_batch_size)
            sums = out.ema_sums if self._pending is None else self._pending[2] + out.ema_sums
            self._pending = (batch.global_batch_size, r, sums)
        return out.loss, out.metrics

    @torch.no_grad()
    def eval_loss(self, batch: Batch, rng: RowRandom) -> tuple[Tensor, dict[str, float]]:
        out = diffusion_loss(self.model, batch.input_ids, batch.attention_mask, batch.fixed_mask,
                             batch.rows, batch.global_batch_size, batch.step, rng,
                             self.loss_options, train=False)
        return out.loss, out.metrics

    def after_optimizer_step(self, step: int) -> None:
        """Move the reconstruction-split EMAs one step towards this step's global statistics."""
        if self._pending is None:
            return
        global_batch_size, r, sums = self._pending
        self._pending = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        update_reconst_ema(self.model.reconst_ema, sums, r, global_batch_size, self.ema_beta)

    @torch.no_grad()
    def sample(self, input_ids: Tensor, fixed_mask: Tensor, steps: int,
               generator: torch.Generator, record_chain: bool = False,
               **options: Any) -> SampleResult:
        """Ancestral (default) or DPM-Solver++ generation of the non-fixed positions (§7).

        With fix_src the network sees the clean source (DPM always does, as in DoT). Without it,
        the source is imposed on the latent by re-noising it at every step (replacement
        conditioning); DoT's ancestral sampler ignored the source then (§13.9).
        """
        self.check_sample_options(options)
        opts = {k: self.cfg.sampling[k] for k in self.sample_options - {"fix_src"}}
        opts.update({k: v for k, v in options.items() if k != "fix_src"})
        plaid = self.model
        device = input_ids.device
        embedding = plaid.embedding_matrix()
        x_embed = embedding[input_ids]
        dpm = opts["predictor"] in ("dpm", "dpm_solver")
        if not dpm and opts["predictor"] != "ancestral":
            raise ValueError(f"unknown Plaid predictor {opts['predictor']!r}: ancestral or dpm_solver")
        denoiser = NetworkDenoiser(plaid.model, embedding, x_embed,
                                   fixed_mask if (self.fix_src or dpm) else None, record_chain)
        randn = lambda: torch.randn(x_embed.shape, generator=generator,  # noqa: E731
                                    dtype=torch.float64).to(device)
        clamp = None if self.fix_src else self._noised_source(x_embed, fixed_mask, randn)
        if dpm:
            official = bool(opts["official_dpm"])
            if official:  # DoT's K: clean source embeddings in the solver state
                clamp = lambda state, t: torch.where(fixed_mask[..., None], x_embed.double(), state)  # noqa: E731
            dpm_solver(denoiser, plaid.gamma, randn(), steps, int(opts["dpm_order"]),
                       score_temp=float(opts["score_temp"]), clamp=clamp, official=official,
                       solver_gamma=plaid.noise_schedule if official else None)
        else:
            ancestral(denoiser, plaid.gamma, randn(), steps, randn,
                      score_temp=float(opts["score_temp"]),
                      official_grid=bool(opts["official_grid"]), clamp=clamp)
        keep = lambda tokens: torch.where(fixed_mask, input_ids, tokens)  # noqa: E731
        ids = keep(decode(denoiser.logits, bool(opts["logit_sample"]), float(opts["logit_temp"]),
                          generator))
        chain = None if denoiser.chain is None else [keep(c) for c in denoiser.chain]
        return SampleResult(ids, denoiser.nfe, chain)

    def _noised_source(self, x_embed: Tensor, fixed_mask: Tensor, randn):
        """Clamp for models trained without fix_src: source latents ~ q(z_t | x_source)."""
        def clamp(z: Tensor, t: Tensor) -> Tensor:
            gamma = self.model.gamma(t)
            noised = torch.sigmoid(-gamma).sqrt() * x_embed.double() + torch.sigmoid(gamma).sqrt() * randn()
            return torch.where(fixed_mask[..., None], noised, z)
        return clamp

