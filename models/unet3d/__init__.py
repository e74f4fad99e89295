"""3D U-Net on KiTS19 (MLPerf log name `unet3d`): mean Dice 0.908, evaluated in samples."""

from models.unet3d.benchmark import UNet3DBenchmark, write_synthetic_data
from models.unet3d.config import FLAVOURS
from runtime.benchmark import BenchmarkSpec, Parity

SPEC = BenchmarkSpec(name="unet3d", flavours=FLAVOURS, benchmark=UNet3DBenchmark,
                     write_synthetic_data=write_synthetic_data, metric="mean_dice", higher_is_better=True,
                     eval_unit="samples",
                     # InstanceNorm is per sample and there is no dropout: two ranks of one sample each compute
                     # what one process computes on both, up to float summation order.
                     parity=Parity(rel=1e-4),
                     # closed_unet3d.yaml fixes train_samples at 168 and eval_samples at 42: the debug set is
                     # 16 + 4 cases so that a CPU run ends in about a minute, and logs what it has
                     debug_log_exceptions=frozenset({"train_samples", "eval_samples"}))
