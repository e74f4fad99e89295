"""Images/s of the OpenImages training input: the DALI pipeline (CPU operators here; `--device gpu` for nvJPEG
and the GPU resize) against the torch DataLoader path (torchvision decode_jpeg, F.interpolate), same images,
same order, same output (tests/pipelines/test_openimages_dali.py), in the same run.

Data: a synthetic tree in the real layout, `--images` JPEGs of OpenImages-like sizes (sides drawn in
[--min-side, --max-side]; the real images are mostly 1024 on the long side), resized to `--size` (800 in
the benchmark). Each loader reads `--epochs` epochs at `--batch` images a step with `--workers` threads or
processes; timed from the epoch's first request to its last batch, so DALI's per-epoch pipeline build (its
reader is given the epoch's order) is counted. The first epoch of each is untimed (file cache, thread start).

    python perf_tests/ssd_pipeline.py [--device gpu --workers 8 --images 1024]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name  # noqa: E402

from pipelines.openimages.dali import DaliTrainLoader  # noqa: E402
from pipelines.openimages.loader import TrainLoader  # noqa: E402
from pipelines.openimages.synthetic import write_synthetic_openimages  # noqa: E402


def epoch_seconds(loader, epoch: int) -> float:
    start = time.perf_counter()
    loader.set_epoch(epoch)
    for batch in loader:
        batch.images.sum().item()  # the batch is really there (a GPU one synchronised)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--min-side", type=int, default=600)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one untimed")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_synthetic_openimages(root, classes=6, train_images=args.images, val_images=1, min_side=args.min_side,
                                   max_side=args.max_side, max_objects=4, seed=0)
        common = dict(global_batch_size=args.batch, rank=0, world_size=1, image_size=args.size, seed=0, log=None)
        loaders = {"dali": DaliTrainLoader(root, num_threads=args.workers, device=args.device, **common),
                   "torch": TrainLoader(root, num_workers=args.workers, **common)}
        print(f"# ssd_pipeline  {datetime.datetime.now().isoformat(timespec='seconds')}")
        print(f"{cpu_name()}, {args.images} JPEGs of {args.min_side}-{args.max_side} px -> {args.size}^2, batch "
              f"{args.batch}, {args.workers} workers, DALI on {args.device}, median of {args.epochs} epochs")
        print(f"load average at start: {os.getloadavg()[0]:.2f}\n")
        seconds = {name: [] for name in loaders}
        for epoch in range(args.epochs + 1):
            for name, loader in loaders.items():  # alternating, so load from other processes hits both alike
                s = epoch_seconds(loader, epoch)
                if epoch:
                    seconds[name].append(s)
        images = args.images // args.batch * args.batch
        print("| loader | s per epoch | images/s |")
        print("|---|---|---|")
        for name, values in seconds.items():
            print(f"| {name} | {statistics.median(values):.2f} | {images / statistics.median(values):.1f} |")
        ratio = statistics.median(seconds["torch"]) / statistics.median(seconds["dali"])
        print(f"\nDALI / torch images/s: {ratio:.2f}")
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
        loaders["dali"].close()


if __name__ == "__main__":
    main()
