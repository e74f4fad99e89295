"""IGBH (IGB heterogeneous, "IGBH600M") for R-GAT: the on-disk layout, the graph, the seed split, the
neighbour sampler and the loaders."""
