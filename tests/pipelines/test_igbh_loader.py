"""The IGBH loaders' one-batch-ahead side thread (pipelines/igbh/loader.py `Prefetcher`): every batch built on
the worker thread is exactly the batch built synchronously for the same (seed, step, rank) -- node ids, edge
indices, features, labels -- over an epoch boundary, after a resume at a later step and after a jump that
leaves a stale batch in flight; the evaluation loader likewise. The epochs' seed order and the features and
labels are also checked against the files themselves (np.fromfile), not only against the loader. An error
on the worker thread reaches the consumer with its message, and does not hang it."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch

from pipelines.igbh.dataset import IGBH
from pipelines.igbh.format import LABEL_FILE, IGBHFormatError, IGBHSizes
from pipelines.igbh.graph import EDGE_TYPES
from pipelines.igbh.loader import Batch, EvalLoader, Prefetcher, TrainLoader, step_generator
from pipelines.igbh.sampler import NeighborSampler
from pipelines.igbh.synthetic import write_synthetic_igbh

SIZES = IGBHSizes(num_papers=160, num_authors=120, labelled_papers=100, feature_dim=8, num_classes=4)
GBS = 13  # 60 training seeds: 5 steps an epoch, the last one of 8 seeds
CPU = torch.device("cpu")
WAIT_S = 60  # far above a batch's time here: past it the consumer is hung


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread, as the debug flavour runs: on a busy 2-core machine every tiny parallel op (the
    sampler's repeat_interleave) otherwise waits milliseconds for the OpenMP team."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("igbh_loader")
    write_synthetic_igbh(str(root), SIZES, institutes=5, fos=6, journals=4, conferences=3, val_fraction=0.2, seed=5)
    return str(root)


@pytest.fixture(scope="module")
def dataset(root):
    return IGBH(root, SIZES)


def _raw(root, node_type):
    path = os.path.join(root, "full", "processed", node_type, "node_feat.npy")
    if node_type in ("paper", "author"):
        return np.fromfile(path, dtype=np.float32).reshape(-1, SIZES.feature_dim)
    return np.load(path, allow_pickle=False)


def _train(dataset, *, prefetch, rank=0, world=1, seed=7):
    sampler = NeighborSampler(dataset.graph, (4, 3, 2))
    return TrainLoader(dataset, sampler, dataset.train_idx, global_batch_size=GBS, rank=rank, world_size=world,
                       seed=seed, device=CPU, prefetch=prefetch)


def _record_threads(loader) -> dict:
    """Wrap the loader's batch maker: {key: name of the thread that built it}."""
    made, make = {}, loader._prefetch.make

    def recording(key, stream):
        made[key] = threading.current_thread().name
        return make(key, stream)

    loader._prefetch.make = recording
    return made


def _within(fn, seconds=WAIT_S):
    """fn() on a helper thread: its result, or the exception it raised; a test failure if it does not return."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 -- handed to the test as is
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the consumer is still waiting after {seconds} s: hung"
    return out


def _assert_same(got, want):
    assert set(got.x) == set(want.x) and set(got.edge_index) == set(want.edge_index) == set(EDGE_TYPES)
    for t in want.x:
        assert torch.equal(got.x[t], want.x[t]), t
    for e in want.edge_index:
        assert torch.equal(got.edge_index[e], want.edge_index[e]), e
    assert torch.equal(got.y, want.y)
    assert (got.num_seeds, got.global_seeds) == (want.num_seeds, want.global_seeds)


def _nodes(loader, step):
    """The subgraph's global node ids per type, sampled again from the batch's own key."""
    seeds, _ = loader.step_seeds(step)
    return loader.sampler.sample(seeds, step_generator(CPU, loader.seed, step, loader.rank)).nodes


@pytest.mark.parametrize("rank, world", [(0, 1), (1, 2)])
def test_prefetched_batches_are_the_synchronous_ones_across_an_epoch_and_a_resume(root, dataset, rank, world):
    sync = _train(dataset, prefetch=False, rank=rank, world=world)
    ahead = _train(dataset, prefetch=True, rank=rank, world=world)
    made = _record_threads(ahead)
    assert sync.steps_per_epoch == ahead.steps_per_epoch == 5
    steps = list(range(8))  # epoch 0 (steps 0-4, the last of 8 seeds) and three steps into epoch 1
    want = [sync.batch(s) for s in steps]
    got = [ahead.batch(s) for s in steps]
    for s in steps:
        _assert_same(got[s], want[s])
    # every step after the first was built on the worker thread, one ahead (step 8 is in flight now)
    ahead._prefetch._pending[1].result()
    assert made[0] == threading.current_thread().name
    assert all(made[s].startswith("igbh-prefetch") for s in steps[1:] + [8]), made

    # each epoch is a permutation of the training seeds, in GBS-sized global batches, the last one partial;
    # this rank holds its contiguous share of each
    train = dataset.train_idx
    for epoch in (0, 1):
        order = np.random.default_rng([7, epoch]).permutation(train.numel())
        for index in range(5):
            step = epoch * 5 + index
            if step >= len(steps):
                break
            glob = train[torch.from_numpy(order[index * GBS:(index + 1) * GBS])]
            share = glob[glob.numel() * rank // world:glob.numel() * (rank + 1) // world]
            assert got[step].global_seeds == glob.numel() == (8 if index == 4 else GBS)
            assert torch.equal(sync.step_seeds(step)[0], share)
            assert got[step].num_seeds == share.numel()
    assert not torch.equal(sync.step_seeds(0)[0], sync.step_seeds(5)[0])  # a new order each epoch

    # features and labels are the files' rows of the subgraph's nodes; the subgraphs differ from step to step
    labels = np.fromfile(os.path.join(root, "full", "processed", LABEL_FILE), dtype=np.float32)
    for s in (0, 4, 5, 7):
        nodes = _nodes(sync, s)
        seeds = sync.step_seeds(s)[0]
        assert torch.equal(nodes["paper"][:seeds.numel()], seeds)
        assert got[s].y.tolist() == labels[seeds.numpy()].astype(np.int64).tolist()
        for t, ids in nodes.items():
            assert torch.equal(got[s].x[t], torch.from_numpy(_raw(root, t)[ids.numpy()])), (s, t)
    cites = ("paper", "cites", "paper")
    assert any(got[s].edge_index[cites].shape != got[s + 1].edge_index[cites].shape
               or not torch.equal(got[s].edge_index[cites], got[s + 1].edge_index[cites]) for s in range(7))

    # resume: a fresh loader starting mid-epoch 1 gives the uninterrupted run's batches
    resumed = _train(dataset, prefetch=True, rank=rank, world=world)
    made = _record_threads(resumed)
    for s in (6, 7, 8):
        _assert_same(resumed.batch(s), sync.batch(s) if s == 8 else want[s])
    assert made[6] == threading.current_thread().name and made[7].startswith("igbh-prefetch")

    # a jump (the prefetched step 3 is stale when step 6 is asked for) drops the stale batch, then prefetches on
    jumper = _train(dataset, prefetch=True, rank=rank, world=world)
    made = _record_threads(jumper)
    for s in (0, 1, 2):
        jumper.batch(s)
    _assert_same(jumper.batch(6), want[6])
    _assert_same(jumper.batch(7), want[7])
    assert made[3].startswith("igbh-prefetch") and made[6] == threading.current_thread().name
    assert made[7].startswith("igbh-prefetch")
    for loader in (sync, ahead, resumed, jumper):
        loader.close()


def test_prefetched_eval_batches_are_the_synchronous_ones(dataset):
    def loader(prefetch):
        sampler = NeighborSampler(dataset.graph, (4, 3, 2))
        return EvalLoader(dataset, sampler, dataset.val_idx, batch_size=7, rank=0, world_size=1, seed=7, device=CPU,
                          prefetch=prefetch)

    sync, ahead = loader(False), loader(True)
    made = _record_threads(ahead)
    want, got = list(sync), list(ahead)
    assert len(got) == len(want) == sync.num_batches == 3  # 20 validation seeds: 7, 7, 6
    for g, w in zip(got, want):
        _assert_same(g, w)
    assert torch.equal(torch.cat([b.y for b in got]), dataset.labels_of(dataset.val_idx))
    assert made[0] == threading.current_thread().name and made[1].startswith("igbh-prefetch")
    assert made[2].startswith("igbh-prefetch") and 3 not in made  # nothing built past the end
    # a second pass gives the same batches again (a fixed generator per batch)
    for g, w in zip(list(ahead), want):
        _assert_same(g, w)
    sync.close()
    ahead.close()


def test_an_error_on_the_worker_thread_reaches_the_consumer_with_its_message():
    def make(key, stream):
        if key == 2:
            raise ValueError(f"batch {key} is broken on {threading.current_thread().name}")
        return Batch({}, {}, torch.tensor([key]), 1, 1)

    prefetcher = Prefetcher(make, CPU)
    assert prefetcher.get(0, 1).y.item() == 0 and prefetcher.get(1, 2).y.item() == 1  # 2 now fails on the worker
    out = _within(lambda: prefetcher.get(2, 3))
    assert isinstance(out.get("error"), ValueError)
    assert str(out["error"]).startswith("batch 2 is broken on igbh-prefetch")
    prefetcher.close()


def test_a_bad_label_met_on_the_worker_thread_is_named_in_the_consumer(tmp_path, dataset):
    """A paper of step 3 gets the label 2.5 in the raw label file: the batch built ahead on the worker fails
    to cast it, and the consumer's batch(3) raises the reader's error naming the file and the paper."""
    root = str(tmp_path)
    write_synthetic_igbh(root, SIZES, institutes=5, fos=6, journals=4, conferences=3, val_fraction=0.2, seed=5)
    victim = int(_train(dataset, prefetch=False).step_seeds(3)[0][2])
    path = os.path.join(root, "full", "processed", LABEL_FILE)
    labels = np.fromfile(path, dtype=np.float32)
    labels[victim] = 2.5
    labels.tofile(path)
    loader = _train(IGBH(root, SIZES), prefetch=True)
    made = _record_threads(loader)
    for s in range(3):
        loader.batch(s)
    out = _within(lambda: loader.batch(3))
    assert made[3].startswith("igbh-prefetch")
    assert isinstance(out.get("error"), IGBHFormatError)
    assert path in str(out["error"]) and f"paper {victim} has label 2.5" in str(out["error"])
    loader.close()
