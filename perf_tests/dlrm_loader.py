"""DLRMv2 on this machine's CPU: input pipeline, training step and the exact AUROC, each against a baseline
measured in the same run.

  Loader, samples/s of training batches (dense, labels, 26 multi-hot bags as a KeyedJaggedTensor):
    (a) ours: pipelines/criteo/loader.py on the npz format (memory-mapped members, one copy per feature)
    (b) baseline, same files: np.load of the npz per batch (what np.load gives: a whole member read per
        access) then slicing the batch's rows, built into the same KeyedJaggedTensor
    (c) for scale, torchrec's own InMemoryBinaryCriteoIterDataPipe (mmap_mode) on the one-hot form of the
        same rows (day_i_sparse.npy, 26 ids per sample instead of 214): torchrec has no loader for the
        multi-hot npz format (the MLPerf reference keeps its own, data/multi_hot_criteo.py)
  Training step, samples/s: the debug flavour's model (tables <= 1000 rows, dim 16), forward + backward +
    both Adagrads, on loader batches.
  AUROC over 89,137,319 scores (the validation set's size) with ties (float32 sigmoid outputs), seconds:
    ours on CPU (packed-key numpy sort), ours via torch.sort (the GPU path, here on CPU), and
    scikit-learn's roc_auc_score as the baseline.

    python perf_tests/dlrm_loader.py [--rows-per-day 131072] [--batch 8192] [--auroc-samples 89137319]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import cpu_name  # noqa: E402 (perf_tests/machine.py, beside this script)

from pipelines.criteo import format as fmt  # noqa: E402
from pipelines.criteo.loader import CriteoReader, TrainBatches  # noqa: E402


def rate(batches, samples_per_batch: int, seconds_cap: float = 30.0) -> float:
    """Samples/s over the batches after the first (which pays for opening files and first page faults)."""
    count, start = 0, None
    for _i, _ in enumerate(batches):
        if start is None:
            start = time.perf_counter()
            continue
        count += samples_per_batch
        if time.perf_counter() - start > seconds_cap:
            break
    return count / (time.perf_counter() - start)


def naive_npz_batches(data_dir: str, day: int, batch: int, steps: int):
    from torchrec import KeyedJaggedTensor

    dense_path, labels_path, sparse_path = fmt.day_paths(data_dir, day)
    dense, labels = np.load(dense_path, mmap_mode="r"), np.load(labels_path, mmap_mode="r")
    keys = fmt.sparse_feature_names()
    for t in range(steps):
        rows = slice(t * batch, (t + 1) * batch)
        with np.load(sparse_path) as z:  # each member access reads the whole member
            members = [z[str(k)][rows] for k in range(fmt.NUM_SPARSE)]
        values = torch.from_numpy(np.concatenate([m.reshape(-1) for m in members]))
        lengths = torch.from_numpy(np.repeat(np.asarray(fmt.MULTI_HOT_SIZES, np.int32), batch))
        yield (torch.from_numpy(np.array(dense[rows])), torch.from_numpy(labels[rows, 0].astype(np.float32)),
               KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, stride=batch))


def torchrec_one_hot_batches(data_dir: str, days: int, batch: int):
    from torchrec.datasets.criteo import InMemoryBinaryCriteoIterDataPipe

    paths = [[os.path.join(data_dir, f"day_{d}_{part}.npy") for d in range(days)]
             for part in ("dense", "onehot_sparse", "labels")]
    return InMemoryBinaryCriteoIterDataPipe("train", *paths, batch_size=batch, rank=0, world_size=1,
                                            mmap_mode=True, hashes=[1000] * fmt.NUM_SPARSE)


def train_rate(reader: CriteoReader, steps: int, batch: int) -> float:
    import torch.nn.functional as F
    from torch.distributed.optim import _apply_optimizer_in_backward

    from models.dlrm_dcnv2.config import debug
    from models.dlrm_dcnv2.model import build_dlrm, materialize_embeddings

    cfg = debug()
    torch.manual_seed(0)
    model = build_dlrm(cfg.model)
    materialize_embeddings(model, torch.device("cpu"))
    _apply_optimizer_in_backward(torch.optim.Adagrad, model.embeddings.parameters(), {"lr": 0.012, "eps": 1e-8})
    opt = torch.optim.Adagrad([p for _, p in model.dense_parameters()], lr=0.012, eps=1e-8)
    batches = [reader.read(t * batch, batch) for t in range(steps + 1)]
    start = None
    for i, b in enumerate(batches):
        if i == 1:
            start = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(model(b.dense, b.sparse), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def auroc_seconds(n: int) -> list[tuple[str, float, float]]:
    from models.dlrm_dcnv2.auroc import _auroc_torch, binary_auroc

    rng = np.random.default_rng(0)
    labels = rng.random(n, dtype=np.float32) < 0.034  # Criteo's click rate
    logits = rng.normal(0.0, 1.5, n).astype(np.float32) + 1.2 * labels
    scores = torch.sigmoid(torch.from_numpy(logits))  # float32: many ties, as the model's outputs
    del logits
    y = torch.from_numpy(labels)
    out = []
    for name, fn in (("ours, CPU: packed keys + numpy sort", lambda: binary_auroc(scores, y)),
                     ("ours, torch.sort path (GPU path, on CPU)", lambda: _auroc_torch(scores, y))):
        gc.collect()
        t = time.perf_counter()
        value = fn()
        out.append((name, time.perf_counter() - t, value))
    from sklearn.metrics import roc_auc_score

    gc.collect()
    t = time.perf_counter()
    value = roc_auc_score(labels, scores.numpy())
    out.append(("baseline: sklearn roc_auc_score", time.perf_counter() - t, value))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows-per-day", type=int, default=131072)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--train-batch", type=int, default=1024)
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--auroc-samples", type=int, default=89_137_319)
    p.add_argument("--data", default="", help="reuse a directory written by an earlier run")
    args = p.parse_args(argv)
    from pipelines.criteo.synthetic import write_synthetic_criteo

    table_rows = tuple(min(r, 1000) for r in fmt.TABLE_ROWS)
    data = args.data or tempfile.mkdtemp(prefix="dlrm_perf_")
    days = 3
    if not os.path.exists(fmt.day_paths(data, days - 1)[2]):
        write_synthetic_criteo(data, days=days, rows_per_day=args.rows_per_day, table_rows=table_rows)
    for d in range(days):  # the one-hot form for torchrec's loader: each bag's first id is the one-hot id
        day = fmt.open_day(data, d)
        np.save(os.path.join(data, f"day_{d}_onehot_sparse.npy"), np.stack([s[:, 0] for s in day.sparse], 1))
    print(f"date: {datetime.datetime.now():%Y-%m-%dT%H:%M:%S}")
    print(f"command: python perf_tests/dlrm_loader.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"data: {days} synthetic days x {args.rows_per_day} rows, 214 ids/sample; batch {args.batch}")

    opened = [fmt.open_day(data, d) for d in range(days)]
    reader = CriteoReader(opened, table_rows, fmt.MULTI_HOT_SIZES)
    steps = len(reader) // args.batch
    ours = rate(TrainBatches(reader, args.batch, 0, 1, steps), args.batch)
    naive = rate(naive_npz_batches(data, 0, args.batch, min(6, args.rows_per_day // args.batch)), args.batch)
    rows = [("(a) ours: memory-mapped npz members (loader.py)", ours),
            ("(b) baseline: np.load(npz) per batch", naive)]
    try:
        rows.append(("(c) torchrec InMemoryBinaryCriteo, one-hot npy (26 ids)",
                     rate(torchrec_one_hot_batches(data, days, args.batch), args.batch)))
    except ImportError as e:
        print(f"(c) skipped: {e}")
    print("| loader                                                  |  samples/s | vs (b) |")
    print("|---------------------------------------------------------|------------|--------|")
    for name, r in rows:
        print(f"| {name:<55} | {r:>10.0f} | {r / naive:>5.1f}x |")

    step_rate = train_rate(reader, args.train_steps, args.train_batch)
    print(f"training step, debug model, batch {args.train_batch}: {step_rate:.0f} samples/s "
          f"(forward + backward + Adagrad; loader excluded)")

    print(f"AUROC over {args.auroc_samples} scores (float32 sigmoid, 3.4% positives):")
    print("| method                                   | seconds | AUROC              |")
    print("|------------------------------------------|---------|--------------------|")
    results = auroc_seconds(args.auroc_samples)
    for name, seconds, value in results:
        print(f"| {name:<40} | {seconds:>7.1f} | {value:.15f} |")
    print(f"ours (packed) vs sklearn: {results[2][1] / results[0][1]:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
