"""Stable Diffusion v2 on LAION-400M latents (MLPerf log name `stable_diffusion`): FID <= 90 and CLIP >= 0.15
at the same checkpoint, evaluated in samples (images trained)."""

from models.stable_diffusion.benchmark import StableDiffusionBenchmark, write_synthetic_data
from models.stable_diffusion.config import FLAVOURS
from runtime.benchmark import BenchmarkSpec, Parity

SPEC = BenchmarkSpec(name="stable_diffusion", flavours=FLAVOURS, benchmark=StableDiffusionBenchmark,
                     write_synthetic_data=write_synthetic_data, metric="fid_clip_pass", higher_is_better=True,
                     eval_unit="samples",
                     # GroupNorm and attention are per sample, there is no dropout, and every random draw is made
                     # for the whole global batch: two ranks compute one process's step up to summation order.
                     parity=Parity(rel=1e-4))
# The debug log passes the closed rules as well: closed_stable_diffusion.yaml checks no dataset sizes, and
# the debug targets are on its small networks' scales, which the checker's FID <= 90 / CLIP >= 0.15 also
# accept. It claims the open division because its model and eval networks are not the reference's.
