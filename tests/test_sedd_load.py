"""load_model for every folder layout, the hub path (faked), and its errors; init in the backbone."""
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file

from dot.backbone import backbone_class
from dot.tokenization import load_tokenizer
from sedd_backend import load_model
from sedd_backend.graph import Absorbing, Uniform
from sedd_backend.load import CheckpointError
from sedd_backend.model import DDiT
from sedd_backend.noise import GeometricNoise, LogLinearNoise

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ARCH = dict(hidden_size=32, cond_dim=16, n_heads=4, n_blocks=2, dropout=0.1, scale_by_sigma=True)
CHAR_VOCAB = load_tokenizer("char").vocab_size


def official_config(tokens=CHAR_VOCAB, graph="absorb", noise="loglinear", **arch):
    return {"ngpus": 1, "tokens": tokens, "graph": {"type": graph},
            "noise": {"type": noise, "sigma_min": 1e-4, "sigma_max": 20},
            "model": {"name": "tiny", "type": "ddit", "length": 64, **ARCH, **arch}}


def random_state(seed, tokens=CHAR_VOCAB):
    torch.manual_seed(seed)
    model = DDiT(tokens + 1, **ARCH)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.state_dict()


def assert_weights(model, state):
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items() if k != "rotary_emb.inv_freq")


def hub_folder(path, state, weights="pytorch_model.bin", cfg=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg or official_config(), indent=2))
    if weights.endswith(".bin"):
        torch.save(state, path / weights)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, path / weights)
    return path


def run_folder(path, cfg, ckpt):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (path / "checkpoints-meta").mkdir()
    torch.save(ckpt, path / "checkpoints-meta" / "checkpoint.pth")
    return path


def test_hub_layout_bin_and_safetensors_preferred(tmp_path):
    state_bin, state_st = random_state(0), random_state(1)
    folder = hub_folder(tmp_path / "m", state_bin)
    model, graph, noise = load_model(folder)
    assert_weights(model, state_bin)
    assert not model.training and isinstance(graph, Absorbing) and graph.dim == CHAR_VOCAB + 1
    assert isinstance(noise, LogLinearNoise)
    hub_folder(tmp_path / "m", state_st, weights="model.safetensors")
    assert_weights(load_model(str(folder))[0], state_st)


def test_hub_id_through_faked_download(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    remote = hub_folder(tmp_path / "remote", random_state(2))
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        if not (remote / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        cache = tmp_path / "cache" / repo_id.replace("/", "--")
        cache.mkdir(parents=True, exist_ok=True)
        return str(shutil.copy(remote / filename, cache / filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model, _, _ = load_model("someone/sedd-tiny")
    assert_weights(model, random_state(2))
    assert calls == [("someone/sedd-tiny", "config.json"), ("someone/sedd-tiny", "model.safetensors"),
                     ("someone/sedd-tiny", "pytorch_model.bin")]

    def offline(repo_id, filename, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(CheckpointError, match="could not be fetched.*no network"):
        load_model("someone/sedd-tiny")


def test_official_run_folder_uses_positional_ema(tmp_path):
    raw, ema = random_state(3), random_state(4)
    del raw["rotary_emb.inv_freq"]  # may be absent
    names = [k for k in ema if k != "rotary_emb.inv_freq"]
    cfg = {**official_config(graph="absorb", noise="geometric"),
           "training": {"block_size": 128}, "data": {"multipass": False}}
    ckpt = {"model": raw, "step": 7, "optimizer": {},
            "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": [ema[k] for k in names]}}
    model, _, noise = load_model(run_folder(tmp_path / "run", cfg, ckpt))
    assert_weights(model, ema)
    assert isinstance(noise, GeometricNoise) and noise.sigma_max == 20

    ckpt["ema"]["shadow_params"] = ckpt["ema"]["shadow_params"][:-1]
    with pytest.raises(CheckpointError, match="EMA holds 29 tensors.*has 30 parameters"):
        load_model(run_folder(tmp_path / "run2", cfg, ckpt))


def test_our_run_folder_named_ema_and_vocab_from_tokenizer(tmp_path):
    raw = random_state(5)
    cfg = {"backbone": {"name": "sedd"}, "data": {"tokenizer": "char"}, "graph": {"type": "uniform"},
           "noise": {"type": "loglinear"}, "model": {**ARCH, "scale_by_sigma": False, "embed_dim": 16}}
    uni_raw = DDiT(CHAR_VOCAB, **{**ARCH, "scale_by_sigma": False}).state_dict()
    shadow = {k: torch.randn_like(v) for k, v in uni_raw.items() if k != "rotary_emb.inv_freq"}
    ckpt = {"format": "dot-run-v1", "backbone": "sedd", "step": 3, "model": uni_raw, "optimizer": {},
            "ema": {"decay": 0.9, "num_updates": 3, "shadow_params": shadow}}
    model, graph, _ = load_model(run_folder(tmp_path / "ours", cfg, ckpt))
    assert isinstance(graph, Uniform) and graph.dim == CHAR_VOCAB
    assert_weights(model, shadow)

    cfg["graph"]["type"], cfg["model"]["scale_by_sigma"] = "absorb", True
    no_ema = {**ckpt, "model": raw, "ema": None}
    assert_weights(load_model(run_folder(tmp_path / "no_ema", cfg, no_ema))[0], raw)
    bad = {**ckpt, "model": raw, "ema": {"decay": 0.9, "num_updates": 1,
                                         "shadow_params": {"blocks.9.norm1.weight": torch.ones(32)}}}
    with pytest.raises(CheckpointError, match="missing .*unexpected \\[blocks.9.norm1.weight\\]"):
        load_model(run_folder(tmp_path / "bad_ema", cfg, bad))
    with pytest.raises(CheckpointError, match="backbone 'plaid'"):
        load_model(run_folder(tmp_path / "plaid", cfg, {**no_ema, "backbone": "plaid"}))


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.pop("blocks.1.mlp.0.bias"), r"missing keys \[blocks.1.mlp.0.bias\]"),
    (lambda s: s.update({"module.extra": torch.zeros(1)}), r"unexpected keys \[module.extra\]"),
    (lambda s: s.update({"blocks.0.attn_out.weight": torch.zeros(32, 31)}),
     r"wrong shapes .*blocks.0.attn_out.weight \(32, 31\) vs \(32, 32\)"),
])
def test_strict_loading_errors_name_file_and_keys(tmp_path, edit, message):
    state = random_state(0)
    edit(state)
    folder = hub_folder(tmp_path / "m", state)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(folder)
    assert "pytorch_model.bin" in str(err.value)


def test_unknown_folder_and_bad_paths(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a SEDD model folder.*notes.txt"):
        load_model(tmp_path / "junk")
    with pytest.raises(CheckpointError, match="is a file"):
        load_model(tmp_path / "junk" / "notes.txt")
    with pytest.raises(CheckpointError, match="neither a local folder nor a hub id"):
        load_model(str(tmp_path / "missing" / "deeper"))


def backbone_cfg(init, *overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("config", overrides=[f"init={init}", "backbone=sedd", "model=tiny", "data.tokenizer=char",
                                            *[f"model.{k}={v}" for k, v in ARCH.items()], *overrides])


def test_backbone_init_from_folder_checks_vocab_and_config(tmp_path):
    state = random_state(7)
    folder = hub_folder(tmp_path / "m", state)
    bb = backbone_class("sedd").from_config(backbone_cfg(folder, "model.dropout=0.0"),
                                            load_tokenizer("char"))
    assert_weights(bb.model, state)
    assert bb.model.training
    assert all(m.p == 0.0 for m in bb.model.modules() if isinstance(m, torch.nn.Dropout))
    other = hub_folder(tmp_path / "big", random_state(8, tokens=50), cfg=official_config(tokens=50))
    with pytest.raises(ValueError, match=f"vocabulary of 50 tokens.*has {CHAR_VOCAB}"):
        backbone_class("sedd").from_config(backbone_cfg(other), load_tokenizer("char"))
    with pytest.raises(ValueError, match="model=small"):
        backbone_class("sedd").from_config(backbone_cfg(folder, "model.n_blocks=3"),
                                           load_tokenizer("char"))


def test_load_pretrained_official_run_folder_for_evaluation(tmp_path):
    from dot.loading import load_for_eval

    gpt2 = 50257
    small_arch = dict(hidden_size=16, n_heads=2, n_blocks=1, cond_dim=8)
    torch.manual_seed(0)
    state = DDiT(gpt2 + 1, **{**ARCH, **small_arch}).state_dict()
    cfg = {**official_config(tokens=gpt2, **small_arch), "training": {"block_size": 96},
           "data": {"multipass": True, "hidden_thought": False}}
    folder = run_folder(tmp_path / "official", cfg, {"model": state, "ema": None, "step": 1})
    bb, eval_cfg = load_for_eval(str(folder), torch.device("cpu"))
    assert bb.name == "sedd" and not bb.model.training and bb.tokenizer.vocab_size == gpt2
    assert eval_cfg.seq_len == 96 and eval_cfg.data.multipass and eval_cfg.data.task == "gsm8k"
    # the sampler comes from our SEDD defaults (configs/backbone/sedd.yaml), not the run's
    assert eval_cfg.sampling.predictor == "confidence" and eval_cfg.model.n_blocks == 1
    assert_weights(bb.model, state)
    with pytest.raises(ValueError, match="tokenizer gpt2 has 50257"):
        type(bb).read_pretrained(str(hub_folder(tmp_path / "char", random_state(0))), torch.device("cpu"))
