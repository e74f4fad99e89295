"""The HF checkpoint reader's TP shards against slices written out by hand, its errors on bad directories, and
the run's own checkpoints holding the LoRA adapters and their Adam state only."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import train_command

from models.llama2_70b_lora.config import debug
from models.llama2_70b_lora.hf_checkpoint import (
    CheckpointError,
    SafetensorsDirectory,
    check_config_matches,
    hf_config,
    load_hf_checkpoint,
    megatron_tensor,
    read_hf_config,
    shape_of,
    write_hf_checkpoint,
)
from models.llama2_70b_lora.synthetic_base import synthetic_base_tensors


@pytest.fixture
def base(tmp_path):
    m = debug().model
    tensors = synthetic_base_tensors(m, seed=3)
    write_hf_checkpoint(str(tmp_path / "sep"), tensors, hf_config(m), shards=2)
    write_hf_checkpoint(str(tmp_path / "fused"), tensors, hf_config(m), shards=3, fused_qkv=True)
    return m, tensors, tmp_path


@pytest.mark.parametrize("layout", ["sep", "fused"])
@pytest.mark.parametrize("tp", [1, 2])
def test_tp_shards_are_the_hand_sliced_hf_tensors(base, layout, tp):
    m, t, root = base
    ckpt = SafetensorsDirectory(str(root / layout))
    s = shape_of(read_hf_config(str(root / layout)))
    d, per = m.hidden_size // m.num_attention_heads, m.num_attention_heads // m.num_query_groups
    q, k, v = (t[f"model.layers.1.self_attn.{x}_proj.weight"] for x in "qkv")
    groups = [torch.cat([q[g * per * d:(g + 1) * per * d], k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]])
              for g in range(m.num_query_groups)]
    ffn = m.ffn_hidden_size // tp
    for rank in range(tp):
        def got(name, rank=rank):
            return megatron_tensor(ckpt, name, s, tp, rank)
        gs = m.num_query_groups // tp
        assert torch.equal(got("decoder.layers.1.self_attention.linear_qkv.weight"),
                           torch.cat(groups[rank * gs:(rank + 1) * gs]))
        gate, up = t["model.layers.1.mlp.gate_proj.weight"], t["model.layers.1.mlp.up_proj.weight"]
        assert torch.equal(got("decoder.layers.1.mlp.linear_fc1.weight"),
                           torch.cat([gate[rank * ffn:(rank + 1) * ffn], up[rank * ffn:(rank + 1) * ffn]]))
        down = t["model.layers.1.mlp.down_proj.weight"]
        assert torch.equal(got("decoder.layers.1.mlp.linear_fc2.weight"), down[:, rank * ffn:(rank + 1) * ffn])
        o = t["model.layers.1.self_attn.o_proj.weight"]
        h = m.hidden_size // tp
        assert torch.equal(got("decoder.layers.1.self_attention.linear_proj.weight"), o[:, rank * h:(rank + 1) * h])
        vocab = m.vocab_size // tp
        assert torch.equal(got("output_layer.weight"), t["lm_head.weight"][rank * vocab:(rank + 1) * vocab])
        assert torch.equal(got("embedding.word_embeddings.weight"),
                           t["model.embed_tokens.weight"][rank * vocab:(rank + 1) * vocab])
        for name in ("decoder.layers.0.pre_mlp_layernorm.weight", "decoder.layers.0.mlp.linear_fc1.layer_norm_weight"):
            assert torch.equal(got(name), t["model.layers.0.post_attention_layernorm.weight"])  # local / TE spec


def test_bad_directories_are_named(base):
    m, t, root = base
    with pytest.raises(CheckpointError, match=r"nowhere/config.json: missing"):
        read_hf_config(str(root / "nowhere"))
    cfg = hf_config(m)
    with pytest.raises(CheckpointError, match=r"num_key_value_heads 4 \(config wants 2\)"):
        check_config_matches(dict(cfg, num_key_value_heads=4), m, "x")
    with pytest.raises(CheckpointError, match=r"RoPE scaling"):
        check_config_matches(dict(cfg, rope_scaling={"rope_type": "llama3", "factor": 8.0}), m, "x")
    # a tensor missing from the index, a shape the config does not give
    bad = dict(t)
    del bad["model.layers.1.mlp.up_proj.weight"]
    bad["model.layers.0.mlp.down_proj.weight"] = bad["model.layers.0.mlp.down_proj.weight"][:, :-1]
    write_hf_checkpoint(str(root / "bad"), bad, cfg)
    ckpt, s = SafetensorsDirectory(str(root / "bad")), shape_of(cfg)
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: no tensor 'model.layers.1.mlp.up_proj"):
        megatron_tensor(ckpt, "decoder.layers.1.mlp.linear_fc1.weight", s, 1, 0)
    with pytest.raises(CheckpointError, match=r"model-0000\d-of-00002.safetensors: model.layers.0.mlp.down_proj.weight "
                                              r"has shape \(64, 127\), the config gives \(64, 128\)"):
        megatron_tensor(ckpt, "decoder.layers.0.mlp.linear_fc2.weight", s, 1, 0)
    # a shard the index names but that is gone, and a truncated one
    index = json.loads((root / "sep" / "model.safetensors.index.json").read_text())
    shard = root / "sep" / index["weight_map"]["lm_head.weight"]
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"not a readable safetensors file"):
        megatron_tensor(SafetensorsDirectory(str(root / "sep")), "output_layer.weight", s, 1, 0)
    shard.unlink()
    with pytest.raises(CheckpointError, match=r"missing \(named by the index for 'lm_head.weight'\)"):
        megatron_tensor(SafetensorsDirectory(str(root / "sep")), "output_layer.weight", s, 1, 0)


def test_loading_into_a_different_model_config_fails_before_reading(base):
    m, _, root = base
    from dataclasses import replace

    with pytest.raises(CheckpointError, match=r"hidden_size 64 \(config wants 128\)"):
        load_hf_checkpoint(str(root / "fused"), torch.nn.Linear(1, 1), replace(m, hidden_size=128), tp=1, tp_rank=0)


def test_run_checkpoints_hold_only_the_adapters(debug_data, tmp_path):
    import subprocess

    from torch.distributed.checkpoint import FileSystemReader

    from runtime import checkpoint

    ck = tmp_path / "ck"
    r = subprocess.run(train_command("llama2_70b_lora", debug_data("llama2_70b_lora"), tmp_path / "run", "--seed", "1",
                                     "run.max_steps=2", f"run.checkpoint_dir={ck}"), capture_output=True, text=True)
    assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-3000:]
    meta = FileSystemReader(checkpoint.latest_step_dir(str(ck))).read_metadata().state_dict_metadata
    m = debug().model
    h, r = m.hidden_size, m.lora_rank
    qkv = (m.num_attention_heads + 2 * m.num_query_groups) * h // m.num_attention_heads
    # megatron stacks the layers' tensors: [layers, ...] per adapter matrix, and Adam's two moments of each
    adapters = {"linear_qkv.adapter.lora_a": (r, h), "linear_qkv.adapter.lora_b": (qkv, r),
                "linear_proj.adapter.lora_a": (r, h), "linear_proj.adapter.lora_b": (h, r)}
    expected = {}
    for name, shape in adapters.items():
        key = f"decoder.layers.self_attention.{name}"
        for prefix in ("", "optimizer.state.exp_avg.", "optimizer.state.exp_avg_sq."):
            expected[prefix + key] = (m.num_layers, *shape)
    assert {k: tuple(v.size) for k, v in meta.items() if hasattr(v, "size")} == expected


def test_fuse_qkv_round_trip_gives_the_same_shards(base):
    from models.llama2_70b_lora.prepare.fuse_qkv import fuse_qkv

    m, t, root = base
    assert fuse_qkv(str(root / "sep"), str(root / "refused"), layers_per_shard=1) == 1 + m.num_layers
    index = json.loads((root / "refused" / "model.safetensors.index.json").read_text())
    assert "model.layers.0.self_attn.qkv_proj.weight" in index["weight_map"]
    assert not [n for n in index["weight_map"] if n.endswith((".q_proj.weight", ".k_proj.weight", ".v_proj.weight"))]
    s = shape_of(read_hf_config(str(root / "refused")))
    a, b = SafetensorsDirectory(str(root / "sep")), SafetensorsDirectory(str(root / "refused"))
    names = ["embedding.word_embeddings.weight", "output_layer.weight", "decoder.final_layernorm.weight"] + [
        f"decoder.layers.{i}.{x}" for i in range(m.num_layers) for x in
        ("input_layernorm.weight", "self_attention.linear_qkv.weight", "self_attention.linear_proj.weight",
         "pre_mlp_layernorm.weight", "mlp.linear_fc1.weight", "mlp.linear_fc2.weight")]
    for rank in range(2):
        for name in names:
            assert torch.equal(megatron_tensor(a, name, s, 2, rank), megatron_tensor(b, name, s, 2, rank)), name
