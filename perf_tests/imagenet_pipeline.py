"""Images/s of the ImageNet train input pipelines on this machine's CPU, on the same synthetic data:

  (a) DALI, CPU operators (pipelines/imagenet/dali.py)
  (b) our torch DataLoader path (pipelines/imagenet/loader.py)
  (c) baseline: JPEG files + torchvision ImageFolder, PIL decode, RandomResizedCrop, flip, ToTensor

All produce image_size x image_size batches; (a) and (b) also subtract the mean, (c) divides by 255.
Timing starts once the first batch has arrived (worker start-up and pipeline build excluded) and
runs over `--epochs` passes. Images are ImageNet-like in size (sides 256..500 by default).

    python perf_tests/imagenet_pipeline.py [--images 512] [--workers 2] [--data DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from machine import cpu_name  # noqa: E402 (perf_tests/machine.py, beside this script)
from torch.utils.data import DataLoader  # noqa: E402

from pipelines.imagenet.format import build_index  # noqa: E402
from pipelines.imagenet.loader import build_train_loader  # noqa: E402
from pipelines.imagenet.synthetic import write_synthetic_imagenet  # noqa: E402


def images_per_second(batches, epochs: int, set_epoch=None) -> float:
    count, start = 0, None
    for epoch in range(epochs):
        if set_epoch:
            set_epoch(epoch)
        for images, _ in batches:
            if start is None:
                start = time.perf_counter()  # the first batch pays for start-up; not counted
            else:
                count += len(images)
    return count / (time.perf_counter() - start)


def export_jpeg_folder(data_dir: str, out_dir: str) -> None:
    """The same train records as class-folder JPEG files, for the torchvision baseline."""
    index = build_index(data_dir, "train")
    for i in range(len(index)):
        record = index.record(i)
        folder = os.path.join(out_dir, f"class{record.label:04d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:07d}.jpg"), "wb") as f:
            f.write(record.jpeg)


def run_baseline(folder: str, args) -> float:
    from torchvision import datasets, transforms
    transform = transforms.Compose([transforms.RandomResizedCrop(args.image_size),
                                    transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    loader = DataLoader(datasets.ImageFolder(folder, transform), batch_size=args.batch_size, shuffle=True,
                        drop_last=True, num_workers=args.workers, persistent_workers=args.workers > 0)
    return images_per_second(loader, args.epochs)


def run_torch(data_dir: str, args) -> float:
    loader = build_train_loader(data_dir, global_batch_size=args.batch_size, rank=0, world_size=1,
                                image_size=args.image_size, seed=0, num_workers=args.workers)
    return images_per_second(loader, args.epochs, loader.set_epoch)


def run_dali(data_dir: str, index_dir: str, args) -> float:
    from pipelines.imagenet.dali import build_dali_train_loader
    loader = build_dali_train_loader(data_dir, global_batch_size=args.batch_size, rank=0, world_size=1,
                                     image_size=args.image_size, seed=0, index_dir=index_dir,
                                     num_threads=args.workers, device="cpu")
    return images_per_second(loader, args.epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="existing ImageNet-layout directory (default: synthesize one)")
    parser.add_argument("--images", type=int, default=512, help="train images to synthesize")
    parser.add_argument("--min-side", type=int, default=256)
    parser.add_argument("--max-side", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="DataLoader workers for (b) and (c), DALI threads for (a)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data or os.path.join(scratch, "tfrecords")
        if not args.data:
            classes = 8
            write_synthetic_imagenet(data_dir, num_classes=classes, train_per_class=args.images // classes,
                                     val_per_class=1, num_train_shards=4, num_val_shards=1,
                                     min_side=args.min_side, max_side=args.max_side, seed=0)
        folder = os.path.join(scratch, "jpeg")
        export_jpeg_folder(data_dir, folder)
        num_images = len(build_index(data_dir, "train"))
        results = {"(c) torchvision ImageFolder baseline": run_baseline(folder, args),
                   "(b) torch loader (loader.py)": run_torch(data_dir, args),
                   "(a) DALI CPU (dali.py)": run_dali(data_dir, os.path.join(scratch, "index"), args)}

    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"data: {num_images} train JPEGs, sides {args.min_side}..{args.max_side}; output "
          f"{args.image_size}x{args.image_size}, batch {args.batch_size}, {args.workers} workers/threads, "
          f"{args.epochs} epochs")
    baseline = results["(c) torchvision ImageFolder baseline"]
    print(f"| {'pipeline':<38} | {'images/s':>9} | {'vs baseline':>11} |")
    print(f"|{'-' * 40}|{'-' * 11}|{'-' * 13}|")
    for name, rate in sorted(results.items()):
        print(f"| {name:<38} | {rate:9.1f} | {rate / baseline:10.2f}x |")


if __name__ == "__main__":
    main()
