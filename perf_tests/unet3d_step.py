"""Train-step and sliding-window-eval time of our 3D U-Net against MONAI's DynUNet of the same shape.

MONAI's DynUNet with instance norm (affine), ReLU, transposed convs with bias and no deep supervision is the
same graph as models/unet3d/model.py (tests/models/test_unet3d_model.py loads our weights into it and gets our
outputs), so the two differ only in how they are written. Train step: forward + the reference's Dice+CE loss +
backward + SGD (Nesterov) step, same batch, in three modes:

    fp32            NCDHW, fp32
    channels_last   NDHWC model and input (what the benchmark runs, train.channels_last)
    bf16            autocast to bfloat16, NDHWC

Eval: our sliding_window_inference (windows batched `--window-batch` at a time) against MONAI's
sliding_window_inference (sw_batch_size the same), Gaussian map, overlap 0.5, on one volume, our model.

Each measurement: `--warmup` untimed runs per side, then `--iters` timed ones alternating between the two
sides (so load from other processes on a shared machine hits both alike); median seconds and ours / MONAI
(< 1: ours is faster). Defaults are sized for a 2-core CPU (the real filters on 64^3 crops).

Samples/s per GPU: on CUDA at the real per-GPU shape (NVIDIA's 8-GPU point: batch 7 of 128^3 crops, here bf16
NDHWC) the train table is followed by NVIDIA's v4.0 throughput as the named baseline (spec unet3d.md, Figures:
72.3 samples/s per H100, 76.4 per H200; MXNet, fp16, CUDA graphs, DALI on the GPU) and ours / NVIDIA for the GPU
the run is on. Our step here has no data pipeline, CUDA graph or compile, so it is an upper bound of the model
step's share, not a time-to-train:

    python perf_tests/unet3d_step.py --device cuda --batch 7 --crop 128 --roi 128 --modes bf16 \
        --volume 256,320,320 --window-batch 4 --warmup 3 --iters 10

    python perf_tests/unet3d_step.py [--filters 32,64,128,256,320 --crop 64 --batch 1 --volume 80,96,96]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import alternate, cpu_name  # noqa: E402

from models.unet3d.inference import sliding_window_inference  # noqa: E402
from models.unet3d.losses import dice_ce_loss  # noqa: E402
from models.unet3d.model import UNet3DModelConfig, build_unet3d  # noqa: E402
from models.unet3d.schedule import build_sgd  # noqa: E402

MODES = ("fp32", "channels_last", "bf16")
# NVIDIA v4.0 train throughput per GPU at batch 7 x 128^3 (spec unet3d.md, Figures; 577 samples/s per 8-GPU node).
NVIDIA_SAMPLES_PER_S = {"H100": 72.3, "H200": 76.4}
NVIDIA_SHAPE = (7, 128)  # (per-GPU batch, crop side) those figures are for


def nvidia_baseline(device: torch.device, batch: int, crop: int) -> tuple[str, float] | None:
    """(GPU name, NVIDIA's samples/s on it) when this run is comparable: CUDA, an H100 or H200, NVIDIA's shape."""
    if device.type != "cuda" or (batch, crop) != NVIDIA_SHAPE:
        return None
    name = torch.cuda.get_device_name(device)
    return next(((gpu, rate) for gpu, rate in NVIDIA_SAMPLES_PER_S.items() if gpu in name), None)


def dynunet(filters: tuple[int, ...]) -> torch.nn.Module:
    from monai.networks.nets import DynUNet

    return DynUNet(3, 1, 3, kernel_size=[3] * (len(filters) + 1), strides=[1] + [2] * len(filters),
                   upsample_kernel_size=[2] * len(filters), filters=[*filters, filters[-1]],
                   norm_name=("INSTANCE", {"affine": True}), act_name="relu", res_block=False, trans_bias=True)


def make_step(model: torch.nn.Module, mode: str, args, device: torch.device):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 1, args.crop, args.crop, args.crop, generator=g).to(device)
    labels = torch.randint(0, 3, images.shape, generator=g, dtype=torch.uint8).to(device)
    model = model.to(device).train()
    if mode != "fp32":
        model = model.to(memory_format=torch.channels_last_3d)
        images = images.contiguous(memory_format=torch.channels_last_3d)
    optimizer = build_sgd(model.parameters(), momentum=0.9, weight_decay=0.0)
    for group in optimizer.param_groups:
        group["lr"] = 1e-3

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext():
            logits = model(images)
        dice_ce_loss(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def compare(runs: dict, args, device) -> tuple[float, float, float, float]:
    """(ours median s, theirs median s, ours first s, theirs first s)."""
    times = alternate(runs, args.warmup, args.iters, device)
    return times.median("ours"), times.median("monai"), times.first("ours"), times.first("monai")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filters", default="32,64,128,256,320")
    parser.add_argument("--crop", type=int, default=64, help="training crop side (128 for the real benchmark)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--volume", default="80,96,96", help="eval volume D,H,W")
    parser.add_argument("--roi", type=int, default=64, help="sliding-window side (128 for the real benchmark)")
    parser.add_argument("--window-batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    filters = tuple(int(f) for f in args.filters.split(","))

    print(f"# unet3d_step  {datetime.datetime.now().isoformat(timespec='seconds')}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both sides alike: cuDNN picks its 3D conv algorithms per shape
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}, device {device}")
    else:
        print(f"torch {torch.__version__}, {cpu_name()}, {torch.get_num_threads()} threads, device {device}")
    print(f"filters {filters}, train batch {args.batch} x 1 x {args.crop}^3, eval volume {args.volume} with ROI "
          f"{args.roi}^3 ({args.window_batch} windows per forward), warmup {args.warmup}, timed {args.iters} (median)")
    print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
    print("| train step | ours s | ours samples/s | DynUNet s | DynUNet samples/s | ours / MONAI "
          "| first step ours / MONAI s |")
    print("|---|---|---|---|---|---|---|")
    throughput = {}
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        runs = {"ours": make_step(build_unet3d(UNet3DModelConfig(filters=filters)), mode, args, device),
                "monai": make_step(dynunet(filters), mode, args, device)}
        ours, theirs, ours_first, theirs_first = compare(runs, args, device)
        throughput[mode] = (args.batch / ours, args.batch / theirs)
        print(f"| {mode} | {ours:.2f} | {args.batch / ours:.2f} | {theirs:.2f} | {args.batch / theirs:.2f} | "
              f"{ours / theirs:.3f} | {ours_first:.1f} / {theirs_first:.1f} |", flush=True)
        del runs
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next mode's two models start from free memory

    baseline = nvidia_baseline(device, args.batch, args.crop)
    per_gpu = ", ".join(f"{gpu} {rate}" for gpu, rate in NVIDIA_SAMPLES_PER_S.items())
    print(f"\nbaseline NVIDIA v4.0 (spec unet3d.md): samples/s per GPU at batch {NVIDIA_SHAPE[0]} x "
          f"{NVIDIA_SHAPE[1]}^3: {per_gpu}")
    if baseline is None:
        print("(not comparable here: needs CUDA on an H100 or H200 at --batch 7 --crop 128)")
    else:
        gpu, rate = baseline
        print(f"\n| samples/s per GPU ({gpu}) | ours | DynUNet | NVIDIA v4.0 | ours / NVIDIA |")
        print("|---|---|---|---|---|")
        for mode, (ours_rate, monai_rate) in throughput.items():
            print(f"| {mode} | {ours_rate:.1f} | {monai_rate:.1f} | {rate} | {ours_rate / rate:.3f} |")

    from monai.inferers import sliding_window_inference as monai_sliding_window

    model = build_unet3d(UNet3DModelConfig(filters=filters)).to(device).eval()
    model = model.to(memory_format=torch.channels_last_3d)
    volume = torch.randn(1, 1, *(int(v) for v in args.volume.split(",")), generator=torch.Generator().manual_seed(1))
    volume = volume.to(device)
    roi = (args.roi,) * 3

    def forward(windows):
        return model(windows.contiguous(memory_format=torch.channels_last_3d))

    @torch.no_grad()
    def ours_eval():
        sliding_window_inference(forward, volume, roi, overlap=0.5, sigma_scale=0.125, padding_value=-2.2,
                                 window_batch=args.window_batch)

    @torch.no_grad()
    def monai_eval():
        monai_sliding_window(volume, roi, args.window_batch, forward, overlap=0.5, mode="gaussian",
                             sigma_scale=0.125, cval=-2.2)

    ours, theirs, _, _ = compare({"ours": ours_eval, "monai": monai_eval}, args, device)
    print("\n| sliding-window eval | ours s | MONAI s | ours / MONAI |")
    print("|---|---|---|---|")
    print(f"| one {args.volume} volume | {ours:.2f} | {theirs:.2f} | {ours / theirs:.3f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
