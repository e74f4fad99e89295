"""Reference convergence points for 4.0.0 through mlperf-logging's RCP checker: its files, its statistics (olympic
mean, stdev, the t-test's fastest acceptable mean) and its choice of point (pruned RCPs; the exact batch size, the
linear interpolation between its neighbours, or below all of them the smallest batch's point).

Units: each benchmark's RCP counts what its `eval_accuracy.metadata.epoch_num` (or samples_count) counts
(shared/spec/logging_and_compliance.md §3); SAMPLES_PER_UNIT turns that into training samples (sequences for the
LLMs), with the dataset sizes of the spec files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from runtime.submission import RULESET, USAGE

SAMPLES_PER_UNIT = {
    "resnet": 1_281_167,            # epochs of ImageNet-1k train (resnet.md: train_samples)
    "ssd": 1_170_301,               # epochs of the OpenImages MLPerf subset (ssd_retinanet.md)
    "unet3d": 1,                    # samples (epoch x 168)
    "stable_diffusion": 1,          # images (samples_count)
    "bert": 1,                      # training samples
    "gpt3": 1 / 2048,               # tokens since the 4000-step checkpoint -> 2048-token sequences
    "llama2_70b_lora": 1,           # 8192-token sequences (samples_count)
    "dlrm_dcnv2": 4_195_197_692,    # epochs of Criteo days 0-22 (dlrm_dcnv2.md)
    "gnn": 94_605_581,              # epochs of IGBH-full's training seeds (gnn_rgat.md: train_samples)
}
UNIT_NAME = {"resnet": "epochs", "ssd": "epochs", "unet3d": "samples", "stable_diffusion": "images",
             "bert": "samples", "gpt3": "tokens", "llama2_70b_lora": "samples", "dlrm_dcnv2": "epochs",
             "gnn": "epochs"}


@dataclass
class ConvergencePoint:
    benchmark: str
    batch_size: int
    how: str  # "RCP found", "RCP interpolation", "below every RCP: the smallest batch's point"
    mean: float  # in the RCP unit
    stdev: float
    fastest_acceptable: float  # the RCP checker's minimum mean (one-sided t-test, p = 0.05)

    @property
    def mean_samples(self) -> float:
        return self.mean * SAMPLES_PER_UNIT[self.benchmark]

    @property
    def stdev_samples(self) -> float:
        return self.stdev * SAMPLES_PER_UNIT[self.benchmark]


def convergence(benchmark: str, batch_size: int) -> ConvergencePoint:
    from mlperf_logging.rcp_checker.rcp_checker import RCP_Checker

    if benchmark not in SAMPLES_PER_UNIT:
        raise ValueError(f"{benchmark}: no RCPs in mlperf-logging's training_{RULESET}")
    logging.getLogger().setLevel(logging.WARNING)  # its INFO lines are for its own command line
    checker = RCP_Checker(USAGE, RULESET, benchmark, verbose=False)
    passes = "pruned_rcps"  # what the package checker uses
    record, how = checker._find_rcp(batch_size, passes), "RCP found"
    if record is None:
        low = checker._find_top_min_rcp(batch_size, passes)
        high = checker._find_bottom_max_rcp(batch_size, passes)
        if low is not None and high is not None:
            _, record = checker._create_interp_rcp(batch_size, low, high)
            how = "RCP interpolation"
        elif high is not None:
            record, how = checker._find_min_rcp(passes), "below every RCP: the smallest batch's point"
        else:
            largest = max(r["BS"] for r in checker._get_rcp_data(passes).values())
            raise ValueError(f"{benchmark}: global batch {batch_size} is above every RCP (largest {largest}): the "
                             f"RCP checker says 'Missing RCP'; new reference runs would be needed")
    return ConvergencePoint(benchmark, batch_size, how, float(record["RCP Mean"]), float(record["RCP Stdev"]),
                            float(record["Min Epochs"]))
