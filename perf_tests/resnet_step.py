"""Train-step time of our ResNet-50 against torchvision's resnet50: forward + backward + LARS step.

Both models get the same LARS optimizer (groups from `lars_param_groups`, which decides by module type and
so works on torchvision's model too), the same batch and the same loss, in four modes:

    fp32            contiguous NCHW, fp32
    bf16            autocast to bfloat16, NCHW
    channels_last   fp32, NHWC model and input
    compile         fp32 NCHW, model wrapped in torch.compile (the first warm-up step pays the compile)

Each mode: `--warmup` untimed steps per model, then `--iters` timed steps alternating between the two
models; median ms, img/s, and ours / torchvision (< 1 means ours is faster). Steps are timed on the host
clock after a device sync, so this also runs on CUDA (`--device cuda`), though its defaults are sized for a
2-core CPU.

    python perf_tests/resnet_step.py [--batch 16 --size 128 --iters 5 --modes fp32,bf16,...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import alternate, cpu_name  # noqa: E402

from models.resnet.lars import LARS  # noqa: E402
from models.resnet.model import ResNetModelConfig, build_resnet, lars_param_groups  # noqa: E402

MODES = ("fp32", "bf16", "channels_last", "compile")


def make_step(model: torch.nn.Module, mode: str, args, device: torch.device):
    """A closure running one train step of `model` in `mode` on a fixed synthetic batch."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)
    labels = torch.randint(0, 1000, (args.batch,), generator=generator).to(device)
    model = model.to(device).train()
    optimizer = LARS(lars_param_groups(model), lr=0.1, momentum=0.9, weight_decay=5e-5)
    if mode == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if mode == "compile":
        model = torch.compile(model)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext():
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="image side (224 for the real benchmark)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    print(f"# resnet_step  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{cpu_name()}, {torch.get_num_threads()} threads, device {device}")
    print(f"batch {args.batch} x 3 x {args.size} x {args.size}, warmup {args.warmup}, timed {args.iters} (median)")
    # Other processes on a shared machine inflate every figure; the load average says how much to trust them.
    print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
    print("| mode | ours ms | ours img/s | torchvision ms | torchvision img/s | ours / tv | first step ours / tv s |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        steps = {"ours": make_step(build_resnet(ResNetModelConfig()), mode, args, device),
                 "tv": make_step(torchvision.models.resnet50(), mode, args, device)}
        times = alternate(steps, args.warmup, args.iters, device)
        ours, theirs = (times.median(name) for name in steps)
        ours_first, theirs_first = (times.first(name) for name in steps)
        del steps
        torch._dynamo.reset()  # keep one mode's compiled graphs from being reused by the next
        print(f"| {mode} | {ours * 1e3:.0f} | {args.batch / ours:.1f} | {theirs * 1e3:.0f} | "
              f"{args.batch / theirs:.1f} | {ours / theirs:.3f} | {ours_first:.1f} / {theirs_first:.1f} |",
              flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
