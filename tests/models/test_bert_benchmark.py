"""BERT specifics end to end: its log keys and units, its launcher config names (parity, resume and the run
to target are in tests/test_benchmark_contract.py)."""

from __future__ import annotations

import pytest
from conftest import read_events, read_metrics

CLOSED_BERT_KEYS = ("global_batch_size", "opt_base_learning_rate", "opt_lamb_epsilon",
                    "opt_learning_rate_training_steps", "opt_learning_rate_warmup_steps", "num_warmup_steps",
                    "start_warmup_step", "opt_lamb_beta_1", "opt_lamb_beta_2", "opt_lamb_weight_decay_rate")


@pytest.mark.slow
def test_debug_log_has_the_closed_keys_once_and_evals_in_samples(debug_run):
    """The shared debug run (tests/test_benchmark_contract.py checks target and compliance): BERT's own keys
    and units."""
    run = debug_run("bert")
    assert run.returncode == 0, run.stdout[-3000:]
    evals = [m for m in read_metrics(run.run_dir) if "eval" in m]
    events = read_events(run.run_dir / "mlperf_log.txt")
    keys = [e["key"] for e in events]
    for key in CLOSED_BERT_KEYS:
        assert keys.count(key) == 1, key
    assert not any("trainnig" in k for k in keys)  # the TF reference's misspelt key
    accuracy = [e for e in events if e["key"] == "eval_accuracy"]
    # epoch_num counts training samples: steps so far x GBS 32 (the debug cadence: every 50 steps)
    assert [e["metadata"]["epoch_num"] for e in accuracy] == [m["samples"] for m in evals]
    assert all(m["samples"] % 1600 == 0 for m in evals)
    # train_samples: the samples trained, logged once just before run_stop (the RCP checker's BERT mode)
    assert keys.index("train_samples") == keys.index("run_stop") - 1
    assert events[keys.index("train_samples")]["value"] == evals[-1]["samples"]
