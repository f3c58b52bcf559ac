"""Backbone-agnostic DoT decoding: single pass, and the DoT-MP loop of one thought per pass.

DoT-MP: each pass conditions on the prompt plus every thought so far (assembled from token
ids, never re-tokenized text, the same way training builds its prefixes) and generates the
next thought, which ends at the first PAD or EOS. An example finishes when it emits EOS (if
EOS differs from PAD), when the task recognises a final thought (GSM8K: '####'; multiplication:
the answer after '='), when it generates an empty thought (it would only repeat itself), or
when its prefix no longer leaves room in `seq_len`. Finished examples leave the batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from dot.backbone import Backbone
from dot.collate import collate_prompts
from dot.tasks import Task
from dot.tokenization import Tokenizer


@dataclass(frozen=True)
class Decoding:
    """How to decode, from the command line to the sampler: denoising steps T, DoT-MP passes,
    chain recording, and the backbone's sampler options (`Backbone.sample_options`)."""

    steps: int
    multipass: bool = False
    max_passes: int = 12
    record_chain: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Generation:
    thoughts: list[list[int]] = field(default_factory=list)  # generated ids, one list per pass
    nfe: int = 0
    seconds: float = 0.0
    finished: bool = False
    stop_reason: str = ""
    chain: list[list[int]] | None = None  # generated region after every denoising step

    @property
    def ids(self) -> list[int]:
        return [i for t in self.thoughts for i in t]


def cut_generated(ids: list[int], tok: Tokenizer, stop_at_pad: bool) -> tuple[list[int], bool]:
    """Generated ids up to the first EOS (and PAD when `stop_at_pad`); whether EOS ended them.

    PAD inside a single-pass answer is dropped, so a stray pad does not split a number.
    """
    out = []
    for i in ids:
        if i == tok.eos_id:
            return out, tok.eos_id != tok.pad_id or not stop_at_pad
        if i == tok.pad_id:
            if stop_at_pad:
                return out, False
            continue
        out.append(i)
    return out, False


def generate(backbone: Backbone, task: Task, prompts: list[list[int]], decoding: Decoding, *,
             seq_len: int, generator: torch.Generator,
             names: list[str] | None = None) -> list[Generation]:
    """Generate the reasoning chain of every prompt (prompt ids without SEP)."""
    tok = backbone.tokenizer
    multipass, record_chain = decoding.multipass, decoding.record_chain
    gens = [Generation(chain=[] if record_chain else None) for _ in prompts]
    active = list(range(len(prompts)))
    for _ in range(decoding.max_passes if multipass else 1):
        prefixes = {r: list(prompts[r]) + gens[r].ids + [tok.sep_id] for r in active}
        if multipass:  # a prefix that overflows after a thought ends the chain; a prompt
            for r in active:  # that leaves no room at all is an error, as in single pass
                if len(prefixes[r]) >= seq_len and gens[r].thoughts:
                    gens[r].finished, gens[r].stop_reason = True, "no room left in seq_len"
            active = [r for r in active if not gens[r].finished]
            if not active:
                break
        ids, fixed = collate_prompts([prefixes[r] for r in active], seq_len, tok.pad_id,
                                     [names[r] for r in active] if names else None)
        device = next(backbone.model.parameters()).device
        start = time.perf_counter()
        result = backbone.sample(ids.to(device), fixed.to(device), decoding.steps, generator,
                                 record_chain=record_chain, **decoding.options)
        share = (time.perf_counter() - start) / len(active)
        out = result.ids.cpu().tolist()
        for j, r in enumerate(active):
            g, n_fixed = gens[r], len(prefixes[r])
            thought, saw_eos = cut_generated(out[j][n_fixed:], tok, stop_at_pad=multipass)
            g.thoughts.append(thought)
            g.nfe += result.nfe if result.row_nfe is None else int(result.row_nfe[j])
            g.seconds += share
            if record_chain and result.chain is not None:
                g.chain.extend(state[j, n_fixed:].tolist() for state in result.chain)
            if not multipass or saw_eos:
                g.finished, g.stop_reason = True, "eos"
            elif task.is_final_thought(tok.decode(thought)):
                g.finished, g.stop_reason = True, "final thought"
            elif not thought:
                g.finished, g.stop_reason = True, "empty thought"
        active = [r for r in active if not gens[r].finished]
        if not active:
            break
    for r in active:
        gens[r].stop_reason = "max passes"
    return gens
