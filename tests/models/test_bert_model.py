"""BERT against HF BertForPreTraining (built from config, no download), the TF-checkpoint adapter, and
packed against unpacked batches."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from models.bert.model import BertModelConfig, build_bert, parameter_count, pretraining_loss  # noqa: E402
from models.bert.state_dict_adapter import CheckpointError, from_hf, load_checkpoint, load_into, to_hf  # noqa: E402
from pipelines.bert.packing import build_batch, random_sequences  # noqa: E402

TINY = BertModelConfig(vocab_size=97, hidden_size=48, num_layers=2, num_heads=4, intermediate_size=80,
                       max_position_embeddings=64)


def hf_config(cfg: BertModelConfig, **extra):
    return transformers.BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                                   num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                                   intermediate_size=cfg.intermediate_size,
                                   max_position_embeddings=cfg.max_position_embeddings,
                                   type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps,
                                   hidden_act="gelu", attn_implementation="eager", **extra)


@pytest.fixture(scope="module")
def hf_model():
    """A tiny HF BertForPreTraining with non-trivial LayerNorms and biases (the init leaves them 1 and 0)."""
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(hf_config(TINY)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if "LayerNorm.weight" in name else 0.0) + 0.1 * torch.randn(p.shape, generator=generator))
    return model


def test_bert_large_has_the_reference_shapes():
    with torch.device("meta"):
        ours = build_bert(BertModelConfig())
        theirs = transformers.BertForPreTraining(hf_config(BertModelConfig()))
    mapped = {k: tuple(v.shape) for k, v in to_hf(ours.state_dict()).items()}
    expected = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert mapped == expected
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == parameter_count(BertModelConfig()) == 336_226_108


def _hf_logits(hf_model, sequences, T):
    """HF's logits at the masked positions and NSP logits, one sequence per padded row."""
    ids = torch.zeros(len(sequences), T, dtype=torch.long)
    segments, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (tokens, b_start, *_rest) in enumerate(sequences):
        ids[i, :len(tokens)] = torch.as_tensor(tokens)
        segments[i, b_start:len(tokens)] = 1
        mask[i, :len(tokens)] = 1
    with torch.no_grad():
        out = hf_model(input_ids=ids, token_type_ids=segments, attention_mask=mask)
    mlm = torch.cat([out.prediction_logits[i, torch.as_tensor(s[2], dtype=torch.long)]
                     for i, s in enumerate(sequences)])
    return mlm, out.seq_relationship_logits


@pytest.mark.parametrize("max_per_row", [1, 3])
def test_same_mlm_and_nsp_logits_as_hf(hf_model, max_per_row):
    ours = build_bert(TINY).eval()
    load_into(ours, from_hf(hf_model.state_dict()), "hf")
    sequences = random_sequences(np.random.default_rng(2), 5, TINY.vocab_size, 20, 6)
    batch = build_batch(sequences, 64, 6, max_per_row=max_per_row)
    assert batch.num_rows == (5 if max_per_row == 1 else 2)
    with torch.no_grad():
        mlm, nsp = ours(**batch.model_inputs())
    expected_mlm, expected_nsp = _hf_logits(hf_model, sequences, 64)
    torch.testing.assert_close(mlm, expected_mlm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nsp, expected_nsp, rtol=1e-5, atol=1e-5)


def test_hf_round_trip_and_checkpoint_files(hf_model, tmp_path):
    ours = build_bert(TINY)
    state = ours.state_dict()
    back = from_hf(to_hf(state))
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())
    fresh = transformers.BertForPreTraining(hf_config(TINY))
    fresh.load_state_dict(to_hf(state), strict=True)
    from safetensors.torch import save_file

    expected = from_hf(hf_model.state_dict())
    save_file({k: v.clone().contiguous() for k, v in hf_model.state_dict().items()}, tmp_path / "hf.safetensors")
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    torch.save({"model": expected}, tmp_path / "ours.pt")
    for name in ("hf.safetensors", "pytorch_model.bin", "ours.pt"):
        loaded = load_checkpoint(str(tmp_path / name))
        assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], v) for k, v in expected.items()), name
    with pytest.raises(CheckpointError, match="lacks"):
        from_hf({k: v for k, v in hf_model.state_dict().items() if "layer.1.output.dense" not in k})


def _tf_variables(hf_state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The reference's TF variable names, written out here from google-research/bert's modeling.py
    conventions (dense kernels [in, out], LayerNorm gamma/beta, cls/... heads), plus the optimizer
    slots and counters a real checkpoint also holds."""
    tf = {}
    for key, value in hf_state.items():
        if key.startswith("cls.predictions.decoder"):
            continue  # tied: TF has only the word embeddings and output_bias
        array = value.numpy().copy()
        name = key.replace("bert.encoder.layer.", "bert/encoder/layer_").replace(".", "/")
        name = name.replace("LayerNorm/weight", "LayerNorm/gamma").replace("LayerNorm/bias", "LayerNorm/beta")
        if name.endswith("_embeddings/weight"):
            name = name[:-len("/weight")]
        elif name == "cls/predictions/bias":
            name = "cls/predictions/output_bias"
        elif name.startswith("cls/seq_relationship"):
            name = name.replace("/weight", "/output_weights").replace("/bias", "/output_bias")
        elif name.endswith("/weight") and "LayerNorm" not in name:
            name, array = name[:-len("/weight")] + "/kernel", array.T.copy()
        tf[name] = array
    tf["global_step"] = np.array(28252, np.int64)
    tf["bert/pooler/dense/kernel/adam_m"] = np.zeros_like(tf["bert/pooler/dense/kernel"])
    tf["bert/encoder/layer_0/output/dense/bias/adam_v"] = np.zeros_like(tf["bert/encoder/layer_0/output/dense/bias"])
    return tf


def test_tf_checkpoint_npz_gives_the_hf_logits(hf_model, tmp_path):
    path = tmp_path / "model.ckpt-28252.npz"
    np.savez(path, **_tf_variables(hf_model.state_dict()))  # names with "/", as the documented one-liner
    ours = build_bert(TINY).eval()
    load_into(ours, load_checkpoint(str(path)), str(path))
    sequences = random_sequences(np.random.default_rng(3), 3, TINY.vocab_size, 30, 6)
    batch = build_batch(sequences, 64, 6, max_per_row=2)
    with torch.no_grad():
        mlm, nsp = ours(**batch.model_inputs())
    expected_mlm, expected_nsp = _hf_logits(hf_model, sequences, 64)
    torch.testing.assert_close(mlm, expected_mlm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nsp, expected_nsp, rtol=1e-5, atol=1e-5)
    wrong = build_bert(BertModelConfig(**{**TINY.__dict__, "num_layers": 3}))
    with pytest.raises(CheckpointError, match="missing"):
        load_into(wrong, load_checkpoint(str(path)), str(path))


def test_tf_checkpoint_with_lamb_slots_loads_the_weights_only(hf_model, tmp_path):
    """The real phase-1 checkpoint (model.ckpt-28252) holds the LAMB optimizer's slots next to every
    variable (`<var>/LAMB`, `<var>/LAMB_1`: TF's slot names for m and v of an optimizer named LAMB) and
    its non-slot variables `beta1_power`, `beta2_power`, plus `global_step`. The reference's loader (and
    NVIDIA's) reads only the model's variables, so these are skipped; any other unknown name, and a
    missing weight, still fail."""
    weights = {k: v for k, v in _tf_variables(hf_model.state_dict()).items()
               if not k.endswith(("/adam_m", "/adam_v")) and k != "global_step"}
    arrays = dict(weights)
    for name, array in weights.items():
        arrays[name + "/LAMB"] = np.full_like(array, 0.5)
        arrays[name + "/LAMB_1"] = np.full_like(array, 0.25)
    arrays.update(beta1_power=np.array(0.66 ** 28252, np.float32), beta2_power=np.array(0.996 ** 28252, np.float32),
                  global_step=np.array(28252, np.int64))
    path = tmp_path / "model.ckpt-28252.npz"
    np.savez(path, **arrays)
    loaded = load_checkpoint(str(path))
    expected = from_hf(hf_model.state_dict())
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], v) for k, v in expected.items())
    for extra in ({"bert/encoder/layer_0/output/dense/kernel/Adagrad": np.zeros(1, np.float32)},
                  {"some_other_variable": np.zeros(1, np.float32)},
                  {"bert/encoder/layer_2/output/dense/bias": np.zeros(TINY.hidden_size, np.float32)}):
        np.savez(path, **arrays, **extra)
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(str(path))
    missing = {k: v for k, v in arrays.items() if k != "bert/encoder/layer_1/attention/self/key/kernel"}
    np.savez(path, **missing)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(str(path))


def test_packed_and_unpacked_batches_give_the_same_loss_and_gradients():
    """The same 8 sequences, one per row and packed 3 to a row: same loss, same gradient of every
    parameter (dropout off; attention stays within each sequence, positions restart per sequence)."""
    torch.manual_seed(4)
    cfg = BertModelConfig(**{**TINY.__dict__, "hidden_dropout": 0.0, "attention_dropout": 0.0})
    model = build_bert(cfg)
    sequences = random_sequences(np.random.default_rng(5), 8, cfg.vocab_size, 21, 6)
    results = []
    for max_per_row in (1, 3):
        batch = build_batch(sequences, 64, 6, max_per_row=max_per_row)
        model.zero_grad()
        mlm, nsp = model(**batch.model_inputs())
        loss = pretraining_loss(mlm, batch.mlm_labels, nsp, batch.nsp_labels)
        loss.backward()
        results.append((batch.num_rows, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (rows_unpacked, loss_unpacked, grads_unpacked), (rows_packed, loss_packed, grads_packed) = results
    assert rows_unpacked == 8 and rows_packed == 3
    torch.testing.assert_close(loss_packed, loss_unpacked, rtol=1e-6, atol=1e-6)
    for name, grad in grads_unpacked.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


_TRITON_CHECK = """
import os, numpy as np, torch
from models.bert.model import BertModelConfig, build_bert, pretraining_loss
from pipelines.bert.packing import build_batch, random_sequences
torch.manual_seed(0)
cfg = BertModelConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                      max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)
model = build_bert(cfg)
batch = build_batch(random_sequences(np.random.default_rng(0), 4, 50, 16, 4), 32, 4, max_per_row=2)
results = []
for kernels in ("triton", "reference"):  # read at every kernel call
    os.environ["MLPERF_KERNELS"] = kernels
    model.zero_grad()
    mlm, nsp = model(**batch.model_inputs())
    loss = pretraining_loss(mlm, batch.mlm_labels, nsp, batch.nsp_labels)
    loss.backward()
    results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
(loss_t, grads_t), (loss_r, grads_r) = results
torch.testing.assert_close(loss_t, loss_r, rtol=1e-6, atol=1e-6)
for a, b in zip(grads_t, grads_r):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
print("ok")
"""


def test_triton_kernel_path_gives_the_reference_loss_and_gradients():
    """The model through the Triton LayerNorm / bias-GELU / cross-entropy kernels (what runs on a GPU),
    under Triton's CPU interpreter, which must be switched on before the kernels are imported: a fresh
    process."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _TRITON_CHECK], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout[-2000:] + r.stderr[-3000:]
