"""Write a benchmark's small synthetic dataset, in the real dataset's on-disk format.

    python -m runtime.synthesize resnet --flavour debug --out data/resnet_debug

Each benchmark package's `benchmark.py` defines `write_synthetic_data(cfg, out_dir)`; sizes come from the
flavour's data config so the debug run and its data always agree. A directory that already holds a
complete dataset (marked by `.complete`) is left as it is.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from runtime import config as config_lib
from runtime.benchmark import BENCHMARKS, load_benchmark

_MARKER = ".complete"


def synthesize(benchmark: str, flavour: str, out_dir: str, overrides: list[str] = ()) -> bool:
    """Returns True if data was written, False if a complete dataset was already there."""
    if os.path.exists(os.path.join(out_dir, _MARKER)):
        return False
    flavours, _ = load_benchmark(benchmark)
    cfg = config_lib.apply_overrides(config_lib.resolve_flavour(flavours, flavour), list(overrides))
    module = importlib.import_module(f"{BENCHMARKS[benchmark]}.benchmark")
    os.makedirs(out_dir, exist_ok=True)
    module.write_synthetic_data(cfg, out_dir)
    with open(os.path.join(out_dir, _MARKER), "w") as f:
        f.write(f"{benchmark} {flavour} seed={cfg.data.synthetic_seed}\n")
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.synthesize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark")
    p.add_argument("--flavour", default="debug")
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    wrote = synthesize(args.benchmark, args.flavour, args.out, args.overrides)
    print(f"{'wrote' if wrote else 'kept existing'} synthetic {args.benchmark} data in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
