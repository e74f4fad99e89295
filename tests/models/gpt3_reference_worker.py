"""One rank of the reference-checkpoint check (started by test_gpt3_reference_checkpoint.py via spawn_ranks).

    python tests/models/gpt3_reference_worker.py CKPT_DIR TP PP VPP

Builds the debug GPT-3 at the layout, loads CKPT_DIR through models/gpt3/reference_checkpoint.py, then checks
every parameter shard and both Adam moments against the zarr package's read of the arrays, sliced by a rule
written out here by hand (stacked layer = megatron's layer_number - 1, TP shard = chunk of the parameter's
partition_dim), independent of megatron's sharded_state_dict. Prints "read A arrays; checked N tensors, step S".
"""

import os
import sys

import torch
import torch.distributed as dist
import zarr

from models.gpt3.config import debug
from models.gpt3.model import transformer_config
from models.gpt3.parallelize import build_model_chunks
from models.gpt3.reference_checkpoint import load_reference_checkpoint
from runtime.mcore.parallelize import build_optimizer, init_megatron, wrap_ddp
from runtime.parallel import ParallelLayout

LAYER_NAMES = {"input_layernorm": "input_layernorm", "pre_mlp_layernorm": "post_attention_layernorm",
               "self_attention.linear_qkv": "self_attention.query_key_value",
               "self_attention.linear_proj": "self_attention.dense",
               "mlp.linear_fc1": "mlp.dense_h_to_4h", "mlp.linear_fc2": "mlp.dense_4h_to_h"}
OTHER_NAMES = {"embedding.word_embeddings.weight": "language_model.embedding.word_embeddings.weight",
               "output_layer.weight": "language_model.embedding.word_embeddings.weight",  # tied
               "embedding.position_embeddings.weight": "language_model.embedding.position_embeddings.weight",
               "decoder.final_layernorm.weight": "language_model.encoder.final_layernorm.weight",
               "decoder.final_layernorm.bias": "language_model.encoder.final_layernorm.bias"}


def expected(ckpt, prefix, model, name, p, tp, tp_rank):
    if name.startswith("decoder.layers."):
        _, _, index, rest = name.split(".", 3)
        module, leaf = rest.rsplit(".", 1)
        layer = model.decoder.layers[int(index)].layer_number - 1
        full = torch.from_numpy(zarr.open(os.path.join(ckpt, f"{prefix}language_model.encoder.layers."
                                                                f"{LAYER_NAMES[module]}.{leaf}"), mode="r")[layer])
    else:
        full = torch.from_numpy(zarr.open(os.path.join(ckpt, prefix + OTHER_NAMES[name]), mode="r")[:])
    if getattr(p, "tensor_model_parallel", False):
        full = full.chunk(tp, dim=p.partition_dim)[tp_rank]
    return full


def main(ckpt, tp, pp, vpp):
    dist.init_process_group("gloo")
    layout = ParallelLayout(world_size=dist.get_world_size(), rank=dist.get_rank(), tp=tp, pp=pp)
    cfg = debug()
    cfg.train.virtual_pp = vpp
    init_megatron(layout, vpp, seed=0)
    config = transformer_config(cfg.model, cfg.train, tp=tp, pp=pp)
    chunks = wrap_ddp(build_model_chunks(cfg.model, config, pp_rank=layout.coords()["pp"], pp=pp), config,
                      distributed_optimizer=False, grad_reduce_in_fp32=True)
    optimizer = build_optimizer(chunks, cfg.optim, config, distributed_optimizer=False)
    report = load_reference_checkpoint(ckpt, chunks, optimizer)
    step = report.step
    tp_rank, checked = layout.coords()["tp"], 0
    for chunk in chunks:
        for name, p in chunk.module.named_parameters():
            state = optimizer.inner.state[p]
            for prefix, tensor in (("", p), ("optimizer.state.exp_avg.", state["exp_avg"]),
                                   ("optimizer.state.exp_avg_sq.", state["exp_avg_sq"])):
                want = expected(ckpt, prefix, chunk.module, name, p, tp, tp_rank)
                if not torch.equal(tensor.detach(), want):
                    raise SystemExit(f"rank {dist.get_rank()}: {prefix}{name} differs from the checkpoint")
                checked += 1
            if int(state["step"]) != step:
                raise SystemExit(f"rank {dist.get_rank()}: Adam step {state['step']} for {name}, checkpoint {step}")
    print(f"read {report.arrays_read} arrays; checked {checked} tensors, step {step}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:5]))
