"""The MLPerf BERT dataset as the reference writes it: TFRecord shards of fixed-length tf.Examples.

Training: 500 shards `part-00000-of-00500` ... (create_pretraining_data.py, one per text shard); eval:
one file `eval_10k` (10,000 examples picked by pick_eval_samples.py). Every example holds, zero-padded:

    input_ids, input_mask, segment_ids     int64 [max_seq_length = 512]
    masked_lm_positions, masked_lm_ids     int64 [max_predictions_per_seq = 76]
    masked_lm_weights                      float [76]   1.0 for real predictions, then 0.0
    next_sentence_labels                   int64 [1]    1 when segment B is a random sentence

`decode_pretraining_example` parses one and checks it has exactly this shape; errors carry no file
name (the callers, which know the file and record offset, add them).
"""

from __future__ import annotations

import os
import re

import numpy as np

from pipelines.tfrecord import ExampleError, decode_example, encode_example, float_feature, int64_feature

MAX_SEQ_LENGTH = 512
MAX_PREDICTIONS_PER_SEQ = 76
TRAIN_SHARDS = 500
EVAL_FILE = "eval_10k"
EVAL_SAMPLES = 10_000

SEQUENCE_FEATURES = ("input_ids", "input_mask", "segment_ids")
PREDICTION_FEATURES = ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights")
LABEL_FEATURE = "next_sentence_labels"

_SHARD_PATTERN = re.compile(r"^part-(?P<index>\d{5})-of-(?P<count>\d{5})$")


class BertFormatError(ValueError):
    """The data does not follow the layout above; the message names the file and what is wrong."""


def shard_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}"


def find_train_shards(data_dir: str) -> list[str]:
    """Paths of `part-XXXXX-of-NNNNN` in order; all N must be present."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: no such data directory")
    found, counts = {}, set()
    for name in os.listdir(data_dir):
        if match := _SHARD_PATTERN.match(name):
            found[int(match["index"])] = name
            counts.add(int(match["count"]))
    if not found:
        raise BertFormatError(f"{data_dir}: no training shards (expected part-NNNNN-of-NNNNN)")
    if len(counts) > 1:
        raise BertFormatError(f"{data_dir}: shards disagree on their total: -of- {sorted(counts)}")
    count = counts.pop()
    missing = [shard_name(i, count) for i in range(count) if i not in found]
    if missing or len(found) != count:
        raise BertFormatError(f"{data_dir}: shards say -of-{count:05d} but {len(found)} are present"
                              + (f"; missing e.g. {missing[:3]}" if missing else ""))
    return [os.path.join(data_dir, shard_name(i, count)) for i in range(count)]


def encode_pretraining_example(input_ids, input_mask, segment_ids, masked_lm_positions, masked_lm_ids,
                               masked_lm_weights, next_sentence_label: int) -> bytes:
    """Serialized tf.Example with the reference's feature names; the arrays are already padded."""
    return encode_example({
        "input_ids": int64_feature(input_ids), "input_mask": int64_feature(input_mask),
        "segment_ids": int64_feature(segment_ids), "masked_lm_positions": int64_feature(masked_lm_positions),
        "masked_lm_ids": int64_feature(masked_lm_ids), "masked_lm_weights": float_feature(masked_lm_weights),
        LABEL_FEATURE: int64_feature([next_sentence_label])})


def decode_pretraining_example(payload: bytes, max_seq_length: int = MAX_SEQ_LENGTH,
                               max_predictions: int = MAX_PREDICTIONS_PER_SEQ) -> dict[str, np.ndarray]:
    """The seven features as numpy arrays (int64; weights float32), each checked for kind and length."""
    features = decode_example(payload)
    expected = {**{name: ("int64", max_seq_length) for name in SEQUENCE_FEATURES},
                "masked_lm_positions": ("int64", max_predictions), "masked_lm_ids": ("int64", max_predictions),
                "masked_lm_weights": ("float", max_predictions), LABEL_FEATURE: ("int64", 1)}
    out = {}
    for name, (kind, length) in expected.items():
        if name not in features:
            raise ExampleError(f"feature {name!r} missing (has {sorted(features)})")
        feature = features[name]
        if feature.kind != kind or len(feature.values) != length:
            raise ExampleError(f"feature {name!r} is {feature.kind}[{len(feature.values)}], "
                               f"expected {kind}[{length}]")
        out[name] = np.asarray(feature.values, dtype=np.float32 if kind == "float" else np.int64)
    return out
