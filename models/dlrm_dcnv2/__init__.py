"""DLRMv2 (DCNv2) on Criteo multi-hot (MLPerf log name `dlrm_dcnv2`): AUROC 0.80275, evaluated in epoch
fractions."""

from models.dlrm_dcnv2.benchmark import DLRMBenchmark, write_synthetic_data
from models.dlrm_dcnv2.config import FLAVOURS
from runtime.benchmark import BenchmarkSpec, Parity

SPEC = BenchmarkSpec(name="dlrm_dcnv2", flavours=FLAVOURS, benchmark=DLRMBenchmark,
                     write_synthetic_data=write_synthetic_data, metric="auroc", higher_is_better=True,
                     eval_unit="epoch_fraction", parity=Parity(rel=1e-5),
                     # closed_dlrm_dcnv2.yaml fixes eval_samples at the real 89,137,319, which a synthetic
                     # validation set cannot truthfully log
                     debug_log_exceptions=frozenset({"eval_samples"}))
