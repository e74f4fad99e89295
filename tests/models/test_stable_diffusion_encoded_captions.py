"""Offline caption encoding (data.encoded_captions=true, NVIDIA's encoded shards): the prepare command's shards give
the train step the context the text encoder gives on the fly (to float16 rounding), with no text encoder in the
step, and a short debug run's losses match the on-the-fly run's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, read_metrics, train_command

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.stable_diffusion import SPEC  # noqa: E402
from pipelines.laion import format as fmt  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# float16 rounds to nearest: relative error <= 2^-11 for normal numbers, absolute <= 2^-25 below them; the
# encoder's fp32 output itself may differ by a few ulps between batch sizes (1e-6 relative covers that).
FP16 = dict(rtol=2 ** -11 + 1e-6, atol=2 ** -25)


@pytest.fixture(scope="module")
def encoded_data(debug_data, tmp_path_factory):
    """The debug data plus its encoded shards, written by the prepare command (in a process of its own)."""
    source = debug_data("stable_diffusion")
    data = tmp_path_factory.mktemp("sd_encoded")
    for entry in os.listdir(source):
        os.symlink(source / entry, data / entry)
    r = subprocess.run([sys.executable, "-m", "pipelines.laion.prepare.encode_captions", "--data-dir", str(data),
                        "--flavour", "debug", "--batch", "48"], capture_output=True, text=True, cwd=REPO, env=ENV,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    plain, encoded = fmt.shard_paths(str(data)), fmt.shard_paths(str(data), encoded=True)
    assert [os.path.basename(p) for p in plain] == [os.path.basename(p) for p in encoded]
    return data


def _bench(data, tmp_path, **data_overrides):
    from runtime.benchmark import RunContext
    from runtime.distributed import LaunchEnv
    from runtime.mlperf_log import MLPerfLogger
    from runtime.parallel import ParallelLayout

    cfg = SPEC.config("debug")
    for key, value in data_overrides.items():
        setattr(cfg.data, key, value)
    layout = ParallelLayout(1, 0)
    layout.build_groups()
    ctx = RunContext(SPEC, LaunchEnv("single", 0, 1, 0, 1, "127.0.0.1", 0), layout, torch.device("cpu"),
                     MLPerfLogger(None, enabled=False), str(tmp_path), str(data), seed=1)
    bench = SPEC.benchmark(cfg, ctx)
    bench.open_data()
    return bench


def test_the_steps_context_from_encoded_shards_is_the_text_encoders(encoded_data, tmp_path):
    plain, encoded = _bench(encoded_data, tmp_path), _bench(encoded_data, tmp_path, encoded_captions=True)
    for step in (0, 7):
        moments, captions = plain.train_data.batch(step)
        moments_e, context_e = encoded.train_data.batch(step)
        assert torch.equal(moments, moments_e) and context_e.dtype == torch.float16
        assert context_e.shape == (len(captions), fmt.CONTEXT_LENGTH, SPEC.config("debug").model.unet.context_dim)
        # what the step trains on: the micro-batches' context, from the shards vs from the encoder now
        (_, on_the_fly, *_), = plain._micro_batches(moments, captions, step)
        (_, from_shards, *_), = encoded._micro_batches(moments_e, context_e, step)
        assert from_shards.dtype == torch.float32
        torch.testing.assert_close(from_shards, on_the_fly, **FP16)
        assert not torch.equal(from_shards, on_the_fly)  # it was rounded: the shards' values, not a re-encoding

    def no_encoder(captions):
        raise AssertionError("the train step ran the text encoder")

    encoded.encode_text = no_encoder
    assert torch.isfinite(encoded.train_step(0))


def test_a_short_debug_runs_losses_match_on_the_fly_encoding(encoded_data, tmp_path):
    common = ["--seed", "5", "run.log_every_steps=1", "run.max_steps=6"]
    losses = {}
    for name, extra in (("plain", ()), ("encoded", ("data.encoded_captions=true",))):
        r = subprocess.run(train_command("stable_diffusion", encoded_data, tmp_path / name, *common, *extra),
                           capture_output=True, text=True, cwd=REPO, env=ENV, timeout=600)
        assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-3000:]
        losses[name] = [m["loss"] for m in read_metrics(tmp_path / name) if "loss" in m]
    assert len(losses["plain"]) == 6 and losses["plain"][-1] < losses["plain"][0]
    # the contexts differ by float16 rounding only (< 5e-4 relative): the losses by far less than they move
    assert losses["encoded"] == pytest.approx(losses["plain"], rel=1e-4)
    assert losses["encoded"] != losses["plain"]
