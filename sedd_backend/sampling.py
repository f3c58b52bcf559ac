"""Reverse-time samplers of SEDD: predictors, the final denoiser and the PC loop (spec §6).

The official steps (euler, analytic, the final denoiser) build unnormalised probabilities
probs_BLV over the next token of each position and draw with the official exponential race,
so a run with the same torch.Generator gives the same tokens as the official sampler (on the
same device and precision). The confidence predictors are deterministic and return ids.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dot.backbone import SampleResult
from sedd_backend.graph import Graph
from sedd_backend.noise import Noise

ScoreFn = Callable[[Tensor, Tensor], Tensor]  # (x_BL, sigma_B) -> score_BLV = exp(log-score)
SAMPLER_EPS = 1e-5  # last time of the PC loop


def sample_categorical(probs_BLV: Tensor, generator: torch.Generator) -> Tensor:
    """argmax_j p_j / E_j with E_j = 1e-10 - log(U_j + 1e-10), U ~ U[0, 1) (spec §6.1).

    An exponential race: equivalent to drawing from p / sum(p). Probabilities can come out
    slightly negative (uniform staggered score, the stay-masked entry of the analytic step);
    they are clamped at 0 (spec §10 bug 12), which never changes the winner when some entry
    is positive.
    """
    u_BLV = torch.rand(probs_BLV.shape, generator=generator, device=generator.device)
    race_BLV = 1e-10 - torch.log(u_BLV.to(probs_BLV.device) + 1e-10)
    return (probs_BLV.clamp(min=0) / race_BLV).argmax(-1)


class Predictor(abc.ABC):
    """One reverse step from time t (per row, [B]) to t - dt."""

    def __init__(self, graph: Graph, noise: Noise):
        self.graph, self.noise = graph, noise

    @abc.abstractmethod
    def probs(self, score_fn: ScoreFn, x_BL: Tensor, t_B: Tensor, dt: float) -> Tensor:
        """Unnormalised probabilities of the next state [B, L, V] (one network call)."""

    def step(self, score_fn: ScoreFn, x_BL: Tensor, t_B: Tensor, dt: float,
             generator: torch.Generator) -> Tensor:
        """The next state [B, L]: a draw from `probs`."""
        return sample_categorical(self.probs(score_fn, x_BL, t_B, dt), generator)

    def tweedie_probs(self, score_fn: ScoreFn, x_BL: Tensor, sigma_B: Tensor,
                      dsigma_B: Tensor) -> Tensor:
        """p_{sigma - dsigma}(y) P(x | y over dsigma) / p_sigma(x): exact for one position."""
        score_BLV = score_fn(x_BL, sigma_B)
        return self.graph.staggered_score(score_BLV, dsigma_B) \
            * self.graph.transp_transition(x_BL, dsigma_B)


class EulerPredictor(Predictor):
    """First-order step: onehot(x) + dt sigma'(t) R(x, s)."""

    def probs(self, score_fn: ScoreFn, x_BL: Tensor, t_B: Tensor, dt: float) -> Tensor:
        sigma_B, rate_B = self.noise(t_B)
        reverse_BLV = self.graph.reverse_rate(x_BL, score_fn(x_BL, sigma_B))
        return F.one_hot(x_BL, self.graph.dim).to(reverse_BLV.dtype) \
            + (dt * rate_B)[:, None, None] * reverse_BLV


class AnalyticPredictor(Predictor):
    """"Tweedie" tau-leaping: the exact one-position reverse step from sigma(t) to sigma(t - dt)."""

    def probs(self, score_fn: ScoreFn, x_BL: Tensor, t_B: Tensor, dt: float) -> Tensor:
        sigma_B = self.noise.total_noise(t_B)
        dsigma_B = sigma_B - self.noise.total_noise(t_B - dt)
        return self.tweedie_probs(score_fn, x_BL, sigma_B, dsigma_B)


class Denoiser(Predictor):
    """Final step from sigma(t) straight to sigma = 0; never leaves a mask behind."""

    def probs(self, score_fn: ScoreFn, x_BL: Tensor, t_B: Tensor, dt: float = 0.0) -> Tensor:
        sigma_B = self.noise.total_noise(t_B)
        probs_BLV = self.tweedie_probs(score_fn, x_BL, sigma_B, sigma_B)
        return probs_BLV[..., :-1] if self.graph.absorb else probs_BLV


@dataclass(frozen=True)
class ParallelCommit:
    """Reveal, in one call, every masked position the model is sure of (Fast-dLLM's rule).

    On top of the confidence schedule, a position is revealed as soon as its most likely clean
    token has probability >= `threshold`, or beats the runner-up by >= `margin` (early commit);
    every call reveals at least one position, so a block of N tokens needs at most N calls and
    as few as one. Why: the schedule spends the same number of calls on a block of spaces and
    separators as on a block of carries; this spends them where the model is unsure.
    """

    threshold: float | None = None  # sampling.threshold
    margin: float | None = None  # sampling.margin

    def __post_init__(self) -> None:
        for name in ("threshold", "margin"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"sampling.{name} must be in (0, 1], got {value}")

    @property
    def active(self) -> bool:
        return self.threshold is not None or self.margin is not None

    def commits(self, top1_BL: Tensor, top2_BL: Tensor) -> Tensor:
        """Positions sure enough to reveal now, [B, L] bool."""
        sure_BL = torch.zeros_like(top1_BL, dtype=torch.bool)
        if self.threshold is not None:
            sure_BL |= top1_BL >= self.threshold
        if self.margin is not None:
            sure_BL |= top1_BL - top2_BL >= self.margin
        return sure_BL

    def sure_run(self, masked_BL: Tensor, top1_BL: Tensor, top2_BL: Tensor) -> Tensor:
        """Reading order: every position with no unsure masked position at or before it."""
        unsure_BL = masked_BL & ~self.commits(top1_BL, top2_BL)
        return unsure_BL.long().cumsum(1) == 0


class ConfidencePredictor(Predictor):
    """Confidence-ordered unmasking for the absorbing graph (MaskGIT-style; not in SEDD).

    Between t and t - dt the reverse process leaves a masked position masked with probability
    (1 - e^{-sigma(t-dt)}) / (1 - e^{-sigma(t)}) (= (t - dt) / t for the log-linear schedule).
    This predictor reveals the same expected number of positions, but chooses the ones whose
    denoised distribution is most peaked and writes their most likely token, instead of
    revealing random positions with sampled tokens. On tasks with one right answer this
    sequential-looking order is far more accurate at few steps; it is deterministic given the
    scores (the generator is unused).

    With `reuse_unchanged` a step whose input equals the previous step's reuses that step's
    denoised guesses instead of calling the network. That is exact when the network ignores
    sigma (`DDiT(time_conditioning=False)`): sigma then only rescales each position's scores
    by a constant, which the normalisation below removes. It saves the calls of steps that
    revealed nothing (T larger than the number of masked positions, e.g. in small blocks).
    With an active `commit` (`ParallelCommit`) each step also reveals every position the model
    is sure of, and at least one.
    """

    def __init__(self, graph: Graph, noise: Noise):
        super().__init__(graph, noise)
        self.reuse_unchanged = False
        self.commit = ParallelCommit()
        self._last: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def priority(self, confidence_BL: Tensor) -> Tensor:
        """Which masked positions to reveal first (highest first)."""
        return confidence_BL

    def denoised(self, score_fn: ScoreFn, x_BL: Tensor,
                 sigma_B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(probability, runner-up probability, token) of each position's best clean token."""
        if self._last is not None and torch.equal(self._last[0], x_BL):
            return self._last[1:]
        clean_BLV = self.tweedie_probs(score_fn, x_BL, sigma_B, sigma_B)[..., :-1].clamp(min=0)
        top_BL2, token_BL2 = (clean_BLV / clean_BLV.sum(-1, keepdim=True)).topk(2, dim=-1)
        out = (top_BL2[..., 0], top_BL2[..., 1], token_BL2[..., 0])
        if self.reuse_unchanged:
            self._last = (x_BL.clone(), *out)
        return out

    def probs(self, score_fn: ScoreFn, x_BL: Tensor, t_B: Tensor, dt: float) -> Tensor:
        return F.one_hot(self.next_ids(score_fn, x_BL, t_B, dt), self.graph.dim).float()

    def step(self, score_fn: ScoreFn, x_BL: Tensor, t_B: Tensor, dt: float,
             generator: torch.Generator) -> Tensor:
        """Deterministic: the next ids directly, without a [B, L, V] one-hot and random draw."""
        return self.next_ids(score_fn, x_BL, t_B, dt)

    def next_ids(self, score_fn: ScoreFn, x_BL: Tensor, t_B: Tensor, dt: float) -> Tensor:
        """x with the most confident `n_reveal` masked positions set to their best token."""
        if not self.graph.absorb:
            raise ValueError("the confidence predictor needs the absorbing graph (graph.type=absorb)")
        sigma_B = self.noise.total_noise(t_B)
        stay_B = -torch.expm1(-self.noise.total_noise(t_B - dt)) / -torch.expm1(-sigma_B)
        confidence_BL, runner_up_BL, token_BL = self.denoised(score_fn, x_BL, sigma_B)
        masked_BL = x_BL == self.graph.dim - 1
        n_masked_B = masked_BL.sum(1)
        n_reveal_B = n_masked_B - torch.round(n_masked_B * stay_B.clamp(0, 1)).long()
        if self.commit.active:
            n_reveal_B = n_reveal_B.clamp(min=1)
        priority_BL = self.priority(confidence_BL).masked_fill(~masked_BL, -float("inf"))
        rank_BL = priority_BL.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        reveal_BL = masked_BL & (rank_BL < n_reveal_B[:, None])
        if self.commit.active:
            reveal_BL |= masked_BL & self.committed(masked_BL, confidence_BL, runner_up_BL)
        return torch.where(reveal_BL, token_BL, x_BL)

    def committed(self, masked_BL: Tensor, top1_BL: Tensor, top2_BL: Tensor) -> Tensor:
        """Positions the parallel commit reveals on top of the schedule: every sure one."""
        return self.commit.commits(top1_BL, top2_BL)


class LeftToRightPredictor(ConfidencePredictor):
    """Reveal masked positions in reading order (the decoder of `order=left_to_right` training).

    With an active `commit` a step reveals the longest run of sure masked positions from the
    first masked one on (and at least that one), so the clean positions stay a prefix, as in
    training: multi-token prediction that accepts as many tokens as the model is sure of.
    """

    def priority(self, confidence_BL: Tensor) -> Tensor:
        return -torch.arange(confidence_BL.shape[1], device=confidence_BL.device,
                             dtype=confidence_BL.dtype).expand_as(confidence_BL)

    def committed(self, masked_BL: Tensor, top1_BL: Tensor, top2_BL: Tensor) -> Tensor:
        """Every masked position with no unsure masked position at or before it."""
        return self.commit.sure_run(masked_BL, top1_BL, top2_BL)


PREDICTORS: dict[str, type[Predictor]] = {"euler": EulerPredictor, "analytic": AnalyticPredictor,
                                          "confidence": ConfidencePredictor,
                                          "left_to_right": LeftToRightPredictor}


def get_predictor(name: str, graph: Graph, noise: Noise) -> Predictor:
    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r}; use one of {sorted(PREDICTORS)} "
                         "(sampling.predictor)")
    return PREDICTORS[name](graph, noise)


def pc_sample(score_fn: ScoreFn, graph: Graph, noise: Noise, shape: tuple[int, int],
              steps: int, generator: torch.Generator, predictor: str = "analytic",
              denoise: bool = True, project: Callable[[Tensor], Tensor] = lambda x: x,
              device: torch.device | str = "cpu", record_chain: bool = False,
              skip_finished: bool = False, reuse_unchanged: bool = False,
              commit: ParallelCommit | None = None, eps: float = SAMPLER_EPS) -> SampleResult:
    """The predictor loop with projection P (spec §6.3), for any number of steps >= 1.

    x starts at the limit distribution; at times linspace(1, eps, steps + 1) P is applied and
    one predictor step taken; then (if `denoise`) P and the denoiser at t = eps, and P once
    more. `skip_finished` (absorbing graph only) stops calling the network once no position
    is masked: every remaining step would keep all tokens, so the result is unchanged and
    only `nfe` drops. `reuse_unchanged` is `ConfidencePredictor`'s (only valid for a network
    that ignores sigma). `commit` (confidence predictors only) reveals sure positions early.
    `nfe` counts the network calls made; `row_nfe` those made while a row still had a masked
    position (with `skip_finished`), i.e. what the row would have cost decoded alone.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    step = get_predictor(predictor, graph, noise)
    if isinstance(step, ConfidencePredictor):
        step.reuse_unchanged = reuse_unchanged
        step.commit = commit or ParallelCommit()
    elif commit is not None and commit.active:
        raise ValueError(f"sampling.threshold / sampling.margin need a confidence predictor, "
                         f"not {predictor!r}")
    calls = 0

    def counted_score(x: Tensor, sigma: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return score_fn(x, sigma)

    times = torch.linspace(1, eps, steps + 1, device=device)
    dt = (1 - eps) / steps
    x_BL = graph.sample_limit(*shape, generator=generator, device=device)
    chain: list[Tensor] = []
    updates = [(step, times[i]) for i in range(steps)]
    if denoise:
        updates.append((Denoiser(graph, noise), times[steps]))
    row_calls_B = torch.zeros(shape[0], dtype=torch.long, device=device)
    for update, t in updates:
        x_BL = project(x_BL)
        waiting_B = (x_BL == graph.dim - 1).any(1) if skip_finished and graph.absorb \
            else torch.ones_like(row_calls_B, dtype=torch.bool)
        if waiting_B.any():
            t_B = t.expand(shape[0])
            before = calls
            x_BL = update.step(counted_score, x_BL, t_B, dt, generator)
            row_calls_B += waiting_B.long() * (calls - before)
        if record_chain:
            chain.append(project(x_BL))
    return SampleResult(project(x_BL), calls, chain if record_chain else None, row_calls_B)
