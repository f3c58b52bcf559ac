"""Animate one example's reasoning chain being denoised, step by step (the DoT paper figures).

    python -m dot.report.viz chain RUN/eval/test-T64.jsonl --index 3 --out chain.gif
    python -m dot.report.viz chain results.jsonl --index 0 --tokenizer symbols --out chain.gif --fps 4

The results file comes from `evaluation_batch.py --save_chain`: its records carry `chain`, the
generated region's token ids after every denoising step (for DoT-MP, every pass in turn).

Two layers, so the text can be tested without pixels:

1. `chain_frames(record, tokenizer, multipass)` -> `Frame`s of `Cell`s (token text + kind:
   mask / new / kept / done). Each frame shows what the decoder would read if sampling stopped
   there: the state cut like `dot.decoding.cut_generated` (at EOS; single pass drops PAD,
   DoT-MP stops at it), undecided positions (id >= vocab_size, the absorbing mask) as '_'.
   Every pass opens with an all-masked "step 0" frame, so a chain of N states over P passes
   gives N + P frames, and the last frame's text is the record's `prediction`.
2. `render_gif(frames, ...)` draws them with Pillow's default font and writes the GIF; the last
   frame is held longer through its duration (Pillow would merge identical hold frames).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

from dot.decoding import cut_generated
from dot.results import read_records
from dot.tokenization import Tokenizer, load_tokenizer, run_tokenizer_name

MASK_TEXT = "_"
# kind -> (text colour, background colour or None)
STYLE = {"mask": ("#555555", "#c8c8c8"), "new": ("#000000", "#ffd54f"),
         "kept": ("#111111", None), "done": ("#1f5fbf", None)}
FOOTER = {True: "#006400", False: "#d50000", None: "#000000"}  # answer right / wrong / unknown


class ChainMissingError(ValueError):
    """The record was written without `--save_chain`."""


@dataclass(frozen=True)
class Cell:
    text: str
    kind: str  # mask | new (changed at this step) | kept | done (a finished earlier thought)


@dataclass(frozen=True)
class Frame:
    cells: tuple[Cell, ...]
    step: int  # denoising step within the pass (0 = before the first step)
    steps: int  # states in this pass
    pass_no: int  # 1-based
    passes: int


def joiner(tok: Tokenizer) -> str:
    """What `tok.decode` puts between tokens: a space for 'symbols', else nothing."""
    return " " if getattr(tok, "skip_spaces", False) else ""


def frame_text(frame: Frame, tok: Tokenizer) -> str:
    """The frame's text as one string, masks written '_' (equals tok.decode without masks)."""
    return joiner(tok).join(c.text for c in frame.cells)


def split_passes(chain: Sequence[Sequence[int]]) -> list[list[list[int]]]:
    """Cut a DoT-MP chain into passes.

    The generated region of pass k+1 is shorter than that of pass k by the (non-empty) thought
    k appended to the prefix, so a pass boundary is exactly where the state length changes.
    """
    passes: list[list[list[int]]] = []
    for state in chain:
        if not passes or len(state) != len(passes[-1][-1]):
            passes.append([])
        passes[-1].append(list(state))
    return passes


def chain_frames(record: dict[str, Any], tok: Tokenizer, multipass: bool) -> list[Frame]:
    """The frames of a record's chain (see the module docstring)."""
    chain = record.get("chain")
    if not chain:
        raise ChainMissingError(
            f"record {record.get('task_id', '?')} (run {record.get('run', '?')}) has no 'chain': "
            "re-run evaluation_batch.py with --save_chain")
    piece = lambda i: MASK_TEXT if i >= tok.vocab_size else tok.decode([i])  # noqa: E731
    passes = split_passes(chain)
    frames: list[Frame] = []
    done: list[Cell] = []  # finished thoughts of earlier passes
    for p, states in enumerate(passes, start=1):
        # a step that revealed nothing (a skipped or reused call) shows no new frame
        states = [st for k, st in enumerate(states) if k == 0 or st != states[k - 1]]
        prev = [tok.mask_id] * len(states[0])
        shown = [[tok.mask_id] * len(states[0])] + states  # step 0: nothing decided yet
        for step, state in enumerate(shown):
            visible, _ = cut_generated(state, tok, stop_at_pad=multipass)
            cells, j = [], 0
            for i in visible:  # walk the state alongside, to compare each position with prev
                while state[j] != i:  # a PAD the single-pass cut dropped
                    j += 1
                kind = "mask" if i >= tok.vocab_size else ("new" if prev[j] != i else "kept")
                cells.append(Cell(piece(i), kind))
                j += 1
            frames.append(Frame(tuple(done + cells), step, len(states), p, len(passes)))
            prev = state
        final, _ = cut_generated(states[-1], tok, stop_at_pad=multipass)
        done = done + [Cell(piece(i), "done") for i in final]
    return frames


# ---------------------------------------------------------------------------------- drawing
@dataclass
class Layout:
    width: int = 760
    margin: int = 14
    font_size: int = 15
    line_gap: int = 6
    cell_pad: int = 1


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy word wrap of the header lines."""
    lines, line = [], ""
    for word in text.split(" "):
        trial = f"{line} {word}" if line else word
        if line and font.getlength(trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line]


def _place(cells: Sequence[Cell], font: ImageFont.FreeTypeFont, lay: Layout,
           sep: str) -> list[tuple[int, int, int, Cell]]:
    """(x, line, width, cell) of every cell, wrapping at the image width."""
    out, x, line = [], lay.margin, 0
    gap = font.getlength(sep) if sep else 0
    mask_w = font.getlength("0")
    for c in cells:
        w = int(round(mask_w if c.kind == "mask" else font.getlength(c.text))) + 2 * lay.cell_pad
        if x + w > lay.width - lay.margin and x > lay.margin:
            x, line = lay.margin, line + 1
        out.append((x, line, w, c))
        x += w + int(round(gap))
    return out


def render_gif(frames: Sequence[Frame], out: str | Path, *, question: str, sep: str = "",
               footer: str = "", footer_ok: bool | None = None, fps: float = 8.0,
               hold_s: float = 2.5, layout: Layout | None = None) -> Path:
    """Draw every frame (same size) and write an animated GIF looping forever; the footer of
    the last frame is green for a right answer, red for a wrong one (`footer_ok`)."""
    lay = layout or Layout()
    font = ImageFont.load_default(size=lay.font_size)
    line_h = lay.font_size + lay.line_gap
    inner = lay.width - 2 * lay.margin
    header = _wrap(f"Q: {question}", font, inner)
    placed = [_place(f.cells, font, lay, sep) for f in frames]
    n_lines = max((p[-1][1] + 1 for p in placed if p), default=1)
    footer_lines = _wrap(footer, font, inner) if footer else []
    top = lay.margin + line_h * (len(header) + 1) + lay.line_gap
    height = top + line_h * (n_lines + len(footer_lines) + 1) + lay.margin
    images = []
    for i, (frame, cells) in enumerate(zip(frames, placed)):
        im = Image.new("RGB", (lay.width, height), "white")
        draw = ImageDraw.Draw(im)
        y = lay.margin
        for line in header:
            draw.text((lay.margin, y), line, fill="#000000", font=font)
            y += line_h
        counter = f"step {frame.step}/{frame.steps}"
        if frame.passes > 1:
            counter = f"pass {frame.pass_no}/{frame.passes}  " + counter
        draw.text((lay.margin, y), counter, fill="#b00020", font=font)
        draw.line((lay.margin, top - lay.line_gap // 2, lay.width - lay.margin,
                   top - lay.line_gap // 2), fill="#dddddd")
        for x, line, w, c in cells:
            cy = top + line * line_h
            fg, bg = STYLE[c.kind]
            if bg:  # masks inset by a pixel so neighbouring blocks stay countable
                inset = 1 if c.kind == "mask" else 0
                draw.rectangle((x + inset, cy, x + w - 1 - inset, cy + lay.font_size + 2), fill=bg)
            if c.kind != "mask":
                draw.text((x + lay.cell_pad, cy), c.text, fill=fg, font=font)
        if i == len(frames) - 1:
            fy = top + (n_lines + 1) * line_h
            for line in footer_lines:
                draw.text((lay.margin, fy), line, fill=FOOTER[footer_ok], font=font)
                fy += line_h
        images.append(im.quantize(colors=64, dither=Image.Dither.NONE))
    step_ms = max(20, int(round(1000 / fps)))
    durations = [step_ms] * (len(images) - 1) + [max(step_ms, int(hold_s * 1000))]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(out, save_all=True, append_images=images[1:], duration=durations, loop=0,
                   optimize=False, disposal=1)
    return out


# ---------------------------------------------------------------------------------- CLI glue
def find_run(results: Path) -> Path | None:
    """The run folder of `<run>/eval/x.jsonl` or `<run>/samples/x.jsonl`, if it is one."""
    run = results.resolve().parent.parent
    if results.resolve().parent.name in ("eval", "samples") and \
            (run / ".hydra" / "config.yaml").is_file():
        return run
    return None


def run_data_config(run: Path | None) -> dict[str, Any]:
    """The `data` section of a run's Hydra config, tokenizer resolved ({} without a run)."""
    if run is None:
        return {}
    from omegaconf import OmegaConf
    path = Path(run) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--run {run}: no .hydra/config.yaml (not a finetune.py run folder)")
    cfg = OmegaConf.load(path)
    data = dict(OmegaConf.to_container(cfg).get("data", {}))
    if data.get("tokenizer") == "auto":
        data["tokenizer"] = run_tokenizer_name(cfg)
    return data


def is_multipass(results: Path, record: dict[str, Any], data: dict[str, Any]) -> bool:
    """DoT-MP? The summary beside the results says so; else the run config; else the record."""
    summary = results.with_suffix(".summary.json")
    if summary.is_file():
        return bool(json.loads(summary.read_text()).get("multipass", False))
    if "multipass" in data:
        return bool(data["multipass"])
    return record.get("passes", 1) > 1


def chain_gif(results: str | Path, index: int, out: str | Path, *, run: str | Path | None = None,
              tokenizer: str | None = None, fps: float = 8.0, hold_s: float = 2.5) -> Path:
    """Read record `index` of a results file and write its chain GIF."""
    results = Path(results)
    records = read_records(results)
    if not 0 <= index < len(records):
        raise IndexError(f"--index {index}: {results} holds {len(records)} records")
    record = records[index]
    data = run_data_config(Path(run) if run else find_run(results))
    tok = load_tokenizer(tokenizer or data.get("tokenizer") or "char",
                         digits=bool(data.get("digit", False)))
    frames = chain_frames(record, tok, is_multipass(results, record, data))
    verdict = "correct" if record.get("correct") else f"wrong (gold {record.get('gold')})"
    return render_gif(frames, out, question=record["question"], sep=joiner(tok),
                      footer=f"answer: {record.get('answer')}  {verdict}",
                      footer_ok=record.get("correct"), fps=fps, hold_s=hold_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dot.report.viz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("chain", help="animated GIF of one example's denoising chain")
    c.add_argument("results", help="results .jsonl written with evaluation_batch.py --save_chain")
    c.add_argument("--index", type=int, default=0, help="record (line) number, 0-based")
    c.add_argument("--run", help="run folder whose .hydra/config.yaml names the tokenizer "
                   "(default: found when the results sit in <run>/eval or <run>/samples)")
    c.add_argument("--tokenizer", help="char | symbols | gpt2 | owt2 | path (overrides --run; "
                   "default: the run's, else char)")
    c.add_argument("--out", default="chain.gif")
    c.add_argument("--fps", type=float, default=8.0, help="denoising steps per second")
    c.add_argument("--hold", type=float, default=2.5, help="seconds the final frame stays")
    args = p.parse_args(argv)
    try:
        out = chain_gif(args.results, args.index, args.out, run=args.run,
                        tokenizer=args.tokenizer, fps=args.fps, hold_s=args.hold)
    except (ChainMissingError, IndexError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
