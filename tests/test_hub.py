"""`python -m dot.hub push` and hub ids of pushed runs, against a local stand-in of the hub
(the HfApi calls and snapshot_download that dot.hub makes, served from a folder)."""
import fnmatch
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

import evaluation_batch
from dot import hub
from dot.checkpoint import META, load_checkpoint
from dot.train import Trainer

RUN = ["backbone=sedd", "training.n_iters=3", "eval.n_examples=4", "sampling.steps=2"]


class LocalHub:
    """Repos as folders under `root`; the subset of the hub API dot.hub uses."""

    def __init__(self, root: Path):
        self.root = root

    def create_repo(self, repo_id, private=False, exist_ok=False):
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

    def upload_folder(self, repo_id, folder_path, commit_message=""):
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)

    def model_info(self, repo_id):
        repo = self.root / repo_id
        if not repo.is_dir():
            raise FileNotFoundError(f"404 {repo_id}")
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=str(p.relative_to(repo)))
                                         for p in repo.rglob("*") if p.is_file()])

    def snapshot_download(self, repo_id, allow_patterns):
        cache = self.root.parent / "cache" / repo_id.replace("/", "--")
        for p in (self.root / repo_id).rglob("*"):
            rel = str(p.relative_to(self.root / repo_id))
            if p.is_file() and any(fnmatch.fnmatch(rel, pat) for pat in allow_patterns):
                (cache / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, cache / rel)
        return str(cache)


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    stand_in = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(hub, "HfApi", lambda: stand_in)
    monkeypatch.setattr(hub, "snapshot_download", stand_in.snapshot_download)
    return stand_in


def test_push_then_evaluate_and_init_from_the_repo(tmp_path, local_hub, monkeypatch, tiny_config):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(*RUN), run)
    trainer.run()
    (run / ".hydra").mkdir()
    OmegaConf.save(trainer.cfg, run / ".hydra" / "config.yaml")

    assert hub.main(["push", str(run), "someone/dot-tiny"]) == 0
    repo = local_hub.root / "someone" / "dot-tiny"
    pushed = load_checkpoint(repo / META)
    assert "optimizer" not in pushed and pushed["step"] == 3
    source = load_checkpoint(run / META)
    for k, v in source["model"].items():
        assert torch.equal(pushed["model"][k], v)
    summary = json.loads(next((run / "eval").glob("*.summary.json")).read_text())
    card = (repo / "README.md").read_text()
    assert f"| {100 * summary['accuracy']:.2f} |" in card and "someone/dot-tiny" in card

    # the repo id decodes exactly as the local run does (same seed), into generated_output/
    monkeypatch.chdir(tmp_path)
    flags = ["--limit", "3", "--sampling_timesteps", "2", "--no_progress"]
    assert evaluation_batch.main(["--weights_path", str(run), "--output", str(tmp_path / "local"),
                                  *flags]) == 0
    assert evaluation_batch.main(["--weights_path", "someone/dot-tiny", *flags]) == 0
    local = (tmp_path / "local.jsonl").read_text().splitlines()
    remote = next((tmp_path / "generated_output" / "mult2x2").glob("*.jsonl")).read_text()
    assert [json.loads(line)["prediction"] for line in local] == \
        [json.loads(line)["prediction"] for line in remote.splitlines()]

    # init=REPO starts from the pushed EMA weights
    fresh = Trainer(tiny_config(*RUN, "init=someone/dot-tiny"), tmp_path / "fine")
    params = dict(fresh.model.named_parameters())
    for name, value in source["ema"]["shadow_params"].items():
        assert torch.equal(params[name].detach(), value)


def test_push_refuses_what_is_not_a_run(tmp_path, local_hub, capsys):
    assert hub.main(["push", str(tmp_path), "someone/x"]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert hub.fetch_run("someone/absent") is None  # unknown repos are left to the backbones
