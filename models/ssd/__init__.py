"""RetinaNet (ResNeXt50-FPN) on OpenImages (MLPerf log name `ssd`): COCO box mAP 0.34, evaluated in epochs."""

from models.ssd.benchmark import SSDBenchmark, write_synthetic_data
from models.ssd.config import FLAVOURS
from runtime.benchmark import BenchmarkSpec

# Frozen BN: no statistic depends on how the global batch is split, so one process matches two DP ranks
# without accumulation (default Parity); the backbone's ImageNet weights are the starting weights.
SPEC = BenchmarkSpec(name="ssd", flavours=FLAVOURS, benchmark=SSDBenchmark, write_synthetic_data=write_synthetic_data,
                     metric="mAP", higher_is_better=True, eval_unit="epochs", init_checkpoint=True)
