"""Write the reference checkpoint's `common.pt` from the JSON the reference ships (common_fp32.json / common_bf16.json).

    python -m models.gpt3.prepare.common_json_to_pt common_fp32.json /lustre/gpt3/ckpt4000

The checkpoint tarball's own common.pt may be framework specific; ours holds only plain values, so it
loads with `torch.load(weights_only=True)`. Written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from runtime.checkpoint import save_atomic


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.gpt3.prepare.common_json_to_pt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json_file")
    p.add_argument("checkpoint_dir")
    args = p.parse_args(argv)
    with open(args.json_file) as f:
        try:
            common = json.load(f)
        except json.JSONDecodeError as e:
            print(f"{args.json_file}: not valid JSON ({e})", file=sys.stderr)
            return 1
    if "global_step" not in common:
        print(f"{args.json_file}: missing key 'global_step'", file=sys.stderr)
        return 1
    save_atomic(common, os.path.join(args.checkpoint_dir, "common.pt"))
    print(f"wrote {os.path.join(args.checkpoint_dir, 'common.pt')} (global_step {common['global_step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
