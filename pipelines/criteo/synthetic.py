"""A small learnable Criteo in the real multi-hot layout (pipelines/criteo/format.py).

Each sample gets 13 integer counts (turned into dense features by the preprocessing's own log(x + 3)) and
one id per categorical feature, drawn skewed towards small ids as real click logs are. The ids are expanded
to multi-hot bags with the reference's lookup tables (prepare/multi_hot.py), so the bags carry exactly the
information of the one-hot id, as in the real dataset. The label is drawn from a planted logistic model:

    logit = bias + sum_i a_i z_i + c z_0 z_2 + sum_{k in EFFECT_FEATURES} e_k[id_k]

with z the standardised dense features and e_k a fixed random effect per id. The planted logit is itself a
scorer, so the best AUROC any model can reach on the validation set is known; it is written to
`synthetic_info.json` next to the data, and the debug flavour's target sits below it.
"""

from __future__ import annotations

import json
import os

import numpy as np

from pipelines.criteo.format import MULTI_HOT_SIZES, NUM_DENSE, TABLE_ROWS, write_day
from pipelines.criteo.prepare.multi_hot import expand, lookup_tables
from pipelines.criteo.prepare.tsv_to_npy import dense_transform

# Features whose ids move the label, and the spread of their effects (logit units).
EFFECT_FEATURES = (1, 2, 3, 6, 10, 13, 19, 22)
EFFECT_SCALE = 0.9
DENSE_WEIGHTS = (0.8, -0.6, 0.5, 0.3)  # on z_0..z_3
DENSE_INTERACTION = 0.4  # on z_0 * z_2
BIAS = -1.2


def _binary_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties (numpy only, for the info file)."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    ranks = np.empty(len(s), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    pos = labels.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def write_synthetic_criteo(out_dir: str, *, days: int, rows_per_day: int, table_rows=TABLE_ROWS,
                           multi_hot_sizes=MULTI_HOT_SIZES, seed: int = 1234) -> dict:
    """Days 0..days-2 train, day days-1 validation (its first half). Returns the info written to JSON."""
    if days < 2:
        raise ValueError("need at least one training day and the validation day")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    tables = lookup_tables(table_rows, multi_hot_sizes)
    effects = {k: rng.normal(0.0, EFFECT_SCALE, size=table_rows[k]) for k in EFFECT_FEATURES
               if k < len(table_rows)}
    # Counts: geometric with a per-feature mean, ~10% missing (the preprocessing maps missing to 0).
    means = rng.uniform(1.0, 60.0, size=NUM_DENSE)
    log_mean, log_std = None, None
    val_scores = val_labels = None
    for day in range(days):
        counts = rng.geometric(1.0 / (1.0 + means), size=(rows_per_day, NUM_DENSE)) - 1
        counts[rng.random(counts.shape) < 0.1] = 0
        dense = dense_transform(counts)
        if log_mean is None:  # standardise with day 0's statistics, fixed for every day
            log_mean, log_std = dense.mean(0), dense.std(0) + 1e-6
        z = (dense - log_mean) / log_std
        # Skewed ids: u^3 puts most mass on small ids, the long tail is rare (as in click logs).
        one_hot = np.stack([(rng.random(rows_per_day) ** 3 * rows).astype(np.int64) for rows in table_rows], 1)
        logit = BIAS + z[:, :len(DENSE_WEIGHTS)] @ np.asarray(DENSE_WEIGHTS) + DENSE_INTERACTION * z[:, 0] * z[:, 2]
        for k, effect in effects.items():
            logit = logit + effect[one_hot[:, k]]
        labels = (rng.random(rows_per_day) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int32)
        write_day(out_dir, day, dense, labels.reshape(-1, 1), expand(one_hot, tables))
        if day == days - 1:
            half = (rows_per_day + 1) // 2
            val_scores, val_labels = logit[:half], labels[:half]
    info = {"days": days, "rows_per_day": rows_per_day, "seed": seed,
            "validation_positive_rate": float(val_labels.mean()),
            "planted_model_validation_auroc": _binary_auroc(val_scores, val_labels)}
    with open(os.path.join(out_dir, "synthetic_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info
