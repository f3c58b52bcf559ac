"""The shared training loop: any backbone, one or many processes, resumable.

One step = one optimizer update on `training.batch_size` rows (the global batch), split into
`world_size * accum` equal chunks; chunk c = accum_step * world_size + rank. Which data rows
and which noise a row gets depend only on (seed, step, row), so a run gives the same loss
curve whatever the number of processes or accumulation steps.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dot import distributed
from dot.backbone import Backbone, Batch, backbone_class
from dot.checkpoint import FORMAT, META, dot_run_of, load_checkpoint, load_run_weights, save_atomic
from dot.collate import collate
from dot.config import check_config
from dot.data import load_eval_split, load_split
from dot.decoding import Decoding
from dot.ema import EMA
from dot.evaluate import evaluate, format_summary, result_name
from dot.examples import TokenizedExample, tokenize, training_pair
from dot.results import write_text_atomic
from dot.resume import config_changes, record_changes
from dot.rng import RowRandom, seed_key
from dot.sharded import save_sharded
from dot.tasks import Example, Task, get_task
from dot.tokenization import load_tokenizer, run_tokenizer_name

log = logging.getLogger("dot")


def lr_factor(step: int, opt: DictConfig, n_iters: int, time_used: float = 0.0) -> float:
    """Multiplier of every group's base lr: zero steps, linear warmup, optional decay.

    The decay runs over n_iters, or over the time budget when `time_used` (the share of
    `training.max_minutes` spent) is further along: a budget-stopped run still ends annealed.
    """
    if step <= opt.zero_lr_steps:
        return 0.0
    warm = min(1.0, step / opt.warmup) if opt.warmup > 0 else 1.0
    progress = (step - opt.warmup) / max(1, n_iters - opt.warmup)
    if step > opt.warmup:  # the decay starts after warmup, on the clock too (reproducible warmup)
        progress = max(progress, time_used)
    progress = min(1.0, max(0.0, progress))
    if opt.decay == "linear":
        return warm * (1.0 - progress)
    if opt.decay == "cosine":
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
    if opt.decay != "none":
        raise ValueError(f"optim.decay={opt.decay!r}: use none, linear or cosine")
    return warm


class NonFiniteLossError(ValueError):
    """The loss or the gradient norm stopped being a finite number: the run stops before the
    update, so the saved checkpoints stay clean."""

    def __init__(self, step: int, loss: float, grad_norm: float, lr: float):
        super().__init__(
            f"training stopped at step {step}: loss {loss}, gradient norm {grad_norm} (not "
            f"finite); the weights were not updated. Lower optim.lr (now {lr}), check the data, "
            f"or resume from the last checkpoint ({META}) with other settings")


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a step; the checkpoint to resume from is saved."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.exit_code = 128 + signum
        super().__init__(
            f"training interrupted ({signal.Signals(signum).name}) at step {step}; checkpoint "
            f"saved in {run_dir / META}. Resume with: python finetune.py hydra.run.dir={run_dir}")


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """SIGINT (Ctrl-C) and SIGTERM (SLURM preemption) ask training to stop after the current
    step; the yielded list receives the signal. A second signal stops at once."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def ask(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        log.warning(f"{signal.Signals(signum).name}: stopping after this step and saving a "
                    "checkpoint (send it again to stop at once, without saving)")

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class GradClipper:
    """Global-norm clipping to a fixed value, or to a quantile of the last 1000 norms (Plaid).

    The quantile buffer starts at 1e8 like Plaid's, so nothing is clipped until it fills.
    """

    def __init__(self, max_norm: float | None, quantile: float | None):
        self.max_norm, self.quantile = max_norm, quantile
        self.norms = torch.full((1000,), 1e8)

    def __call__(self, params: list[torch.Tensor], step: int, norm: torch.Tensor) -> float:
        """Clip the gradients of `params`, whose global norm is `norm` (`Engine.grad_norm`)."""
        grads = [p.grad for p in params if p.grad is not None]
        limit = (torch.quantile(self.norms, self.quantile).item() if self.quantile
                 else self.max_norm)
        if self.quantile:
            self.norms[step % 1000] = norm.item()
        if limit is not None and norm > limit:
            for g in grads:
                g.mul_(limit / (norm + 1e-6))
        return norm.item()


def resolve_seq_len(cfg: DictConfig, examples: list[TokenizedExample]) -> int:
    """`training.block_size`, or (when null) the longest single-pass row rounded up to 8."""
    if cfg.training.block_size:
        return int(cfg.training.block_size)
    longest = max(len(e.prompt) + len(e.target) + 2 for e in examples)
    return -(-longest // 8) * 8


class Trainer:
    """Builds data, backbone, optimizer and EMA from a config, then runs or resumes training."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        check_config(cfg)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.ctx = distributed.setup(cfg.device)
        tcfg = cfg.training
        strategy = distributed.resolve_strategy(tcfg.strategy, self.ctx.world_size)
        if tcfg.checkpoint_format not in ("full", "sharded"):
            raise ValueError(f"training.checkpoint_format={tcfg.checkpoint_format!r}: use full "
                             "or sharded")
        self.sharded_checkpoints = tcfg.checkpoint_format == "sharded"
        if self.sharded_checkpoints and strategy != "fsdp":
            raise ValueError("training.checkpoint_format=sharded needs training.strategy=fsdp "
                             f"with several processes (here: {strategy}, {self.ctx.world_size} "
                             "process(es)); use checkpoint_format=full")
        chunks = self.ctx.world_size * tcfg.accum
        if tcfg.batch_size % chunks:
            raise ValueError(f"training.batch_size={tcfg.batch_size} must be divisible by "
                             f"processes x training.accum = {chunks}")
        self.micro = tcfg.batch_size // chunks
        torch.manual_seed(cfg.seed)  # identical initial weights on every process

        self.tokenizer = load_tokenizer(run_tokenizer_name(cfg), digits=cfg.data.digit)
        self.task: Task = get_task(cfg.data.task)
        train, src = load_split(self.task, "train", cfg.data.train, n_train=cfg.data.n_train,
                                seed=cfg.seed)
        self.valid, vsrc = load_split(self.task, "valid", cfg.data.valid)
        self.test, self.test_source = load_eval_split(self.task, "test", cfg.data.test,
                                                      cfg.data.valid)
        self.info(f"data: train {len(train)} from {src}; valid {len(self.valid)} from {vsrc}; "
                  f"test {len(self.test)} from {self.test_source}")
        def tok(examples: list[Example]) -> list[TokenizedExample]:
            return [tokenize(e, self.task, self.tokenizer, cfg.data.hidden_thought) for e in examples]

        self.train_tok, self.valid_tok = tok(train), tok(self.valid)
        self.seq_len = resolve_seq_len(cfg, self.train_tok + tok(self.test))
        self.info(f"seq_len {self.seq_len}, vocab {self.tokenizer.vocab_size}")

        init_run = dot_run_of(cfg.init)
        build = cfg if init_run is None else OmegaConf.merge(cfg, {"init": "scratch"})
        self.backbone: Backbone = backbone_class(cfg.backbone.name).from_config(build, self.tokenizer)
        if init_run is not None:  # a finetune.py run (local, or pushed with dot.hub)
            init_run, state = init_run
            if state.get("backbone") != cfg.backbone.name:
                raise ValueError(f"init={cfg.init} is a {state.get('backbone')!r} run; the config "
                                 f"asks for backbone={cfg.backbone.name}")
            load_run_weights(self.backbone.model, state, init_run)
            self.info(f"init: weights of {init_run} (step {state['step']}, EMA when present)")
        self.model = self.backbone.model.to(self.ctx.device)
        self.engine = distributed.Engine(strategy, self.ctx, self.model, self.backbone.loss,
                                         self.backbone.eval_loss, self.backbone.shard_units(),
                                         tcfg.activation_checkpointing)
        groups = self.backbone.param_groups()  # after sharding, which replaces the parameters
        for g in groups:
            g["base_lr"] = g["lr"]
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = self.engine.optimizer(groups, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                               eps=cfg.optim.eps)
        self.ema = EMA(self.model, tcfg.ema, tcfg.ema_warmup) if tcfg.ema > 0 else None
        self.clipper = GradClipper(cfg.optim.grad_clip, cfg.optim.clip_quantile)
        n_params = sum(p.numel() for p in self.model.parameters())
        self.info(f"backbone {cfg.backbone.name}: {n_params / 1e6:.2f}M parameters on "
                  f"{self.ctx.device}, {self.ctx.world_size} process(es) (strategy {strategy}), "
                  f"micro-batch {self.micro}")
        self.step = 0
        self.train_seconds = 0.0  # wall time of run() over every invocation (resumes included)
        self.time_used = 0.0  # share of training.max_minutes spent, as the lr schedule sees it
        self.cut_short: dict[str, float] | None = None  # set when max_minutes stops the run early
        self._perm, self._perm_epoch = [], -1  # the training order of the current epoch
        self._resume()

    # ------------------------------------------------------------------ helpers
    def info(self, msg: str) -> None:
        if self.ctx.is_main:
            log.info(msg)

    def _rows(self, step: int) -> list[int]:
        """Dataset indices of the step's global batch: shuffled epochs, no state to save."""
        n, bsz = len(self.train_tok), self.cfg.training.batch_size
        first = (step - 1) * bsz
        out = []
        for pos in range(first, first + bsz):
            epoch = pos // n
            if self._perm_epoch != epoch:
                g = torch.Generator().manual_seed(seed_key(self.cfg.seed, epoch, -2))
                self._perm, self._perm_epoch = torch.randperm(n, generator=g).tolist(), epoch
            out.append(self._perm[pos % n])
        return out

    def make_batch(self, step: int, chunk: int, examples: list[TokenizedExample],
                   indices: list[int]) -> Batch:
        rows = range(chunk * self.micro, (chunk + 1) * self.micro)
        pairs = [training_pair(examples[indices[r]], self.tokenizer,
                               random.Random(seed_key(self.cfg.seed, step, r, 7)),
                               self.cfg.data.multipass, self.cfg.data.glance) for r in rows]
        ids, fixed, attn = collate(pairs, self.seq_len, self.tokenizer.pad_id)
        return Batch(ids, fixed, attn, torch.tensor(list(rows)), self.cfg.training.batch_size,
                     step).to(self.ctx.device)

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.ctx.device.type == "cuda")

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        """The one-process checkpoint layout (collective under zero and fsdp); with sharded
        checkpoints the fsdp tensors stay shards."""
        full = (lambda state: state) if self.sharded_checkpoints else self.engine.full  # noqa: E731
        optimizer = (self.optimizer.state_dict() if self.sharded_checkpoints
                     else self.engine.optimizer_state(self.optimizer))
        return {"format": FORMAT, "backbone": self.cfg.backbone.name, "step": self.step,
                "seq_len": self.seq_len, "model": full(self.model.state_dict()),
                "ema": full(self.ema.state_dict()) if self.ema else None,
                "optimizer": optimizer,
                "clip_norms": self.clipper.norms, "train_seconds": self.train_seconds}

    def save(self, snapshot: bool = False) -> None:
        """Every process calls it (gathering or writing shards is collective)."""
        state = self._state()
        paths = [self.run_dir / META] + (
            [self.run_dir / "checkpoints" / f"checkpoint_{self.step}.pth"] if snapshot else [])
        for path in paths:
            if self.sharded_checkpoints:
                save_sharded(state, path, self.ctx.rank, self.ctx.world_size)
            elif self.ctx.is_main:
                save_atomic(state, path)

    def _resume(self) -> None:
        path = self.run_dir / META
        if not path.is_file():
            self.info(f"new run in {self.run_dir} (no {META} there to resume from)")
            return
        state = load_checkpoint(path, self.ctx.device, rank_of=(
            (self.ctx.rank, self.ctx.world_size) if self.engine.sharded else None))
        if state.get("backbone") != self.cfg.backbone.name:
            raise ValueError(f"{path} holds a {state.get('backbone')!r} run but the config asks for "
                             f"backbone={self.cfg.backbone.name}; use a new run folder")
        self.model.load_state_dict(self.engine.localize(state["model"], self.model.state_dict()))
        self.engine.load_optimizer_state(self.optimizer, state["optimizer"], self.params)
        if self.ema and state["ema"]:
            shadow = self.engine.localize(state["ema"]["shadow_params"], self.ema.shadow)
            self.ema.load_state_dict(dict(state["ema"], shadow_params=shadow))
        self.clipper.norms = state["clip_norms"].cpu()
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.info(f"resumed from {path} at step {self.step} "
                  f"({self.train_seconds / 60:.1f} minutes trained)")

    # ------------------------------------------------------------------ the loop
    def train_step(self) -> dict[str, float]:
        self.step += 1
        indices = self._rows(self.step)
        self.model.train()
        total = torch.zeros((), device=self.ctx.device)
        metrics: dict[str, float] = {}
        accum = self.cfg.training.accum
        for a in range(accum):
            batch = self.make_batch(self.step, a * self.ctx.world_size + self.ctx.rank,
                                    self.train_tok, indices)
            rng = RowRandom(self.cfg.seed, self.step, batch.rows, self.ctx.device)
            with self.engine.accumulating(last=a == accum - 1):
                with self._autocast():
                    loss, m = self.engine.module(batch, rng)
                loss.backward()
            total += loss.detach()
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / accum
        self.engine.finish_backward()
        names = sorted(metrics)
        values = torch.tensor([metrics[k] for k in names] + [total.item()], dtype=torch.float64)
        distributed.all_reduce_sum_([values])  # metrics: mean over processes; loss: sum
        metrics = {k: v / self.ctx.world_size for k, v in zip(names, values.tolist())}
        total = values[-1]
        grad_norm = self.clipper(self.params, self.step, self.engine.grad_norm(self.params))
        if not (math.isfinite(total.item()) and math.isfinite(grad_norm)):
            raise NonFiniteLossError(self.step, total.item(), grad_norm, self.cfg.optim.lr)
        time_used = self.time_used if self.cfg.optim.decay_over_budget else 0.0
        factor = lr_factor(self.step, self.cfg.optim, self.cfg.training.n_iters, time_used)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(self.model)
        self.backbone.after_optimizer_step(self.step)
        metrics.update(loss=total.item(), grad_norm=grad_norm,
                       lr=self.optimizer.param_groups[0]["lr"])
        return metrics

    def eval_loss(self, n_batches: int = 4) -> float:
        """Validation loss with the EMA weights on fixed rows (same for every evaluation)."""
        total = 0.0
        with self._weights():
            self.model.eval()
            for b in range(n_batches):
                step = -(b + 1)  # fixed pseudo-steps: the same rows and noise every time
                g = torch.Generator().manual_seed(seed_key(self.cfg.seed, step, -3))
                indices = torch.randint(len(self.valid_tok), (self.cfg.training.batch_size,),
                                        generator=g).tolist()
                for a in range(self.cfg.training.accum):
                    batch = self.make_batch(step, a * self.ctx.world_size + self.ctx.rank,
                                            self.valid_tok, indices)
                    with self._autocast():
                        loss, _ = self.engine.module(
                            batch, RowRandom(self.cfg.seed, step, batch.rows, self.ctx.device),
                            train=False)
                    total += loss.item()
        t = torch.tensor([total], device=self.ctx.device)
        distributed.all_reduce_sum_([t])
        return t.item() / n_batches

    def _weights(self):
        return self.ema.applied(self.model) if self.ema else nullcontext()

    @contextmanager
    def _decoding_backbone(self) -> Iterator[Backbone | None]:
        """The backbone to decode with, EMA weights applied, on process 0 (None elsewhere).

        Sampling calls sub-modules directly, so under fsdp it runs on an unsharded copy.
        """
        if not self.engine.sharded:
            with self._weights():
                yield self.backbone if self.ctx.is_main else None
            return
        with self._weights():
            state = self.engine.full(self.model.state_dict())  # collective
        if not self.ctx.is_main:
            yield None
            return
        copy = backbone_class(self.cfg.backbone.name).from_config(
            OmegaConf.merge(self.cfg, {"init": "scratch"}), self.tokenizer)  # weights follow
        copy.model.load_state_dict(state)
        copy.model.to(self.ctx.device)
        yield copy

    def decode(self, examples: list[Example], out: Path | None, progress: bool = False,
               notes: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Decode examples with the EMA weights and the run's own decoding (`sampling.*`) on
        process 0. Every process calls it (under fsdp gathering the weights is collective);
        the others get None.
        """
        decoding = Decoding(self.cfg.sampling.steps, self.cfg.data.multipass,
                            self.cfg.eval.cot_steps)
        with self._decoding_backbone() as backbone:
            if backbone is None:
                return None
            return evaluate(backbone, self.task, examples, decoding, seq_len=self.seq_len,
                            out=out, hidden_thought=self.cfg.data.hidden_thought,
                            batch_size=self.cfg.eval.batch_size, progress=progress,
                            source_name=self.test_source, notes=notes)

    def run(self) -> dict[str, Any] | None:
        with logging_redirect_tqdm():  # log lines print above the progress bar, not glued to it
            return self._run()

    def _run(self) -> dict[str, Any] | None:
        tcfg = self.cfg.training
        started, prior = time.perf_counter(), self.train_seconds
        first_step = self.step
        metrics_path = self.run_dir / "logs" / "metrics.csv"
        self._trim_metrics(metrics_path)
        bar = tqdm(total=tcfg.n_iters, initial=self.step, desc="train", unit="step",
                   disable=not self.ctx.is_main, dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30)
        window: list[dict[str, float]] = []
        stop_signal = 0
        with stop_requests() as received:
            while self.step < tcfg.n_iters:
                stop_signal = self._sync_clock(started, prior, received)
                if stop_signal or self.time_used >= 1.0:
                    break
                window.append(self.train_step())
                bar.update(1)
                bar.set_postfix(self._postfix(window[-1]), refresh=False)
                is_eval = bool(tcfg.eval_freq) and self.step % tcfg.eval_freq == 0
                if is_eval or self.step % tcfg.log_freq == 0 or self.step == tcfg.n_iters:
                    self._log_window(window, metrics_path, started, prior, first_step, is_eval)
                    window = []
                if self.step % tcfg.snapshot_freq_for_preemption == 0:
                    self.save()
                if self.step % tcfg.snapshot_freq == 0:
                    self.save(snapshot=True)
        if window:  # the steps since the last log line (a run shorter than log_freq, a stop)
            self._log_window(window, metrics_path, started, prior, first_step, False)
        bar.close()
        if stop_signal:
            self.save()
            raise TrainingInterrupted(stop_signal, self.step, self.run_dir)
        if self.step < tcfg.n_iters:
            self.cut_short = {"step": self.step, "n_iters": int(tcfg.n_iters),
                              "max_minutes": float(tcfg.max_minutes)}
            log.warning(
                f"TRAINING CUT SHORT: training.max_minutes={tcfg.max_minutes} reached at step "
                f"{self.step} of training.n_iters={tcfg.n_iters}; this machine is slower than "
                "the recipe assumes, so the model is not the one the recipe describes (the "
                "results summary says so too). To finish the steps, resume with "
                f"hydra.run.dir={self.run_dir} training.max_minutes=<more> "
                "training.allow_config_change=true.")
        self.save(snapshot=True)
        return self.final_eval()

    def _postfix(self, m: dict[str, float]) -> dict[str, str]:
        post = {"loss": f"{m['loss']:.4f}", "lr": f"{m['lr']:.2e}"}
        limit = self.cfg.training.max_minutes
        if limit:  # the bar's ETA counts n_iters; this is the time guard's
            left = max(0.0, 60 * limit * (1 - self.time_used))
            post["budget_left"] = f"{int(left // 60)}:{int(left % 60):02d}"
        return post

    def _log_window(self, window: list[dict[str, float]], path: Path, started: float,
                    prior: float, first_step: int, is_eval: bool) -> None:
        row = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
        row["step"], row["seconds"] = self.step, prior + time.perf_counter() - started
        row["steps_per_s"] = (self.step - first_step) / max(1e-9, row["seconds"] - prior)
        if is_eval:
            row.update(self.periodic_eval())
        self._log_metrics(path, row)

    def _sync_clock(self, started: float, prior: float, received: list[int]) -> int:
        """Update train_seconds and time_used; returns the stop signal (0 = none).

        The time guard counts every invocation of the run (a resumed run continues it) and
        process 0's clock decides; a signal seen by any process stops them all, so every
        process sees the same lr and stops at the same step.
        """
        self.train_seconds = prior + time.perf_counter() - started
        limit = self.cfg.training.max_minutes
        flags = torch.tensor([self.train_seconds / (60 * limit) if limit and self.ctx.is_main
                              else 0.0, float(bool(received))], dtype=torch.float64)
        distributed.all_reduce_sum_([flags])
        self.time_used = flags[0].item()
        return (received[0] if received else signal.SIGTERM) if flags[1].item() else 0

    def periodic_eval(self) -> dict[str, float]:
        out: dict[str, float] = {"eval_loss": self.eval_loss()}
        n = self.cfg.eval.valid_examples or len(self.valid)
        s = self.decode(self.valid[:n], self.run_dir / "samples" / f"step_{self.step}")
        if s is not None:
            out.update(valid_acc=s["accuracy"], valid_token_acc=s["token_acc"])
        return out

    def final_eval(self) -> dict[str, Any] | None:
        n = self.cfg.eval.n_examples
        examples = self.test[:n] if n else self.test
        name = result_name("test", self.cfg.sampling.steps, self.cfg.data.multipass,
                           first=len(examples) if len(examples) < len(self.test) else None)
        summary = self.decode(examples, self.run_dir / "eval" / name, progress=True,
                              notes={"training_cut_short": self.cut_short} if self.cut_short else None)
        if summary is None:
            return None
        self.info(f"final evaluation on {len(examples)} test examples ({self.test_source}):\n"
                  + format_summary(summary)
                  + (f"\nWARNING: training was cut short at step {self.step} of "
                     f"{self.cfg.training.n_iters} (training.max_minutes)" if self.cut_short else ""))
        return summary

    def _trim_metrics(self, path: Path) -> None:
        """On resume, drop logged rows past the checkpoint so the curve has no duplicates."""
        if not (self.ctx.is_main and path.is_file()):
            return
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        self._write_csv(path, rows, rows[0].keys() if rows else [])

    def _log_metrics(self, path: Path, row: dict[str, float]) -> None:
        if not self.ctx.is_main:
            return
        log.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                      if k != "step"))
        rows = []
        if path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        fields = list(dict.fromkeys([*(rows[0].keys() if rows else []), *row.keys()]))
        self._write_csv(path, rows + [row], fields)
        if self.cfg.wandb.enabled:
            import wandb
            wandb.log(row, step=self.step)

    @staticmethod
    def _write_csv(path: Path, rows: list[dict[str, Any]], fields) -> None:
        """Atomically: a kill -9 while logging must not leave a truncated metrics file."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(path, out.getvalue())


def train(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None
          ) -> dict[str, Any] | None:
    """Train (or resume) in `run_dir`; returns the final evaluation summary on the main process.

    A resumed run keeps its config (dot.resume); `overrides` are the command line's, recorded
    when a change is allowed.
    """
    run_dir = Path(run_dir)
    changes = config_changes(cfg, run_dir)
    trainer = Trainer(cfg, run_dir)
    if changes and trainer.ctx.is_main:
        path = record_changes(cfg, run_dir, changes, trainer.step, overrides or [])
        log.warning(f"config changed at step {trainer.step} (recorded in {path}): " + "; ".join(
            f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    if trainer.ctx.is_main and cfg.wandb.enabled:
        import wandb
        wandb.init(project=cfg.wandb.project, dir=str(run_dir),
                   config=OmegaConf.to_container(cfg, resolve=True))
    try:
        return trainer.run()
    finally:
        distributed.teardown()
