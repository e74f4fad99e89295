"""Outside BERT checkpoints in and out: the TF reference's variable names and HF `BertForPreTraining`.

MLPerf phase 2 starts from the phase-1 checkpoint `model.ckpt-28252`, a TensorFlow checkpoint. Reading
that format needs TensorFlow, so it is converted once, offline, to an .npz of numpy arrays keyed by the
TF variable names (one line, wherever TensorFlow is installed):

    python -c "import numpy as np, tensorflow as tf; c='model.ckpt-28252'; r=tf.train.load_checkpoint(c); \
np.savez('model.ckpt-28252.npz', **{n: r.get_tensor(n) for n, _ in tf.train.list_variables(c)})"

`load_checkpoint` then reads it (np.load, no pickle) and maps it to this model's names:

    TF                                            HF BertForPreTraining                   ours
    bert/embeddings/word_embeddings               bert.embeddings.word_embeddings.weight  embeddings.word.weight
    bert/embeddings/LayerNorm/gamma|beta          bert.embeddings.LayerNorm.weight|bias   embeddings.norm.*
    bert/encoder/layer_i/attention/self/          ...layer.i.attention.self.query.weight  layers.i.qkv.weight
        query/kernel^T                                                                    rows [0, H)
        (key, value: rows [H, 2H), [2H, 3H); biases alike)
    .../attention/output/dense/kernel^T |         ...attention.output.dense | LayerNorm   layers.i.attention_output |
        LayerNorm                                                                         attention_norm
    .../intermediate/dense/kernel^T, bias         ...intermediate.dense.weight, bias      layers.i.intermediate.weight,
                                                                                          intermediate_bias
    .../output/dense/kernel^T | LayerNorm         ...output.dense | output.LayerNorm      layers.i.output | output_norm
    bert/pooler/dense/kernel^T                    bert.pooler.dense.weight                heads.pooler.weight
    cls/predictions/transform/dense | LayerNorm   cls.predictions.transform.dense | ...   heads.transform |
                                                                                          transform_norm
    cls/predictions/output_bias                   cls.predictions.bias                    heads.decoder_bias
    cls/seq_relationship/output_weights           cls.seq_relationship.weight, bias       heads.nsp.weight, bias
        (no ^T), _bias

TF dense kernels are [in, out] and are transposed; the MLM decoder is tied to the word embeddings in
all three. Optimizer variables (LAMB's slots `<var>/LAMB`, `<var>/LAMB_1` and `beta1_power`, `beta2_power`;
AdamW's `<var>/adam_m`, `<var>/adam_v`), global_step and loss-scale variables are skipped, as the reference's
loader restores only the model's variables; any other variable that is not BERT's is an error.
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch
from torch import nn

_LAYER_PARTS = {  # ours (under layers.i.) -> HF (under bert.encoder.layer.i.)
    "attention_output.weight": "attention.output.dense.weight",
    "attention_output.bias": "attention.output.dense.bias",
    "attention_norm.weight": "attention.output.LayerNorm.weight",
    "attention_norm.bias": "attention.output.LayerNorm.bias",
    "intermediate.weight": "intermediate.dense.weight",
    "intermediate_bias": "intermediate.dense.bias",
    "output.weight": "output.dense.weight",
    "output.bias": "output.dense.bias",
    "output_norm.weight": "output.LayerNorm.weight",
    "output_norm.bias": "output.LayerNorm.bias",
}
_OTHER = {  # ours -> HF
    "embeddings.word.weight": "bert.embeddings.word_embeddings.weight",
    "embeddings.position.weight": "bert.embeddings.position_embeddings.weight",
    "embeddings.token_type.weight": "bert.embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "bert.embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "bert.embeddings.LayerNorm.bias",
    "heads.transform.weight": "cls.predictions.transform.dense.weight",
    "heads.transform.bias": "cls.predictions.transform.dense.bias",
    "heads.transform_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "heads.transform_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "heads.decoder_bias": "cls.predictions.bias",
    "heads.pooler.weight": "bert.pooler.dense.weight",
    "heads.pooler.bias": "bert.pooler.dense.bias",
    "heads.nsp.weight": "cls.seq_relationship.weight",
    "heads.nsp.bias": "cls.seq_relationship.bias",
}
_QKV = ("query", "key", "value")
# HF keys that duplicate a tied tensor: accepted on input, written on output.
_HF_TIED = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias"}
# Non-model TF variables, skipped as the reference's loader skips them (it restores only the model's
# variables): optimizer slots (`<var>/LAMB` and `<var>/LAMB_1`, the m and v slots TF names after the
# reference's LAMB optimizer, as in model.ckpt-28252; `<var>/adam_m|adam_v` of google-research/bert's AdamW),
# the optimizer's non-slot variables (`beta1_power`, `beta2_power`), step counters, loss scaling. Any other
# name that is not a BERT variable is an error.
_TF_SKIP = re.compile(r"(/adam_[mv]|/lamb_[mv]|/LAMB(_\d+)?|/Momentum|/ExponentialMovingAverage)$|"
                      r"^(global_step|current_loss_scale|good_steps|bad_steps|loss_scale)|^beta[12]_power(_\d+)?$")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model; the message names the file and the keys."""


def _num_layers(keys, pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    if found != set(range(len(found))):
        raise CheckpointError(f"encoder layers {sorted(found)} are not 0..n-1")
    return len(found)


def from_hf(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF BertForPreTraining state dict (keys with or without the `bert.` prefix of BertModel) -> ours."""
    hf = {(k if k.startswith(("bert.", "cls.")) else "bert." + k): v for k, v in hf_state.items()}
    for tied, source in _HF_TIED.items():
        if tied in hf and source in hf and not torch.equal(hf[tied], hf[source]):
            raise CheckpointError(f"{tied} differs from {source}: this model ties them")
    num_layers = _num_layers(hf, r"bert\.encoder\.layer\.(\d+)\.")
    wanted = dict(_OTHER)
    ours = {}
    for i in range(num_layers):
        prefix = f"bert.encoder.layer.{i}."
        for part in ("weight", "bias"):
            names = [f"{prefix}attention.self.{n}.{part}" for n in _QKV]
            missing = [n for n in names if n not in hf]
            if missing:
                raise CheckpointError(f"HF state dict lacks {missing}")
            ours[f"layers.{i}.qkv.{part}"] = torch.cat([hf[n] for n in names], 0)
        wanted.update({f"layers.{i}.{o}": prefix + t for o, t in _LAYER_PARTS.items()})
    missing = [t for t in wanted.values() if t not in hf]
    if missing:
        raise CheckpointError(f"HF state dict lacks {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    ours.update({o: hf[t] for o, t in wanted.items()})
    known = set(wanted.values()) | set(_HF_TIED) | {f"bert.encoder.layer.{i}.attention.self.{n}.{p}"
                                                     for i in range(num_layers) for n in _QKV
                                                     for p in ("weight", "bias")}
    extra = sorted(k for k in hf if k not in known and not k.endswith("position_ids"))
    if extra:
        raise CheckpointError(f"HF state dict has keys this model does not: {extra[:8]}")
    return ours


def to_hf(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> HF BertForPreTraining, tied decoder entries included."""
    num_layers = _num_layers(ours, r"layers\.(\d+)\.")
    hf = {t: ours[o] for o, t in _OTHER.items()}
    for i in range(num_layers):
        prefix = f"bert.encoder.layer.{i}."
        for part in ("weight", "bias"):
            for name, chunk in zip(_QKV, ours[f"layers.{i}.qkv.{part}"].chunk(3, 0)):
                hf[f"{prefix}attention.self.{name}.{part}"] = chunk.clone()
        hf.update({prefix + t: ours[f"layers.{i}.{o}"] for o, t in _LAYER_PARTS.items()})
    for tied, source in _HF_TIED.items():
        hf[tied] = hf[source]
    return hf


def tf_name_to_hf(name: str) -> tuple[str, bool]:
    """(HF key, transpose?) of a TF variable name of the reference's BERT."""
    special = {"cls/predictions/output_bias": "cls.predictions.bias",
               "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
               "cls/seq_relationship/output_bias": "cls.seq_relationship.bias"}
    if name in special:
        return special[name], False
    parts = re.sub(r"layer_(\d+)", r"layer/\1", name).split("/")
    leaf = parts[-1]
    if leaf.endswith("_embeddings"):
        return ".".join(parts) + ".weight", False
    renamed = {"gamma": "weight", "beta": "bias", "kernel": "weight", "bias": "bias"}
    if leaf not in renamed:
        raise CheckpointError(f"TF variable {name!r} is not part of BERT")
    return ".".join(parts[:-1] + [renamed[leaf]]), leaf == "kernel"


def from_tf(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """TF variable name -> array (the reference's checkpoint, converted to .npz) -> ours."""
    hf = {}
    for name, array in arrays.items():
        if _TF_SKIP.search(name):
            continue
        key, transpose = tf_name_to_hf(name)
        tensor = torch.from_numpy(np.ascontiguousarray(array.T if transpose else array)).float()
        hf[key] = tensor
    return from_hf(hf)


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Our state dict from a TF-names .npz, an HF .safetensors / .bin, or our own .pt (model state)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"init checkpoint {path} does not exist")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                return from_tf({name: npz[name] for name in npz.files})
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return from_hf(load_file(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
        return state if any(k.startswith("layers.") for k in state) else from_hf(state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy `state` into model, every parameter required; only FP8 bookkeeping (TE's _extra_state, the
    torch FP8 layers' amax histories and scales) may be absent."""
    own = model.state_dict()
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    if shapes:
        raise CheckpointError(f"{source}: shape mismatch {shapes[:4]}")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(("_extra_state", "amax_history", ".scale"))]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{source}: missing {missing[:8]}, unexpected {result.unexpected_keys[:8]}")
