"""The time-to-train predictor: RCP numbers against the RCP files read here by hand, the eval cadences against the
spec's worked figures, the time equation by hand, and NVIDIA's published v4.0 runs from their logged facts."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlperf_logging import rcp_checker

from runtime.submission import predict
from runtime.submission.rcp import SAMPLES_PER_UNIT, convergence

RCP_DIR = Path(rcp_checker.__file__).parent / "training_4.0.0"


def _reference(benchmark: str, batch: int) -> tuple[float, float]:
    """(olympic mean, stdev) of one RCP straight from its json: drop one run at each end (unet3d four)."""
    records = json.loads((RCP_DIR / f"rcps_{benchmark}.json").read_text())
    unit = "samples to converge" if benchmark == "llama2_70b_lora" else "Epochs to converge"
    (runs,) = [sorted(r[unit]) for r in records.values() if r["BS"] == batch]
    drop = 4 if benchmark == "unet3d" else 1
    return float(np.mean(runs[drop:-drop])), float(np.std(runs))


@pytest.mark.parametrize("benchmark,batch", [("resnet", 3264), ("unet3d", 56), ("dlrm_dcnv2", 55296),
                                             ("llama2_70b_lora", 8), ("ssd", 256)])
def test_an_rcp_at_its_own_batch_is_its_olympic_mean(benchmark, batch):
    mean, stdev = _reference(benchmark, batch)
    point = convergence(benchmark, batch)
    assert point.how == "RCP found"
    assert point.mean == pytest.approx(mean, rel=1e-12) and point.stdev == pytest.approx(stdev, rel=1e-12)
    assert point.fastest_acceptable < point.mean or point.stdev == 0


def test_a_batch_between_two_rcps_is_interpolated_linearly():
    low, _ = _reference("resnet", 1632)
    high, _ = _reference("resnet", 3264)
    point = convergence("resnet", 3200)
    assert point.how == "RCP interpolation"
    assert point.mean == pytest.approx(low + (3200 - 1632) / (3264 - 1632) * (high - low), rel=1e-12)
    assert point.mean_samples == pytest.approx(point.mean * 1_281_167)


def test_below_every_rcp_uses_the_smallest_and_above_every_rcp_is_missing():
    smallest, _ = _reference("resnet", 1632)
    assert convergence("resnet", 32).mean == pytest.approx(smallest)
    with pytest.raises(ValueError, match=r"above every RCP \(largest 67840\).*Missing RCP"):
        convergence("resnet", 100_000)


def test_eval_cadences_give_the_specs_worked_figures():
    # bert.md: NVIDIA's 8-GPU run at GBS 768 evaluates every 150k samples
    assert predict.evals_before("bert", 150_000, 768) == 1 and predict.evals_before("bert", 150_001, 768) == 2
    # llama2_70b_lora.md: GBS 8 -> first eval at 1 536 samples, GBS 128 -> 7 296
    assert predict.evals_before("llama2_70b_lora", 1535, 8) == 0
    assert predict.evals_before("llama2_70b_lora", 1536, 8) == 1
    assert predict.evals_before("llama2_70b_lora", 7296, 128) == 1
    # unet3d.md: first at epoch 1000 (168 000 samples), then every 20 epochs (3 360 samples)
    assert predict.evals_before("unet3d", 168_000 + 3 * 3_360, 56) == 4
    # dlrm and gnn: 20 per epoch
    assert predict.evals_before("dlrm_dcnv2", 4_195_197_692 * 0.5, 55296) == 10


def test_the_time_equation_by_hand():
    p = predict.predict("dlrm_dcnv2", 55296, 8 * 1.72e6, eval_seconds=3.0, startup_seconds=40.0)
    mean, stdev = _reference("dlrm_dcnv2", 55296)
    samples = mean * 4_195_197_692
    evals = math.ceil(samples / (4_195_197_692 / 20))
    assert p.evals == evals == 16  # 0.7615 epochs: the 16th eval at 0.80
    assert p.minutes == pytest.approx((40 + samples / (8 * 1.72e6) + evals * 3.0) / 60, rel=1e-12)
    # the band: the olympic mean of 10 runs counts 8, its spread stdev / sqrt(8)
    assert p.samples_high == pytest.approx(samples + stdev * 4_195_197_692 / math.sqrt(8), rel=1e-12)
    assert p.dominant == "steps"
    assert predict.predict("dlrm_dcnv2", 55296, 8 * 1.72e6, eval_seconds=60.0).dominant == "evals"


def test_nvidia_published_runs_from_their_logged_facts_land_within_ten_percent():
    rows = {r[0]: r for r in predict.nvidia_table()}
    assert set(rows) == set(SAMPLES_PER_UNIT)
    for benchmark, (_, _, _, predicted, published, diff, missing) in rows.items():
        if benchmark in predict.MISSING_FACTS:
            # steps alone fall short: the missing term is NVIDIA's eval time, not among the spec's facts
            assert missing and -20 < diff < -10, (benchmark, diff)
        else:
            assert abs(diff) < 10, (benchmark, predicted, published)
    # the steps-only figure by hand for ResNet: RCP mean at 3200 x ImageNet / (8 x 7160 img/s)
    assert rows["resnet"][3] == pytest.approx(convergence("resnet", 3200).mean * 1_281_167 / 57_280 / 60)


def test_bad_inputs_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ValueError, match="throughput 0"):
        predict.predict("bert", 768, 0)
    with pytest.raises(ValueError, match="no RCPs"):
        convergence("maskrcnn", 64)
    with pytest.raises(ValueError, match="metrics.jsonl: missing"):
        (tmp_path / "mlperf_log.txt").write_text("")
        predict.measure_run(str(tmp_path))
    with pytest.raises(ValueError, match="planner output: no"):
        predict.read_plan("nothing here")
