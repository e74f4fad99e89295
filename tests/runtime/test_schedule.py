"""Blocks and their MLPerf metadata in each benchmark unit, against hand-written expectations."""

from __future__ import annotations

import pytest

from runtime.schedule import blocks, every


def test_every_with_an_offset_and_a_short_last_block():
    assert every(4, 41, offset=2) == [2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 41]
    assert every(4, 41, offset=1) == [3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 41]
    assert every(20, 60) == [20, 40, 60]
    with pytest.raises(ValueError, match="every 4 from offset 4"):
        every(4, 10, offset=4)


def test_epoch_blocks_number_epochs_from_one():
    out = blocks([2 * 10, 4 * 10, 5 * 10], "epochs", global_batch_size=32, steps_per_epoch=10)
    assert [b.steps for b in out] == [20, 20, 10]
    assert [b.start_metadata for b in out] == [{"first_epoch_num": 1, "epoch_count": 2},
                                              {"first_epoch_num": 3, "epoch_count": 2},
                                              {"first_epoch_num": 5, "epoch_count": 1}]
    assert [b.stop_metadata for b in out] == [{"first_epoch_num": 1}, {"first_epoch_num": 3}, {"first_epoch_num": 5}]
    assert [b.eval_metadata["epoch_num"] for b in out] == [2, 4, 5]
    with pytest.raises(ValueError, match="epoch boundaries"):
        blocks([15], "epochs", global_batch_size=32, steps_per_epoch=10)


def test_sample_blocks_start_and_stop_at_their_ends():
    out = blocks([50, 100, 120], "samples", global_batch_size=32)
    assert [(b.start_metadata, b.stop_metadata, b.eval_metadata) for b in out] == [
        ({"samples_count": 0}, {"samples_count": 1600}, {"epoch_num": 1600}),
        ({"samples_count": 1600}, {"samples_count": 3200}, {"epoch_num": 3200}),
        ({"samples_count": 3200}, {"samples_count": 3840}, {"epoch_num": 3840})]


def test_samples_count_on_evals_where_the_rules_list_it():
    # Llama's and SD's eval lines carry samples_count beside epoch_num (in samples both); in epochs it is the
    # samples trained at the block's end
    out = blocks([50, 120], "samples", global_batch_size=32, samples_count_on_evals=True)
    assert [b.eval_metadata for b in out] == [{"epoch_num": 1600, "samples_count": 1600},
                                              {"epoch_num": 3840, "samples_count": 3840}]
    out = blocks([10, 20], "epochs", global_batch_size=8, steps_per_epoch=10, samples_count_on_evals=True)
    assert [b.eval_metadata for b in out] == [{"epoch_num": 1, "samples_count": 80},
                                              {"epoch_num": 2, "samples_count": 160}]
    assert "samples_count" not in blocks([50], "samples", global_batch_size=32)[0].eval_metadata


def test_token_blocks_count_tokens():
    out = blocks([20, 40], "tokens", global_batch_size=16, tokens_per_sample=64)
    per_step = 16 * 64
    assert [b.start_metadata for b in out] == [{"first_epoch_num": 0, "epoch_count": 20 * per_step},
                                              {"first_epoch_num": 20 * per_step, "epoch_count": 20 * per_step}]
    assert [b.eval_metadata["epoch_num"] for b in out] == [20 * per_step, 40 * per_step]


def test_epoch_fraction_blocks_stop_at_their_own_end():
    """DLRM: the block_stop of a block carries where the block ended (it used to repeat its start)."""
    out = blocks([10, 20, 21], "epoch_fraction", global_batch_size=512, steps_per_epoch=21)
    assert [b.stop_metadata["samples_count"] for b in out] == [10 * 512, 20 * 512, 21 * 512]
    assert [b.start_metadata["samples_count"] for b in out] == [0, 10 * 512, 20 * 512]
    assert [b.eval_metadata["epoch_num"] for b in out] == [round(10 / 21, 6), round(20 / 21, 6), 1.0]


@pytest.mark.parametrize("ends", [[], [0, 5], [5, 5], [6, 4]])
def test_block_ends_must_increase(ends):
    with pytest.raises(ValueError, match="strictly increasing"):
        blocks(ends, "samples", global_batch_size=8)


def test_unknown_unit():
    with pytest.raises(ValueError, match="eval unit 'iterations'"):
        blocks([1], "iterations", global_batch_size=8)
