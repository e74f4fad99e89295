"""R-GAT on IGBH-Full (MLPerf log name `gnn`): validation accuracy 0.72, evaluated in epoch fractions."""

from models.gnn.benchmark import GNNBenchmark, write_synthetic_data
from models.gnn.config import FLAVOURS
from runtime.benchmark import BenchmarkSpec, Parity

SPEC = BenchmarkSpec(name="gnn", flavours=FLAVOURS, benchmark=GNNBenchmark, write_synthetic_data=write_synthetic_data,
                     metric="accuracy", higher_is_better=True, eval_unit="epoch_fraction",
                     # Sampled neighbourhoods depend on which seeds share a batch (a node is expanded once per
                     # subgraph, at the hop it is first reached), so one process and two ranks sample different
                     # subgraphs. With every neighbour taken, each seed's logits are its full 3-hop computation
                     # whatever the batch, and without dropout both layouts compute the same losses.
                     parity=Parity(deterministic=("model.dropout=0", "data.fanouts=-1,-1,-1")))
