"""Check an image (or any environment): import every path the benchmarks use, print the versions, and say
whether Transformer Engine, apex, DALI's GPU operators and NCCL are usable.

    python containers/check_image.py                  # imports + versions; TE/apex/DALI GPU/NCCL reported
    python containers/check_image.py --gpu            # on a GPU node: those four become required too
    python containers/check_image.py --base-record /opt/mlperf/base-packages.txt
                                                      # also: the base's torch/TE/apex/DALI/triton unchanged

Exit status 0 when every required part is there, 1 otherwise (each failure is printed with its reason).
Without --gpu nothing GPU-only is required, so it runs on the CPU set (TE and apex reported absent) and in
`docker build`, which has no GPU.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import platform
import re
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Third-party modules the benchmarks import (tests/launchers/test_container.py checks this list against an
# import scan of the code, so a new dependency cannot be left out).
THIRD_PARTY = ["torch", "torchvision", "triton", "numpy", "PIL", "scipy", "yaml", "psutil", "matplotlib",
               "mpi4py", "megatron.core", "mlperf_logging.mllog", "torchrec", "fbgemm_gpu", "tokenizers",
               "nibabel", "faster_coco_eval", "webdataset", "open_clip", "diffusers", "pyarrow", "safetensors",
               "torch_geometric", "nvidia.dali"]
# Distributions the NGC base ships and the image must not replace (compared with --base-record).
BASE_HELD = ["torch", "torchvision", "triton", "pytorch-triton", "transformer-engine", "transformer-engine-torch",
             "transformer-engine-cu12", "transformer-engine-cu13", "apex", "nvidia-dali-cuda120",
             "nvidia-dali-cuda130", "nvidia-dali"]
DISTRIBUTIONS = ["torch", "torchvision", "triton", "pytorch-triton", "transformer-engine", "apex",
                 "nvidia-dali-cuda120", "nvidia-dali-cuda130", "megatron-core", "torchrec", "fbgemm-gpu",
                 "fbgemm-gpu-cpu", "mlperf-logging", "numpy"]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def benchmark_modules() -> list[str]:
    """models.<bm>.benchmark of every benchmark package (those exporting SPEC), plus the package itself."""
    names = []
    for init in sorted((REPO / "models").glob("*/__init__.py")):
        if "SPEC" in init.read_text():
            bm = init.parent.name
            names.append(f"models.{bm}")
            if (init.parent / "benchmark.py").exists():
                names.append(f"models.{bm}.benchmark")
    return names


def try_import(name: str) -> str | None:
    try:
        importlib.import_module(name)
        return None
    except Exception as err:
        return f"{type(err).__name__}: {err}"


def dist_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def dali_gpu() -> str:
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=2, num_threads=1, device_id=0)
    def probe():
        return fn.random.uniform(range=[0.0, 1.0], shape=[4]).gpu() * 2.0

    pipe = probe()
    pipe.build()
    (out,) = pipe.run()
    return f"usable ({type(out).__name__} from a GPU operator)"


def nccl() -> str:
    import torch

    if not torch.distributed.is_nccl_available():
        return "not built into torch"
    version = torch.cuda.nccl.version()
    return "usable, NCCL " + (".".join(map(str, version)) if isinstance(version, tuple) else str(version))


def fbgemm_gpu_op() -> str:
    import torch
    from fbgemm_gpu import sparse_ops  # noqa: F401  (registers torch.ops.fbgemm)

    lengths = torch.tensor([2, 0, 3], device="cuda")
    offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
    if offsets.tolist() != [0, 2, 2, 5]:
        raise RuntimeError(f"asynchronous_complete_cumsum gave {offsets.tolist()}")
    return "usable (torch.ops.fbgemm ran on the GPU)"


def read_record(path: Path) -> dict[str, str]:
    record = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            record[normalize(name)] = version.strip()
    return record


def check(gpu: bool, base_record: Path | None) -> tuple[dict, list[str]]:
    failures, report = [], {}
    import torch

    from kernels import backends

    report["python"] = platform.python_version()
    report["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                       "cudnn": torch.backends.cudnn.version(), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        report["torch"]["device"] = f"{torch.cuda.get_device_name()} sm_{major}{minor}"
    report["distributions"] = {d: dist_version(d) for d in DISTRIBUTIONS if dist_version(d)}

    imports = {}
    for name in THIRD_PARTY + benchmark_modules():
        imports[name] = try_import(name) or "ok"
        if imports[name] != "ok":
            failures.append(f"import {name}: {imports[name]}")
    report["imports"] = imports

    report["transformer_engine"] = {"version": backends.te_version(), "status": backends.te_status()}
    report["apex"] = backends.apex_status()
    optional = {}
    for part, probe in (("dali_gpu", dali_gpu), ("nccl", nccl), ("fbgemm_gpu", fbgemm_gpu_op)):
        if not torch.cuda.is_available():
            optional[part] = "no CUDA"
            continue
        try:
            optional[part] = probe()
        except Exception as err:
            optional[part] = f"not usable: {type(err).__name__}: {err}"
    report.update(optional)

    if gpu:
        if not torch.cuda.is_available():
            failures.append("--gpu: torch sees no CUDA device")
        if not backends.te_usable(fp8=True):
            failures.append(f"--gpu: Transformer Engine FP8 not usable: {backends.te_status()}")
        failures += [f"--gpu: apex {op}: {state}" for op, state in report["apex"].items() if state != "imports"]
        failures += [f"--gpu: {part}: {state}" for part, state in optional.items() if not state.startswith("usable")]

    if base_record is not None:
        record = read_record(base_record)
        changed = {}
        for name in BASE_HELD:
            before, now = record.get(normalize(name)), dist_version(name)
            if before is not None and before != now:
                changed[name] = f"{before} in the base, {now} now"
        report["base_held"] = {n: record[normalize(n)] for n in BASE_HELD if normalize(n) in record}
        failures += [f"base package replaced: {n} ({v})" for n, v in changed.items()]
    return report, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="require TE FP8, apex's ops, DALI GPU ops, NCCL")
    parser.add_argument("--base-record", type=Path, help="`pip list --format=freeze` of the bare base")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    try:
        report, failures = check(args.gpu, args.base_record)
    except Exception:
        traceback.print_exc()
        return 1
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    report["failures"] = failures
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    print("\n" + ("FAILED:\n  " + "\n  ".join(failures) if failures else "image check passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
