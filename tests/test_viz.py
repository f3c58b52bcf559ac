"""dot.report.viz: chain frames (text layer), the GIF (drawing layer) and the CLI."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dot.report.viz import Frame, chain_frames, find_run, frame_text, main, render_gif, run_data_config, split_passes
from dot.tokenization import load_tokenizer

TOK = load_tokenizer("char")
M = TOK.mask_id


def ids(text):
    return TOK.encode(text)


def record(chain, prediction, **extra):
    return dict(task="mult2x2", task_id=0, run=0, question="1 2 * 3 4", gold="3 6 4 1",
                prediction=prediction, answer=prediction, correct=False, nfe=len(chain),
                seconds=0.1, chain=chain, **extra)


def kinds(frame: Frame):
    return "".join(c.kind[0] for c in frame.cells)  # m(ask) n(ew) k(ept) d(one)


def distinct_states(chain):
    """States that differ from the one before: a step that revealed nothing draws no frame."""
    return sum(1 for k, state in enumerate(chain) if k == 0 or state != chain[k - 1])


def test_steps_that_change_nothing_draw_no_frame():
    chain = [[M, M], [ids("4")[0], M], [ids("4")[0], M], [ids("4")[0], TOK.eos_id]]
    frames = chain_frames(record(chain, "4"), TOK, multipass=False)
    assert [frame_text(f, TOK) for f in frames] == ["__", "__", "4_", "4"]


def test_single_pass_frames_mark_changes_and_end_at_prediction():
    # 4 positions: "4", "2", EOS, PAD; unmasked over three steps
    chain = [[M, M, M, M], [ids("4")[0], M, M, M],
             [ids("4")[0], ids("2")[0], M, TOK.pad_id],
             [ids("4")[0], ids("2")[0], TOK.eos_id, TOK.pad_id]]
    frames = chain_frames(record(chain, "42"), TOK, multipass=False)
    assert len(frames) == len(chain) + 1  # + the step-0 frame of the pass
    assert [frame_text(f, TOK) for f in frames] == ["____", "____", "4___", "42_", "42"]
    assert [kinds(f) for f in frames] == ["mmmm", "mmmm", "nmmm", "knm", "kk"]
    assert [f.step for f in frames] == [0, 1, 2, 3, 4] and frames[-1].steps == 4


def test_single_pass_drops_pad_inside_like_the_decoder():
    chain = [[ids("1")[0], TOK.pad_id, ids("2")[0], TOK.eos_id]]
    assert frame_text(chain_frames(record(chain, "12"), TOK, False)[-1], TOK) == "12"
    # DoT-MP stops a thought at the first PAD instead
    assert frame_text(chain_frames(record(chain, "1"), TOK, True)[-1], TOK) == "1"


def test_multipass_chain_is_split_where_the_region_shrinks():
    a, b = ids("7 + "), ids("8")
    pass1 = [[M] * 6, a + [M, M], a + [TOK.pad_id, TOK.pad_id]]
    pass2 = [[M, M], b + [TOK.eos_id]]  # the prefix grew by len(a): region 6 -> 2
    chain = pass1 + pass2
    assert [len(p) for p in split_passes(chain)] == [3, 2]
    frames = chain_frames(record(chain, "7 + 8", passes=2), TOK, multipass=True)
    assert len(frames) == len(chain) + 2
    assert frames[4].pass_no == 2 and frames[4].step == 0
    assert frame_text(frames[4], TOK) == "7 + __"  # earlier thought, then the new all-mask region
    assert kinds(frames[4]) == "ddddmm"
    assert frame_text(frames[-1], TOK) == "7 + 8"


def test_symbols_tokenizer_joins_with_spaces():
    tok = load_tokenizer("symbols")
    chain = [tok.encode("4 2") + [tok.mask_id], tok.encode("4 2") + [tok.eos_id]]
    frames = chain_frames(record(chain, "4 2"), tok, False)
    assert frame_text(frames[1], tok) == "4 2 _"
    assert frame_text(frames[-1], tok) == tok.decode(tok.encode("4 2"))


@pytest.fixture(scope="module")
def real_record(tmp_path_factory):
    """A record written by dot.evaluate with record_chain=True (tiny random SEDD)."""
    from dot.backbone import backbone_class
    from dot.config import compose_config
    from dot.data import load_split
    from dot.decoding import Decoding
    from dot.evaluate import evaluate
    from dot.tasks import get_task

    torch.manual_seed(0)
    cfg = compose_config(["backbone=sedd", "data.task=mult2x2", "model.hidden_size=32",
                          "model.n_blocks=1", "model.cond_dim=16", "model.n_heads=2"])
    backbone = backbone_class("sedd").from_config(cfg, TOK)
    task = get_task("mult2x2")
    examples, _ = load_split(task, "test")
    out = tmp_path_factory.mktemp("run") / "eval" / "T6"
    evaluate(backbone, task, examples[:2], Decoding(6, record_chain=True), seq_len=40, out=out,
             progress=False)
    path = out.with_suffix(".jsonl")
    return path, [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluated_chain_starts_masked_and_ends_at_the_prediction(real_record):
    _, recs = real_record
    for rec in recs:
        frames = chain_frames(rec, TOK, multipass=False)
        assert len(frames) == distinct_states(rec["chain"]) + 1
        assert frames[0].cells and all(c.kind == "mask" for c in frames[0].cells)
        assert frame_text(frames[-1], TOK) == rec["prediction"]
        assert not any(c.kind == "mask" for c in frames[-1].cells)  # noise removal: no mask left


def _grey_pixels(im: Image.Image) -> int:
    """Pixels of the mask-block grey (#c8c8c8, give or take the GIF palette)."""
    rgb = np.asarray(im.convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((abs(r - 200) < 8) & (r == g) & (g == b)).sum())


def test_gif_has_one_frame_per_state_and_holds_the_last(real_record, tmp_path):
    path, recs = real_record
    out = tmp_path / "chain.gif"
    assert main(["chain", str(path), "--index", "1", "--out", str(out), "--fps", "10",
                 "--hold", "3"]) == 0
    im = Image.open(out)
    assert im.n_frames == distinct_states(recs[1]["chain"]) + 1
    durations = []
    for k in range(im.n_frames):
        im.seek(k)
        durations.append(im.info["duration"])
    assert durations[:-1] == [100] * (im.n_frames - 1) and durations[-1] == 3000
    im.seek(0)
    first = _grey_pixels(im)
    im.seek(im.n_frames - 1)
    assert first > 500 and first > 10 * _grey_pixels(im)  # mask blocks only at the start


def test_render_gif_direct_frames(tmp_path):
    chain = [[M, M], [ids("9")[0], M], ids("9") + [TOK.eos_id]]
    frames = chain_frames(record(chain, "9"), TOK, False)
    out = render_gif(frames, tmp_path / "x.gif", question="a very long question " * 20)
    assert Image.open(out).n_frames == 4


@pytest.mark.parametrize("ok", [True, False])
def test_footer_is_green_only_for_a_right_answer(tmp_path, ok):
    chain = [[M, M], ids("9") + [TOK.eos_id]]
    out = render_gif(chain_frames(record(chain, "9"), TOK, False), tmp_path / "x.gif",
                     question="q", footer="answer: 9", footer_ok=ok)
    im = Image.open(out)
    im.seek(im.n_frames - 1)
    rgb = np.asarray(im.convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    green = int(((g > 80) & (r < 40) & (b < 40)).sum())
    red = int(((r > 180) & (g < 40) & (b < 40)).sum())
    assert (green > 20 and red == 0) if ok else (red > 20 and green == 0)


def test_cli_record_without_chain_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "res.jsonl"
    rec = record([], "x")
    del rec["chain"]
    path.write_text(json.dumps(rec) + "\n")
    assert main(["chain", str(path), "--index", "0", "--out", str(tmp_path / "x.gif")]) == 2
    err = capsys.readouterr().err
    assert "no 'chain'" in err and "evaluation_batch.py with --save_chain" in err
    assert not (tmp_path / "x.gif").exists()
    assert main(["chain", str(path), "--index", "5", "--out", str(tmp_path / "x.gif")]) == 2
    assert "holds 1 records" in capsys.readouterr().err


def test_tokenizer_comes_from_the_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("data:\n  tokenizer: symbols\n  digit: false\n")
    results = run / "samples" / "step_10.jsonl"
    results.parent.mkdir()
    tok = load_tokenizer("symbols")
    chain = [[tok.mask_id] * 3, tok.encode("1 2") + [tok.eos_id]]
    results.write_text(json.dumps(record(chain, "1 2")) + "\n")
    assert find_run(results) == run.resolve()
    assert run_data_config(find_run(results))["tokenizer"] == "symbols"
    assert find_run(tmp_path / "elsewhere.jsonl") is None
    assert main(["chain", str(results), "--out", str(tmp_path / "c.gif")]) == 0
    assert Image.open(tmp_path / "c.gif").n_frames == 3
