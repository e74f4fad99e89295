"""The torch DataLoader path for ImageNet: the reference augmentations with PIL, sharded by rank.

Per step it yields `(images, labels)`: float32 [B, 3, H, W] with MEAN_RGB subtracted per channel
(no std division, as the reference) and int64 0-based labels.

Train: every epoch is one global permutation of all records drawn from (seed, epoch); global batch k
is entries [k*G, (k+1)*G) of it and rank r takes the contiguous slice [r*L, (r+1)*L), L = G/world.
Augmentation randomness is drawn per sample from (seed, epoch, record index), so a global batch is
bit-identical whatever the world size or worker count. The last partial global batch is dropped.

Eval: rank r takes records r::world in order, every record exactly once, the last batch partial;
`local_samples` says how many this rank sees (the caller all-reduces correct/total counts).

Workers return uint8 NHWC batches (4x less inter-process traffic than float); the float conversion
and mean subtraction happen in the consuming process, on `device` when one is given.
"""

from __future__ import annotations

import io
import math
import random
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipelines.imagenet.format import MEAN_RGB, ImageNetFormatError, ImageRecord, RecordIndex, build_index
from pipelines.sampling import EpochLoader, TrainBatches
from pipelines.workers import ignore_sigterm

_PREFETCH_BATCHES_PER_WORKER = 4


def sample_distorted_bounding_box(
        rng: random.Random, height: int, width: int, bboxes: np.ndarray, *,
        min_object_covered: float = 0.1, aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
        area_range: tuple[float, float] = (0.05, 1.0), max_attempts: int = 100) -> tuple[int, int, int, int]:
    """Crop window (top, left, crop_height, crop_width) with tf.image.sample_distorted_bounding_box
    semantics: random aspect ratio and area; accepted once it covers at least `min_object_covered`
    of some box (the whole image when `bboxes`, rows ymin/xmin/ymax/xmax normalised, is empty);
    the whole image if no attempt succeeds."""
    scale = np.array([height, width, height, width], dtype=np.float64)
    boxes = np.clip(np.asarray(bboxes, dtype=np.float64).reshape(-1, 4), 0.0, 1.0) * scale
    boxes = [tuple(b) for b in boxes if b[2] > b[0] and b[3] > b[1]] or [(0.0, 0.0, height, width)]
    min_area, max_area = area_range[0] * height * width, area_range[1] * height * width
    for _ in range(max_attempts):
        aspect = rng.uniform(*aspect_ratio_range)
        # Heights whose (aspect-derived, rounded) width fits and whose area is in range.
        min_h = round(math.sqrt(min_area / aspect))
        max_h = min(round(math.sqrt(max_area / aspect)), height)
        if round(max_h * aspect) > width:
            max_h = int((width + 0.5 - 1e-7) / aspect)
        min_h = min(min_h, max_h)
        crop_h = rng.randint(min_h, max_h)
        crop_w = round(crop_h * aspect)
        if crop_h * crop_w < min_area:
            crop_h += 1
            crop_w = round(crop_h * aspect)
        if crop_h * crop_w > max_area:
            crop_h -= 1
            crop_w = round(crop_h * aspect)
        area = crop_h * crop_w
        if not (min_area <= area <= max_area and 0 < crop_h <= height and 0 < crop_w <= width):
            continue
        top, left = rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)
        for ymin, xmin, ymax, xmax in boxes:
            overlap_h = min(ymax, top + crop_h) - max(ymin, top)
            overlap_w = min(xmax, left + crop_w) - max(xmin, left)
            if overlap_h > 0 and overlap_w > 0 and \
                    overlap_h * overlap_w >= min_object_covered * (ymax - ymin) * (xmax - xmin):
                return top, left, crop_h, crop_w
    return 0, 0, height, width


def decode_rgb(jpeg: bytes, where: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(jpeg))
        image.load()  # decode here, so a corrupt JPEG fails with the record's name
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageNetFormatError(f"{where}: cannot decode 'image/encoded': {error}") from None
    return image if image.mode == "RGB" else image.convert("RGB")  # grey and CMYK JPEGs exist


class TrainTransform:
    """Crop window from sample_distorted_bounding_box, random flip, bilinear resize to size x size."""

    def __init__(self, image_size: int, seed: int):
        self.image_size, self.seed = image_size, seed

    def __call__(self, record: ImageRecord, where: str, index: int, epoch: int) -> np.ndarray:
        rng = random.Random(f"imagenet-train:{self.seed}:{epoch}:{index}")
        image = decode_rgb(record.jpeg, where)
        top, left, height, width = sample_distorted_bounding_box(
            rng, image.height, image.width, record.bboxes)
        size = (self.image_size, self.image_size)
        image = image.resize(size, Image.BILINEAR, box=(left, top, left + width, top + height))
        if rng.random() < 0.5:  # flipping after the resize equals flipping before, and is cheaper
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(image)


class EvalTransform:
    """Short side to resize_size (bilinear, aspect kept, long side truncated as the reference),
    centre crop image_size. The resize reads only the crop's source region (same samples)."""

    def __init__(self, image_size: int, resize_size: int):
        if resize_size < image_size:
            raise ValueError(f"resize_size {resize_size} is smaller than image_size {image_size}")
        self.image_size, self.resize_size = image_size, resize_size

    def __call__(self, record: ImageRecord, where: str, index: int, epoch: int) -> np.ndarray:
        image = decode_rgb(record.jpeg, where)
        width, height = image.size
        short = min(width, height)
        new_w, new_h = self.resize_size * width // short, self.resize_size * height // short
        top, left = (new_h - self.image_size) // 2, (new_w - self.image_size) // 2
        scale_x, scale_y = width / new_w, height / new_h
        box = (left * scale_x, top * scale_y,
               (left + self.image_size) * scale_x, (top + self.image_size) * scale_y)
        return np.asarray(image.resize((self.image_size, self.image_size), Image.BILINEAR, box=box))


class _RecordDataset(Dataset):
    """Map-style dataset keyed by (record index, epoch) so persistent workers need no epoch state."""

    def __init__(self, index: RecordIndex, transform):
        self.index, self.transform = index, transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, int]:
        i, epoch = key
        record = self.index.record(i)
        return self.transform(record, self.index.where(i), i, epoch), record.label


def _collate(samples: Sequence[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.stack([image for image, _ in samples]))
    return images, torch.tensor([label for _, label in samples], dtype=torch.int64)


class EvalBatches:
    """Batch sampler: records rank::world in order, last batch partial."""

    def __init__(self, num_records: int, batch_size: int, rank: int, world_size: int):
        if not 0 <= rank < world_size or batch_size <= 0:
            raise ValueError(f"bad eval sharding: rank {rank}, world {world_size}, batch {batch_size}")
        self.records = range(rank, num_records, world_size)
        self.local_batch_size, self.epoch, self.start_step = batch_size, 0, 0

    def __len__(self) -> int:
        return math.ceil(len(self.records) / self.local_batch_size)

    @property
    def local_samples(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for start in range(0, len(self.records), self.local_batch_size):
            yield [(i, 0) for i in self.records[start:start + self.local_batch_size]]


class ImageNetLoader(EpochLoader):
    """Iterate with `for images, labels in loader` after `loader.set_epoch(epoch)`.

    num_samples: records in the split; local_samples: samples this rank yields per epoch; local_batch_size;
    steps_per_epoch (= len) and set_epoch: pipelines.sampling.EpochLoader."""

    def __init__(self, index: RecordIndex, batches: TrainBatches | EvalBatches, transform, *,
                 num_workers: int, device: torch.device | str | None = None):
        self.num_samples = len(index)
        self._batches = batches
        self._device = torch.device(device) if device is not None else None
        self._mean = torch.tensor(MEAN_RGB, dtype=torch.float32).view(1, 3, 1, 1)
        self._loader = DataLoader(
            _RecordDataset(index, transform), batch_sampler=batches, collate_fn=_collate,
            num_workers=num_workers, persistent_workers=num_workers > 0, worker_init_fn=ignore_sigterm,
            prefetch_factor=_PREFETCH_BATCHES_PER_WORKER if num_workers > 0 else None,
            pin_memory=self._device is not None and self._device.type == "cuda")

    @property
    def local_samples(self) -> int:
        return self._batches.local_samples

    @property
    def local_batch_size(self) -> int:
        return self._batches.local_batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images_u8, labels in self._loader:
            if self._device is not None:
                images_u8 = images_u8.to(self._device, non_blocking=True)
                labels = labels.to(self._device, non_blocking=True)
                if self._mean.device != images_u8.device:
                    self._mean = self._mean.to(images_u8.device)
            images = images_u8.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
            yield images.sub_(self._mean), labels


def build_train_loader(data_dir: str, *, global_batch_size: int, rank: int, world_size: int,
                       image_size: int, seed: int, num_workers: int, index_dir: str | None = None,
                       epoch: int = 0, device: torch.device | str | None = None) -> ImageNetLoader:
    index = build_index(data_dir, "train", index_dir)
    batches = TrainBatches(len(index), global_batch_size, rank, world_size, seed)
    loader = ImageNetLoader(index, batches, TrainTransform(image_size, seed),
                            num_workers=num_workers, device=device)
    loader.set_epoch(epoch)
    return loader


def build_eval_loader(data_dir: str, *, batch_size: int, rank: int, world_size: int, image_size: int,
                      resize_size: int, num_workers: int, index_dir: str | None = None,
                      device: torch.device | str | None = None) -> ImageNetLoader:
    index = build_index(data_dir, "validation", index_dir)
    return ImageNetLoader(index, EvalBatches(len(index), batch_size, rank, world_size),
                          EvalTransform(image_size, resize_size), num_workers=num_workers, device=device)
