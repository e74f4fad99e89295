"""R-GAT training-step time (CPU, or `--device cuda`): ours (models/gnn RGNN + our FusedAdam) against the same
model written in plain PyG (HeteroConv of GATConv over every edge type + torch.optim.Adam), both on the same
subgraphs from our sampler, the PyG side receiving each as a `HeteroData`.

Ours skips the convolutions whose output reaches no paper logit (last layer: all but the five into `paper`;
the layer below: those into institutes) and updates only the trainable parameters with the flat FusedAdam;
plain PyG runs all eleven convolutions in every layer, as the reference does, and steps every parameter
(the skipped ones get no gradient, so torch's Adam leaves them alone). Both start from the same weights: the
first forward's logits (dropout off) are checked equal before the clock starts.

Step = forward on the seeds + cross-entropy + backward + optimizer step + zero_grad. The batches are sampled
and gathered once beforehand (perf_tests/gnn_sampler.py times that part); `--warmup` untimed steps per side,
then `--iters` timed steps alternating between the two sides (load from other processes hits both alike);
median ms per step and ours / PyG (< 1: ours is faster).

    python perf_tests/gnn_step.py [--sizes debug,medium] [--iters 10] [--threads 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import alternate, cpu_name  # noqa: E402

from kernels.backends import optimizer_class  # noqa: E402
from models.gnn.model import RGNNConfig, build_rgnn  # noqa: E402
from pipelines.igbh.dataset import IGBH  # noqa: E402
from pipelines.igbh.format import IGBHSizes  # noqa: E402
from pipelines.igbh.graph import EDGE_TYPES  # noqa: E402
from pipelines.igbh.loader import build_batch, step_generator  # noqa: E402
from pipelines.igbh.sampler import NeighborSampler  # noqa: E402
from pipelines.igbh.synthetic import write_synthetic_igbh  # noqa: E402

FANOUTS = (15, 10, 5)
# name: (papers, authors, feature dim = in_channels, hidden, heads, classes, seeds per batch)
SIZES = {
    "debug": (5000, 4000, 32, 32, 4, 8, 32),  # the debug flavour's graph, model and batch
    "medium": (20000, 16000, 128, 128, 4, 64, 128),
}


class PlainRGAT(torch.nn.Module):
    """The reference's RGNN as one writes it with PyG alone: every edge type in every layer."""

    def __init__(self, cfg: RGNNConfig):
        super().__init__()
        from torch_geometric.nn import GATConv, HeteroConv

        self.dropout = cfg.dropout
        self.convs = torch.nn.ModuleList(
            HeteroConv({e: GATConv(cfg.in_channels if i == 0 else cfg.hidden_channels,
                                   cfg.hidden_channels // cfg.num_heads, heads=cfg.num_heads, add_self_loops=False)
                        for e in EDGE_TYPES}, aggr="sum")
            for i in range(cfg.num_layers))
        self.lin = torch.nn.Linear(cfg.hidden_channels, cfg.num_classes)

    def forward(self, x_dict, edge_index_dict, num_seeds):
        for i, conv in enumerate(self.convs):
            x_dict = conv(x_dict, edge_index_dict)
            if i < len(self.convs) - 1:
                x_dict = {t: F.dropout(F.leaky_relu(x), p=self.dropout, training=self.training)
                          for t, x in x_dict.items()}
        return self.lin(x_dict["paper"][:num_seeds])


def hetero_data(batch):
    from torch_geometric.data import HeteroData

    data = HeteroData()
    for t, x in batch.x.items():
        data[t].x = x
    for e, ei in batch.edge_index.items():
        data[e].edge_index = ei
    data.y, data.num_seeds = batch.y, batch.num_seeds
    return data


def measure(name: str, args, device: torch.device) -> None:
    papers, authors, dim, hidden, heads, classes, batch_size = SIZES[name]
    sizes = IGBHSizes(num_papers=papers, num_authors=authors, labelled_papers=papers, feature_dim=dim,
                      num_classes=classes)
    cfg = RGNNConfig(in_channels=dim, hidden_channels=hidden, num_heads=heads, num_layers=3, num_classes=classes,
                     dropout=0.2)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_igbh(tmp, sizes, institutes=20, fos=max(60, papers // 50), journals=max(30, papers // 100),
                             conferences=max(20, papers // 200), val_fraction=0.01, seed=0)
        data = IGBH(tmp, sizes)
        sampler = NeighborSampler(data.graph, FANOUTS, device)  # on the GPU, as the benchmark samples there
        batches = []
        for i in range(args.batches):
            seeds = data.train_idx[i * batch_size:(i + 1) * batch_size]
            batches.append(build_batch(data, sampler, seeds, seeds.numel(), step_generator(sampler.device, 0, i, 0),
                                       device))
    nodes = statistics.mean(sum(x.shape[0] for x in b.x.values()) for b in batches)
    edges = statistics.mean(sum(e.shape[1] for e in b.edge_index.values()) for b in batches)
    pyg_batches = [hetero_data(b) for b in batches]

    torch.manual_seed(0)
    ours = build_rgnn(cfg).to(device)
    plain = PlainRGAT(cfg).to(device)
    plain.load_state_dict(ours.state_dict())  # the same parameter names, one for one
    ours.eval(), plain.eval()
    with torch.no_grad():
        b, d = batches[0], pyg_batches[0]
        torch.testing.assert_close(ours(b.x, b.edge_index, b.num_seeds),
                                   plain(d.x_dict, d.edge_index_dict, d.num_seeds), rtol=1e-4, atol=1e-5)
    ours.train(), plain.train()
    ours_opt = optimizer_class("adam")([p for p in ours.parameters() if p.requires_grad], lr=1e-3)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    counter = {"ours": 0, "pyg": 0}

    def ours_step():
        b = batches[counter["ours"] % len(batches)]
        counter["ours"] += 1
        F.cross_entropy(ours(b.x, b.edge_index, b.num_seeds), b.y).backward()
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)

    def pyg_step():
        d = pyg_batches[counter["pyg"] % len(pyg_batches)]
        counter["pyg"] += 1
        F.cross_entropy(plain(d.x_dict, d.edge_index_dict, d.num_seeds), d.y).backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)

    runs = {"ours": ours_step, "pyg": pyg_step}
    times = alternate(runs, args.warmup, args.iters, device)
    ours_ms, pyg_ms = (1e3 * times.median(k) for k in runs)
    params = sum(p.numel() for p in ours.parameters())
    trainable = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    print(f"| {name} | {dim}/{hidden}x{heads}h/{classes} | {batch_size} | {nodes:,.0f} / {edges:,.0f} | "
          f"{params:,} ({trainable:,}) | {ours_ms:.1f} | {pyg_ms:.1f} | {ours_ms / pyg_ms:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="debug,medium", help=f"comma-separated of {', '.join(SIZES)}")
    parser.add_argument("--batches", type=int, default=4, help="distinct sampled batches, cycled through")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the debug flavour: 1)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)  # PyG's import
    torch.set_num_threads(args.threads)
    print(f"# gnn_step  {datetime.datetime.now().isoformat(timespec='seconds')}")
    import torch_geometric

    print(f"torch {torch.__version__}, torch_geometric {torch_geometric.__version__}, {cpu_name()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads, device {args.device}")
    print(f"fan-out {list(FANOUTS)}, {args.batches} sampled batches cycled, warmup {args.warmup}, "
          f"timed {args.iters} alternating (median)")
    print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
    print("| size | in/hidden x heads/classes | seeds | nodes / edges per batch | params (trainable in ours) "
          "| ours ms/step | PyG ms/step | ours / PyG |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sizes.split(","):
        measure(name, args, torch.device(args.device))
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
