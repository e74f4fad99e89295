"""ResNet-50 v1.5 on ImageNet (MLPerf log name `resnet`): top-1 0.759, evaluated in epochs."""

from models.resnet.benchmark import ResNetBenchmark, write_synthetic_data
from models.resnet.config import FLAVOURS
from runtime.benchmark import BenchmarkSpec, Parity

SPEC = BenchmarkSpec(name="resnet", flavours=FLAVOURS, benchmark=ResNetBenchmark,
                     write_synthetic_data=write_synthetic_data, metric="top1", higher_is_better=True,
                     eval_unit="epochs",
                     # DP=2 puts 16 images per rank through BatchNorm: one process does so accumulating two.
                     parity=Parity(one_process=("train.grad_accum=2",), rel=2e-4))
