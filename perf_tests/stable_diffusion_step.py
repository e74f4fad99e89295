"""Train-step time of our SD-2 UNet against diffusers' UNet2DConditionModel of the same configuration.

diffusers' model with the same weights gives our outputs (tests/models/test_stable_diffusion_model.py), so the
two differ only in how they are written. A step: forward on noised latents at random timesteps with a random
(77, context) conditioning, MSE against a v target, backward, AdamW (torch's, the same for both sides). Our
UNet's GroupNorm(+SiLU) goes through kernels/group_norm.py (the Triton kernel on CUDA, the torch reference on
CPU), attention through SDPA; diffusers' through its default attention processor (SDPA as well).

`--warmup` untimed steps per side, then `--iters` timed ones alternating between the two sides (so load from
other processes on a shared machine hits both alike); median seconds, images/s and ours / diffusers (< 1: ours
is faster). Defaults are sized for a 2-core, 24 GB CPU machine: 128 channels (mult 1, 2, 4, 4, 64-channel
heads: 139M parameters; two full-size 866M models with AdamW state need ~28 GB) at 16x16 latents, batch 1; on a
GPU, `--device cuda --channels 320 --latent 64 --batch 64 --precision bf16` is the real per-GPU step (NVIDIA's
v4.0 H100 figure: 126.9 images/s per GPU, spec stable_diffusion.md).

    python perf_tests/stable_diffusion_step.py [--channels 128 --latent 16 --batch 1 --device cpu]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from machine import alternate, cpu_name  # noqa: E402

from models.stable_diffusion.model import UNetConfig, build_unet  # noqa: E402
from models.stable_diffusion.state_dict_adapter import diffusers_unet_config, unet_to_diffusers  # noqa: E402


def make_step(model: torch.nn.Module, is_ours: bool, args, device: torch.device, context_dim: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 4, args.latent, args.latent, generator=g).to(device)
    target = torch.randn(x.shape, generator=g).to(device)
    t = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    context = torch.randn(args.batch, 77, context_dim, generator=g).to(device)
    model = model.to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    def step() -> None:
        with torch.autocast(device.type, dtype=precision) if precision else contextlib.nullcontext():
            out = model(x, t, context) if is_ours else model(x, t, context).sample
        F.mse_loss(out.float(), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=128, help="model channels (320 for the real UNet)")
    parser.add_argument("--latent", type=int, default=16, help="latent side (64 for the real benchmark)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.channels % 64:
        parser.error(f"--channels {args.channels}: want a multiple of the 64-channel heads")
    cfg = UNetConfig(model_channels=args.channels)

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    ours = build_unet(cfg)
    theirs = UNet2DConditionModel(**diffusers_unet_config(cfg, args.latent))
    theirs.load_state_dict(unet_to_diffusers(ours.state_dict(), cfg))
    params = sum(p.numel() for p in ours.parameters())
    runs = {"ours": make_step(ours, True, args, device, cfg.context_dim),
            "diffusers": make_step(theirs, False, args, device, cfg.context_dim)}

    print(f"# stable_diffusion_step  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"torch {torch.__version__}, {cpu_name()}, {torch.get_num_threads()} threads, device {device}")
    print(f"UNet channels {args.channels} ({params / 1e6:.1f}M parameters), batch {args.batch} x 4 x {args.latent}^2, "
          f"{args.precision}, warmup {args.warmup}, timed {args.iters} (median)")
    print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
    times = alternate(runs, args.warmup, args.iters, device)
    ours_s, theirs_s = (times.median(name) for name in runs)
    print("| train step | ours s | ours images/s | diffusers s | diffusers images/s | ours / diffusers |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.precision} | {ours_s:.3f} | {args.batch / ours_s:.2f} | {theirs_s:.3f} | "
          f"{args.batch / theirs_s:.2f} | {ours_s / theirs_s:.3f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
