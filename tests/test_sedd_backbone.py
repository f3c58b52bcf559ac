"""SEDDBackbone.loss: global-batch normalisation and reproducibility across batch splits."""
import torch
from hydra import compose, initialize_config_dir

from dot.backbone import Batch, backbone_class
from dot.rng import RowRandom
from dot.tokenization import load_tokenizer
from sedd_backend.model import DDiT

torch.set_num_threads(1)
CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def make(graph="absorb"):
    overrides = ["backbone=sedd", "model=tiny", "model.n_blocks=1", f"graph.type={graph}"]
    if graph == "uniform":
        overrides.append("model.scale_by_sigma=false")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(0)
    bb = backbone_class("sedd").from_config(cfg, load_tokenizer("char"))
    with torch.no_grad():
        for p in bb.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return bb


def batch(ids, fixed, rows, global_batch_size):
    return Batch(ids, fixed, torch.ones_like(ids, dtype=torch.bool), rows, global_batch_size, step=4)


def test_micro_batches_sum_to_the_global_batch_loss():
    for graph in ("absorb", "uniform"):
        bb = make(graph)
        assert type(bb.model) is DDiT  # bare network: checkpoints carry the official keys
        ids = torch.randint(0, bb.tokenizer.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
        fixed = torch.zeros(4, 16, dtype=torch.bool)
        fixed[:, :5] = True
        rows = torch.arange(4)
        whole, metrics = bb.loss(batch(ids, fixed, rows, 4), RowRandom(42, 4, rows))
        parts = [bb.loss(batch(ids[s], fixed[s], rows[s], 4), RowRandom(42, 4, rows[s]))[0]
                 for s in (slice(0, 1), slice(1, 4))]
        assert torch.allclose(whole, parts[0] + parts[1], rtol=1e-5)
        assert metrics["loss"] == whole.item() and whole.requires_grad and whole.item() > 0
        whole.backward()
        assert all(p.grad is not None for p in bb.model.parameters())
