"""DLRM-DCNv2: forward against torchrec's own DLRM_DCN with the same weights, the full size on meta and its
sharding plan, the exact AUROC against scikit-learn and torchmetrics, configs and the eval cadence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

from models.dlrm_dcnv2 import state_dict_adapter
from models.dlrm_dcnv2.auroc import _auroc_packed, _auroc_torch, binary_auroc
from models.dlrm_dcnv2.config import FLAVOURS, debug, dgxh100_1x8, dgxh100_8x8
from models.dlrm_dcnv2.model import DLRMModelConfig, build_dlrm, materialize_embeddings, parameter_count, table_name
from pipelines.criteo.format import MULTI_HOT_SIZES, TABLE_ROWS, sparse_feature_names

# Small but awkward: uneven rows, a table of one row, bags of 1..5 ids, non-power-of-two widths.
SMALL = DLRMModelConfig(embedding_dim=6, table_rows=(7, 1, 13, 5), multi_hot_sizes=(3, 1, 5, 2),
                        bottom_mlp=(11, 6), top_mlp=(9, 5, 1), dcn_layers=3, dcn_low_rank=4)


def random_kjt(cfg: DLRMModelConfig, batch: int, generator: torch.Generator) -> KeyedJaggedTensor:
    values = torch.cat([torch.randint(0, rows, (batch * size,), generator=generator)
                        for rows, size in zip(cfg.table_rows, cfg.multi_hot_sizes)])
    lengths = torch.tensor(cfg.multi_hot_sizes).repeat_interleave(batch)
    return KeyedJaggedTensor(keys=sparse_feature_names(cfg.num_tables), values=values, lengths=lengths, stride=batch)


def torchrec_reference(cfg: DLRMModelConfig):
    from torchrec.models.dlrm import DLRM_DCN

    tables = [EmbeddingBagConfig(name=table_name(k), embedding_dim=cfg.embedding_dim, num_embeddings=rows,
                                 feature_names=[f"cat_{k}"]) for k, rows in enumerate(cfg.table_rows)]
    return DLRM_DCN(EmbeddingBagCollection(tables=tables), dense_in_features=13,
                    dense_arch_layer_sizes=list(cfg.bottom_mlp), over_arch_layer_sizes=list(cfg.top_mlp),
                    dcn_num_layers=cfg.dcn_layers, dcn_low_rank_dim=cfg.dcn_low_rank)


def test_forward_and_gradients_match_torchrec_dlrm_dcn():
    torch.manual_seed(0)
    ours = build_dlrm(SMALL)
    materialize_embeddings(ours, torch.device("cpu"))
    with torch.no_grad():  # non-zero cross biases, so a bias mapped to the wrong place shows
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reference = torchrec_reference(SMALL)
    reference.load_state_dict(state_dict_adapter.to_torchrec(ours.state_dict(), SMALL), strict=True)
    g = torch.Generator().manual_seed(1)
    dense, sparse = torch.rand(5, 13, generator=g) * 4, random_kjt(SMALL, 5, g)
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    ours_logits = ours(dense, sparse)
    ref_logits = reference(dense, sparse).squeeze(-1)
    torch.testing.assert_close(ours_logits, ref_logits, rtol=1e-5, atol=1e-6)
    for logits in (ours_logits, ref_logits):
        torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
    ref_grads = {k: p.grad for k, p in reference.named_parameters()}
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[state_dict_adapter._ours_to_torchrec_name(name, 3)],
                                   rtol=1e-4, atol=1e-6, msg=name)


def test_state_dict_round_trip_through_torchrec_names():
    ours = build_dlrm(SMALL)
    materialize_embeddings(ours, torch.device("cpu"))
    state = ours.state_dict()
    back = state_dict_adapter.from_torchrec(state_dict_adapter.to_torchrec(state, SMALL), SMALL, state.keys())
    assert back.keys() == state.keys() and all(back[k] is state[k] for k in state)
    with pytest.raises(KeyError, match="missing"):
        state_dict_adapter.from_torchrec({}, SMALL, state.keys())


def test_full_size_model_is_26b_parameters_and_built_on_meta_only():
    counts = parameter_count(DLRMModelConfig())
    assert counts["embedding"] == sum(TABLE_ROWS) * 128 == 26_135_627_264  # 97.4 GiB in fp32
    # bottom 13-512-256-128, 3 cross layers (3456x512 twice + bias), top 3456-1024-1024-512-256-1
    bottom = (13 * 512 + 512) + (512 * 256 + 256) + (256 * 128 + 128)
    cross = 3 * (2 * 3456 * 512 + 3456)
    top = (3456 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 512 + 512) + (512 * 256 + 256) + (256 + 1)
    assert counts["dense"] == bottom + cross + top
    model = build_dlrm(DLRMModelConfig(), dense_device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_full_size_sharding_plan_for_8_h100_on_meta():
    """The planner places all 26 full-size tables (with Adagrad state) on 8 x 80 GB without allocating them."""
    from torch.distributed.optim import _apply_optimizer_in_backward

    from models.dlrm_dcnv2.parallelize import embedding_optimizer_kwargs, sharding_plan

    cfg = dgxh100_1x8()
    model = build_dlrm(cfg.model, dense_device="meta")
    _apply_optimizer_in_backward(torch.optim.Adagrad, model.embeddings.parameters(),
                                 embedding_optimizer_kwargs(0.004, 1e-8))
    plan, _ = sharding_plan(model, world_size=8, local_world_size=8, compute_device="cuda",
                            local_batch=cfg.train.global_batch_size // 8, device_memory_gib=80.0,
                            host_memory_gib=128.0, reserve_fraction=0.05)
    tables = plan.plan["embeddings"]
    assert sorted(tables) == sorted(table_name(k) for k in range(26))
    for name, spec in tables.items():
        assert spec.compute_kernel == "fused", name  # Adagrad fused into the TBE kernel
        rows = sum(shard.shard_sizes[0] for shard in spec.sharding_spec.shards) if spec.sharding_spec else None
        if spec.sharding_type in ("table_wise", "row_wise"):
            assert rows == TABLE_ROWS[int(name.rsplit("_", 1)[1])], name
    assert all(p.is_meta for p in model.parameters())


def test_cross_layer_is_x0_times_projection_plus_bias_plus_x():
    """DCNv2's cross layer x0 * (U (V x) + b) + x, on numbers worked out by hand: in 3 features, rank 2."""
    from models.dlrm_dcnv2.model import LowRankCrossLayer

    layer = LowRankCrossLayer(3, 2)
    with torch.no_grad():
        layer.down.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]]))  # V (rank x in)
        layer.up.weight.copy_(torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, -3.0]]))  # U (in x rank)
        layer.up.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x0 = torch.tensor([[2.0, 3.0, -1.0], [0.0, 1.0, 1.0]])
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, -2.0]])
    # row 0: V x = (1 + 6, -2 + 3) = (7, 1); U V x + b = (8.5, 13, -1); x0 * that + x = (18, 41, 4)
    # row 1: V x = (4 - 4, 0 - 2) = (0, -2); U V x + b = (-1.5, -1, 8); x0 * that + x = (4, -1, 6)
    assert torch.equal(layer(x0, x), torch.tensor([[18.0, 41.0, 4.0], [4.0, -1.0, 6.0]]))


# -- AUROC ----------------------------------------------------------------------------------------------
def _cases():
    rng = np.random.default_rng(0)
    yield "heavy ties", rng.integers(0, 4, 2000).astype(np.float32) / 4, rng.random(2000) < 0.3
    yield "ties + continuous", np.where(rng.random(5000) < 0.5, 0.5, rng.random(5000)).astype(np.float32), \
        rng.random(5000) < 0.1
    yield "all tied", np.full(100, 0.25, np.float32), rng.random(100) < 0.5
    yield "negative and zero scores", np.concatenate([-np.abs(rng.normal(size=500)), np.zeros(50), -np.zeros(50),
                                                      rng.normal(size=500)]).astype(np.float32), rng.random(1100) < 0.4
    yield "sigmoid saturation", (1 / (1 + np.exp(-rng.normal(0, 30, 3000)))).astype(np.float32), rng.random(3000) < 0.5
    yield "tiny", np.array([0.1, 0.4, 0.35, 0.8], np.float32), np.array([0, 0, 1, 1], bool)


@pytest.mark.parametrize("name,scores,labels", list(_cases()), ids=[c[0] for c in _cases()])
def test_auroc_matches_scikit_learn_and_torchmetrics(name, scores, labels):
    from sklearn.metrics import roc_auc_score

    expected = roc_auc_score(labels, scores)
    s, y = torch.from_numpy(scores), torch.from_numpy(labels)
    assert binary_auroc(s, y) == pytest.approx(expected, abs=1e-12)
    assert _auroc_torch(s, y) == pytest.approx(expected, abs=1e-12)
    assert _auroc_packed(scores, labels) == pytest.approx(expected, abs=1e-12)
    tm = pytest.importorskip("torchmetrics.functional.classification")
    assert binary_auroc(s, y) == pytest.approx(float(tm.binary_auroc(s, y.long())), abs=1e-6)  # float32 inside


def test_auroc_of_one_class_is_nan_and_shapes_are_checked():
    assert np.isnan(binary_auroc(torch.rand(10), torch.zeros(10)))
    with pytest.raises(ValueError, match="3 scores but 4 labels"):
        binary_auroc(torch.rand(3), torch.ones(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_auroc_of_non_finite_scores_is_nan_wherever_they_sit(dtype, bad):
    """A diverged model's scores: before, NaN gave a finite AUROC in [0, 1] that depended on where the NaN sat
    (torch.sort's placement of NaN), and the run loop would have logged it as a result. Non-finite scores have
    no order: the AUROC is NaN, which the run loop ends as aborted ("non-finite eval")."""
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(200, generator=g).to(dtype)
    labels = torch.arange(200) % 3 == 0
    assert np.isfinite(binary_auroc(scores, labels))
    for where in (0, 57, 199):
        poisoned = scores.clone()
        poisoned[where] = bad
        assert np.isnan(binary_auroc(poisoned, labels)), (where, binary_auroc(poisoned, labels))
    assert np.isnan(binary_auroc(torch.full((10,), bad, dtype=dtype), labels[:10]))


# -- configs and cadence -------------------------------------------------------------------------------
def test_flavours_keep_the_closed_optimizer_settings_and_rcp_points():
    for name, make in FLAVOURS.items():
        cfg = make()
        cfg.optim.check()
        assert cfg.train.global_batch_size % 8 == 0 or name == "debug"
    assert (dgxh100_1x8().train.global_batch_size, dgxh100_1x8().optim.base_lr) == (55296, 0.004)
    assert (dgxh100_8x8().train.global_batch_size, dgxh100_8x8().optim.base_lr) == (135168, 0.0034)
    assert debug().model.multi_hot_sizes == MULTI_HOT_SIZES and max(debug().model.table_rows) <= 1000
    bad = debug()
    bad.optim.warmup_steps = 10
    with pytest.raises(ValueError, match="warmup_steps"):
        bad.optim.check()


# 4,195,197,692 training samples (days 0..22): at GBS 55296, 75868 full steps (55296 * 75868 = 4,195,196,928,
# 764 left over) and an eval every 4,195,197,692 // 1,105,920 = 3793 steps (20 * 3793 = 75860: an 8-step tail);
# at GBS 135168, 31036 steps (135168 * 31036 = 4,195,074,048) and an eval every 1551 (20 * 1551 = 31020: 16 left).
@pytest.mark.parametrize("flavour,steps_per_epoch,steps_per_eval,first_fraction,twentieth_fraction", [
    (dgxh100_1x8, 75868, 3793, 0.049995, 0.999895),  # 3793 / 75868 = 0.0499947..., 75860 / 75868 = 0.9998945...
    (dgxh100_8x8, 31036, 1551, 0.049974, 0.999484),  # 1551 / 31036 = 0.0499742..., 31020 / 31036 = 0.9994844...
])
def test_real_eval_cadence_is_20_per_epoch_in_epoch_fractions(monkeypatch, flavour, steps_per_epoch, steps_per_eval,
                                                              first_fraction, twentieth_fraction):
    """The cadence DLRMBenchmark.__init__ derives from the config (the model, its sharding and optimizer
    stubbed out: the full-size tables are not built), against the hand-computed figures above."""
    from types import SimpleNamespace

    from models.dlrm_dcnv2 import benchmark

    monkeypatch.setattr(benchmark, "build_dlrm", lambda *args, **kwargs: torch.nn.Linear(1, 1, device="meta"))
    monkeypatch.setattr(benchmark, "parallelize", lambda model, *args, **kwargs: model)
    monkeypatch.setattr(benchmark, "dense_optimizer", lambda params, optim: None)
    cfg = flavour()
    assert cfg.data.train_samples == 4_195_197_692 and cfg.train.evals_per_epoch == 20
    ctx = SimpleNamespace(launch=SimpleNamespace(world_size=8, local_world_size=8, rank=0), layout=None,
                          device=torch.device("meta"), seed=0, run_dir="")
    bench = benchmark.DLRMBenchmark(cfg, ctx)
    gbs = cfg.train.global_batch_size
    assert (bench.steps_per_epoch, bench.steps_per_eval, bench.local_batch) == (steps_per_epoch, steps_per_eval,
                                                                                gbs // 8)
    blocks = bench.blocks()
    assert len(blocks) == 21  # 20 evals + the epoch's tail
    assert [b.steps for b in blocks] == [steps_per_eval] * 20 + [steps_per_epoch - 20 * steps_per_eval]
    fractions = [b.eval_metadata["epoch_num"] for b in blocks]
    assert (fractions[0], fractions[19], fractions[20]) == (first_fraction, twentieth_fraction, 1.0)
    assert all(abs(f - 0.05 * k) < 1e-3 for k, f in enumerate(fractions[:20], start=1))  # the reference's 0.05 steps
    assert blocks[1].start_metadata == {"samples_count": steps_per_eval * gbs}
