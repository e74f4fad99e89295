"""The GPT-3 initial checkpoint (Megatron zarr layout): every layout reads exactly its shards, bad input is named."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, spawn_ranks
from megatron.core.dist_checkpointing.mapping import ShardedTensor

from models.gpt3.config import debug, dgxh100_64x8
from models.gpt3.reference_checkpoint import (
    ReferenceCheckpointError,
    _Reader,
    adam_step,
    read_common,
    reference_key,
    reference_shapes,
    write_synthetic_reference_checkpoint,
)
from runtime.mcore.zarr_array import write_zarr

zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt3_reference_ckpt")
    write_synthetic_reference_checkpoint(debug().model, str(out), step=7, seed=3)
    return out


def _worker(ckpt, ranks, tp, pp, vpp):
    cmd = [sys.executable, "tests/models/gpt3_reference_worker.py", str(ckpt), str(tp), str(pp), str(vpp)]
    procs = spawn_ranks(ranks, cmd)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    return [p.returncode for p in procs], outs


@pytest.mark.parametrize("ranks,tp,pp,vpp", [(1, 1, 1, 1), (2, 2, 1, 1), (2, 1, 2, 2), (2, 1, 1, 1)],
                         ids=["single", "tp2", "pp2_interleaved", "dp2"])
def test_each_layout_loads_exactly_its_shards_and_moments(synthetic_checkpoint, ranks, tp, pp, vpp):
    codes, outs = _worker(synthetic_checkpoint, ranks, tp, pp, vpp)
    assert codes == [0] * ranks, "\n".join(o[-3000:] for o in outs)
    assert all(o.rstrip().endswith("step 7") for o in outs)
    counts = [int(o.split("checked ")[1].split()[0]) for o in outs]
    # 4 layers x 12 tensors + embeddings/positions/final norm, each with two moments, split over the
    # model-parallel ranks (every data-parallel replica checks all of them).
    expected_tensors = (4 * 12 + 4) * 3 + (3 if pp > 1 else 0)  # the last stage's tied output layer
    dp = ranks // (tp * pp)
    assert sum(counts) == expected_tensors * tp * dp
    arrays = [int(o.split("read ")[1].split()[0]) for o in outs]
    if dp > 1:  # the first replica reads, the other receives it by broadcast
        assert arrays[0] == 16 * 3 and arrays[1] == 0, outs


def test_a_read_error_on_the_reading_replica_stops_every_replica(synthetic_checkpoint, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(synthetic_checkpoint, ckpt)
    missing = ckpt / "optimizer.state.exp_avg_sq.language_model.encoder.layers.mlp.dense_4h_to_h.bias"
    shutil.rmtree(missing)
    codes, outs = _worker(ckpt, 2, 1, 1, 1)
    assert codes[0] != 0 and codes[1] != 0, outs
    assert f"{missing}: missing from the checkpoint" in outs[0]
    assert "the first data-parallel rank (global rank 0) could not read the checkpoint" in outs[1]


def test_175b_shapes_match_the_reference_and_the_parameter_count():
    m = dgxh100_64x8().model
    shapes = reference_shapes(m, vocab_rows=51200)
    # The README of the reference names this array and its shape (for the QKV projection).
    assert shapes["language_model.encoder.layers.self_attention.query_key_value.weight"] == (96, 36864, 12288)
    h, L = 12288, 96
    hand = L * (12 * h * h + 13 * h) + 51200 * h + 2048 * h + 2 * h
    assert sum(torch.Size(s).numel() for s in shapes.values()) == hand == 174_615_846_912


def test_megatron_core_keys_map_to_the_legacy_names():
    assert reference_key("decoder.layers.mlp.linear_fc1.layer_norm_weight") == \
        ("language_model.encoder.layers.post_attention_layernorm.weight", None)
    assert reference_key("optimizer.state.exp_avg_sq.decoder.layers.self_attention.linear_qkv.bias") == \
        ("optimizer.state.exp_avg_sq.language_model.encoder.layers.self_attention.query_key_value.bias", None)
    # fp32 master weights: the bf16 checkpoint's copy, else (fp32 checkpoint) the weights themselves
    assert reference_key("optimizer.state.fp32_param.embedding.word_embeddings.weight") == \
        ("optimizer.state.fp32_from_fp16.language_model.embedding.word_embeddings.weight",
         "language_model.embedding.word_embeddings.weight")
    assert reference_key("optimizer.state.param.decoder.final_layernorm.weight") == \
        ("optimizer.state.fp32_from_fp16.language_model.encoder.final_layernorm.weight",
         "language_model.encoder.final_layernorm.weight")  # the distributed optimizer's name for them
    with pytest.raises(ReferenceCheckpointError, match="no reference-checkpoint name for megatron-core key 'foo'"):
        reference_key("foo")


def _sharded(key, local, tp_rank, tp):
    return ShardedTensor.from_rank_offsets(key, local, (0, tp_rank, tp), replica_id=(0, 0, 0))


def test_embedding_rows_past_the_checkpoint_vocabulary_are_zero(tmp_path):
    rows = torch.arange(10 * 3, dtype=torch.float32).reshape(10, 3)
    write_zarr(str(tmp_path / "language_model.embedding.word_embeddings.weight"), rows, chunks=(4, 3))
    reader = _Reader(str(tmp_path))
    # The model pads to 16 rows over TP=2: rank 1 holds rows 8..15, of which the checkpoint has 8 and 9.
    got = reader.fill(_sharded("embedding.word_embeddings.weight", torch.empty(8, 3), 1, 2))
    assert torch.equal(got[:2], rows[8:10]) and torch.equal(got[2:], torch.zeros(6, 3))
    # A smaller padding than the checkpoint's drops the extra rows (rank 0 of 2 over 8 rows: rows 0..3).
    assert torch.equal(reader.fill(_sharded("embedding.word_embeddings.weight", torch.empty(4, 3), 0, 2)), rows[:4])


def test_shape_mismatch_and_missing_arrays_are_named(tmp_path):
    write_zarr(str(tmp_path / "language_model.embedding.position_embeddings.weight"), torch.zeros(8, 4))
    reader = _Reader(str(tmp_path))
    with pytest.raises(ReferenceCheckpointError, match=r"global shape \(8, 4\), the model expects \(8, 6\)"):
        reader.fill(_sharded("embedding.position_embeddings.weight", torch.empty(8, 6), 0, 1))
    with pytest.raises(ReferenceCheckpointError,
                       match=f"{tmp_path}/language_model.encoder.final_layernorm.bias: missing from the checkpoint"):
        reader.fill(_sharded("decoder.final_layernorm.bias", torch.empty(4), 0, 1))


def test_common_pt_is_read_weights_only_and_checked(tmp_path, synthetic_checkpoint):
    assert adam_step(read_common(str(synthetic_checkpoint))) == 7
    # The reference's common_bf16.json turned into common.pt: the Adam step lives in the optimizer's groups.
    reference = {"global_step": 4000, "epoch": 0,
                 "optimizer_states": [{"optimizer": {"param_groups": [{"lr": 2e-5, "step": 4000}]}}]}
    assert adam_step(reference) == 4000 and adam_step({"global_step": 12}) == 12
    with pytest.raises(ReferenceCheckpointError, match="no common.pt"):
        read_common(str(tmp_path))
    (tmp_path / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
    with pytest.raises(ReferenceCheckpointError,
                       match="sharded_backend 'torch_dist', the reference checkpoint is 'zarr'"):
        read_common(str(tmp_path))


def test_common_json_converter_writes_a_weights_only_common_pt(tmp_path):
    src = tmp_path / "common_fp32.json"
    src.write_text(json.dumps({"global_step": 4000, "optimizer_states": [{"optimizer": {"param_groups": [
        {"step": 4000, "betas": [0.9, 0.95]}]}}]}))
    r = subprocess.run([sys.executable, "-m", "models.gpt3.prepare.common_json_to_pt", str(src), str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert adam_step(torch.load(tmp_path / "common.pt", weights_only=True)) == 4000


def test_verify_checkpoint_passes_a_complete_one_and_names_each_problem(tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    write_synthetic_reference_checkpoint(debug().model, str(ckpt), step=1, seed=0)
    cmd = [sys.executable, "-m", "models.gpt3.prepare.verify_checkpoint", str(ckpt), "--flavour", "debug"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), r.stdout + r.stderr
    chunk = ckpt / "optimizer.state.exp_avg.language_model.encoder.layers.mlp.dense_h_to_4h.weight" / "2.1.0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    shutil.rmtree(ckpt / "optimizer.state.exp_avg_sq.language_model.encoder.final_layernorm.bias")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert lines[-1].endswith("2 problems"), r.stdout
    assert f"{chunk}: 100 bytes, expected 32768" in lines
    assert any("exp_avg_sq.language_model.encoder.final_layernorm.bias: no zarr array here" in ln for ln in lines)


# -- the loaded model computes what the checkpoint means ------------------------------------------------------

def _legacy_megatron_log_ppl(ckpt, data_dir, m, qkv_order="head_major"):
    """Validation log-perplexity of the checkpoint by a plain-torch GPT written from Megatron-LM's legacy
    semantics (pre-LN, learned positions, fused QKV rows ordered (head, q|k|v, head_dim), GeLU, tied
    output layer), reading the arrays with the zarr package: independent of megatron-core and our reader."""
    import numpy as np

    from models.gpt3.config import debug as debug_cfg
    from pipelines.megatron_data.dataset import ValidationSamples
    from pipelines.megatron_data.indexed import IndexedDataset

    def arr(name):
        return torch.from_numpy(np.asarray(zarr.open(str(ckpt / name), mode="r")[...])).double()

    L, h, nh = m.num_layers, m.hidden_size, m.num_attention_heads
    hn = h // nh
    layer = {k: arr("language_model.encoder.layers." + k) for k in (
        "input_layernorm.weight", "input_layernorm.bias", "self_attention.query_key_value.weight",
        "self_attention.query_key_value.bias", "self_attention.dense.weight", "self_attention.dense.bias",
        "post_attention_layernorm.weight", "post_attention_layernorm.bias", "mlp.dense_h_to_4h.weight",
        "mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias")}
    wte = arr("language_model.embedding.word_embeddings.weight")
    wpe = arr("language_model.embedding.position_embeddings.weight")
    lnf = arr("language_model.encoder.final_layernorm.weight"), arr("language_model.encoder.final_layernorm.bias")
    ln = lambda x, w, b: torch.nn.functional.layer_norm(x, (h,), w, b, eps=m.layernorm_epsilon)  # noqa: E731

    valid = ValidationSamples(IndexedDataset(str(data_dir / debug_cfg().data.valid_prefix)), m.seq_length)
    tokens = torch.from_numpy(np.stack([valid[i]["tokens"] for i in range(len(valid))])).long()
    labels = torch.from_numpy(np.stack([valid[i]["labels"] for i in range(len(valid))])).long()
    b, s = tokens.shape
    x = wte[tokens] + wpe[:s]
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)
    for i in range(L):
        y = ln(x, layer["input_layernorm.weight"][i], layer["input_layernorm.bias"][i])
        qkv = y @ layer["self_attention.query_key_value.weight"][i].T + layer["self_attention.query_key_value.bias"][i]
        if qkv_order == "head_major":
            q, k, v = qkv.view(b, s, nh, 3, hn).unbind(3)
        else:  # [q of all heads | k | v]: what a wrong reading of the fused rows would assume
            q, k, v = qkv.view(b, s, 3, nh, hn).unbind(2)
        scores = torch.einsum("bqnd,bknd->bnqk", q, k) / hn ** 0.5
        att = torch.einsum("bnqk,bknd->bqnd", scores.masked_fill(causal, float("-inf")).softmax(-1), v)
        x = x + att.reshape(b, s, h) @ layer["self_attention.dense.weight"][i].T + layer["self_attention.dense.bias"][i]
        y = ln(x, layer["post_attention_layernorm.weight"][i], layer["post_attention_layernorm.bias"][i])
        y = torch.nn.functional.gelu(y @ layer["mlp.dense_h_to_4h.weight"][i].T + layer["mlp.dense_h_to_4h.bias"][i])
        x = x + y @ layer["mlp.dense_4h_to_h.weight"][i].T + layer["mlp.dense_4h_to_h.bias"][i]
    logits = ln(x, *lnf) @ wte.T
    mask = labels >= 0
    nll = torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum")
    return float(nll / mask.sum())


@pytest.fixture(scope="module")
def trained_looking_checkpoint(tmp_path_factory):
    """Weights with std 0.3 instead of 0.02: attention far from uniform, so any misreading shows."""
    from dataclasses import replace

    out = tmp_path_factory.mktemp("gpt3_std03_ckpt")
    write_synthetic_reference_checkpoint(replace(debug().model, init_method_std=0.3), str(out), step=3, seed=8)
    return out


@pytest.mark.parametrize("ranks,layout", [(2, ["parallel.tp=2"]), (2, ["parallel.pp=2", "train.virtual_pp=2"])],
                         ids=["tp2", "pp2_interleaved"])
def test_megatron_evaluates_the_checkpoint_as_legacy_megatron_would(gpt3_debug_data, trained_looking_checkpoint,
                                                                   tmp_path, ranks, layout):
    from conftest import train_command

    m = debug().model
    expected = _legacy_megatron_log_ppl(trained_looking_checkpoint, gpt3_debug_data, m)
    wrong = _legacy_megatron_log_ppl(trained_looking_checkpoint, gpt3_debug_data, m, qkv_order="qkv_major")
    assert abs(wrong - expected) > 1e-3 * expected  # 100x the tolerance below: the readings are told apart
    cmd = train_command("gpt3", gpt3_debug_data, tmp_path, "--eval-only",
                        f"data.init_checkpoint={trained_looking_checkpoint}", f"data.index_cache_dir={tmp_path}",
                        *layout)
    procs = spawn_ranks(ranks, cmd)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * ranks, "\n".join(o[-3000:] for o in outs)
    value = float(next(line for line in outs[0].splitlines()
                       if line.startswith("EVAL,gpt3,log_perplexity,")).split(",")[-1])
    assert value == pytest.approx(expected, rel=1e-5), (value, expected, wrong)
    assert not (tmp_path / "mlperf_log.txt").exists()  # an evaluation is not a run
