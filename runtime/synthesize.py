"""Write a benchmark's small synthetic dataset, in the real dataset's on-disk format.

    python -m runtime.synthesize resnet --flavour debug --out data/resnet_debug

Each benchmark's SPEC names its `write_synthetic_data(cfg, out_dir)`; sizes come from the
flavour's data config so the debug run and its data always agree. A directory that already holds a
complete dataset (marked by `.complete`) is left as it is. Writers run on one torch thread: float reductions
(a random network's features, a VAE decode) then give the same bytes on any machine, in any process.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from runtime import config as config_lib
from runtime.benchmark import load_spec

_MARKER = ".complete"


def synthesize(benchmark: str, flavour: str, out_dir: str, overrides: list[str] = ()) -> bool:
    """Returns True if data was written, False if a complete dataset was already there."""
    if os.path.exists(os.path.join(out_dir, _MARKER)):
        return False
    spec = load_spec(benchmark)
    cfg = config_lib.apply_overrides(spec.config(flavour), list(overrides))
    os.makedirs(out_dir, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec.write_synthetic_data(cfg, out_dir)
    finally:
        torch.set_num_threads(threads)
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
    try:
        wrote = synthesize(args.benchmark, args.flavour, args.out, args.overrides)
    except ValueError as e:  # an unknown benchmark, flavour or override: one line, as runtime.train says it
        if os.environ.get("MLPERF_TRACEBACK") == "1":
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"{'wrote' if wrote else 'kept existing'} synthetic {args.benchmark} data in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
