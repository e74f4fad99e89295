"""The torch DataLoader path for OpenImages: the reference's transforms, sharded by rank.

Each batch is `Batch(images [B, 3, S, S] float32 normalised, boxes [B, G, 4] xyxy in input pixels, labels
[B, G] int64 with -1 for padding, image_ids [B], sizes [B, 2] original (height, width))`.

Per image, in the reference's order: decode, to float in [0, 1], horizontal flip with its boxes (train,
p 0.5), normalise (ImageNet mean/std), bilinear resize to S x S without keeping the aspect
(align_corners=False, as the reference's F.interpolate), boxes scaled by the same factors.

Train: one global permutation per epoch from (seed, epoch); global batch k is entries [k*G, (k+1)*G) and rank
r takes the contiguous slice [r*L, (r+1)*L); the flip is drawn from (seed, epoch, image index); so a global
batch is identical whatever the world size. The last partial global batch is dropped. Eval: rank r takes
images r::world in order, every image once, the last batch partial.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from pipelines.openimages.format import OpenImagesFormatError, Split, read_split
from pipelines.sampling import EpochLoader
from pipelines.sampling import TrainBatches as SharedTrainBatches
from pipelines.workers import ignore_sigterm

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PAD_BOX = (0.0, 0.0, 1.0, 1.0)  # padding rows carry label -1; a box with area keeps the box coder finite


class Batch(NamedTuple):
    images: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    image_ids: torch.Tensor
    sizes: torch.Tensor


def decode(path: str) -> torch.Tensor:
    """uint8 [3, H, W] RGB; a missing or corrupt file is an OpenImagesFormatError naming it."""
    try:
        return decode_jpeg(read_file(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError) as error:
        raise OpenImagesFormatError(f"{path}: cannot read/decode the JPEG ({error}); "
                                    f"run pipelines/openimages/prepare/verify_dataset.py") from None


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)


def transform(image_u8: torch.Tensor, boxes: torch.Tensor, flip: bool, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, h, w = image_u8.shape
    image = image_u8.float() / 255.0
    if flip:
        image, boxes = image.flip(-1), flip_boxes(boxes, w)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    image = F.interpolate(((image - mean) / std)[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    scale = torch.tensor([size / w, size / h, size / w, size / h])
    return image, boxes * scale


def train_flip(seed: int, epoch: int, index: int) -> bool:
    """The horizontal flip of training image `index` in `epoch`: a function of (seed, epoch, index) only, so any
    loader (this one, dali.py) on any number of ranks or workers draws the same."""
    return random.Random(f"openimages-train:{seed}:{epoch}:{index}").random() < 0.5


class _ImageDataset(Dataset):
    """Keyed by (image index, epoch) so workers need no epoch state; the flip comes from (seed, epoch, index)."""

    def __init__(self, split: Split, size: int, train: bool, seed: int):
        self.split, self.size, self.train, self.seed = split, size, train, seed

    def __len__(self) -> int:
        return len(self.split)

    def flip(self, i: int, epoch: int) -> bool:
        return self.train and train_flip(self.seed, epoch, i)

    def __getitem__(self, key: tuple[int, int]):
        i, epoch = key
        image = decode(self.split.path(i))
        boxes = torch.from_numpy(self.split.boxes[i])
        h, w = image.shape[1:]
        if (h, w) != self.split.sizes[i]:
            # the json's size scales the boxes' clamp; the decoded one the image: they must agree
            raise OpenImagesFormatError(f"{self.split.path(i)}: decoded {w}x{h}, the json says "
                                        f"{self.split.sizes[i][1]}x{self.split.sizes[i][0]}")
        image, boxes = transform(image, boxes, self.flip(i, epoch), self.size)
        return image, boxes, torch.from_numpy(self.split.labels[i]), self.split.image_ids[i], (h, w)


def collate(samples) -> Batch:
    g = max(len(s[1]) for s in samples)
    boxes = torch.tensor(PAD_BOX).repeat(len(samples), g, 1)
    labels = torch.full((len(samples), g), -1, dtype=torch.int64)
    for j, (_, b, c, _, _) in enumerate(samples):
        boxes[j, : len(b)], labels[j, : len(c)] = b, c
    return Batch(torch.stack([s[0] for s in samples]), boxes, labels,
                 torch.tensor([s[3] for s in samples], dtype=torch.int64),
                 torch.tensor([s[4] for s in samples], dtype=torch.int64))


class TrainBatches(SharedTrainBatches):
    """Rank `rank`'s image indices of each global batch of an epoch, as lists of (index, epoch): the shared
    sampler with this pipeline's own (torch) permutation, which the recorded golden losses were drawn with."""

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_records, generator=g).tolist()


class TrainLoader(EpochLoader):
    def __init__(self, root: str, *, global_batch_size: int, rank: int, world_size: int, image_size: int,
                 seed: int, num_workers: int, log=print):
        self.split = read_split(root, "train", log=log)
        self.num_samples = len(self.split)
        self._batches = train_batches(self.split, global_batch_size, rank, world_size, seed)
        self.loader = DataLoader(_ImageDataset(self.split, image_size, True, seed), batch_sampler=self._batches,
                                 num_workers=num_workers, collate_fn=collate, persistent_workers=num_workers > 0,
                                 worker_init_fn=ignore_sigterm)

    def __iter__(self):
        return iter(self.loader)


def train_batches(split: Split, global_batch_size: int, rank: int, world_size: int, seed: int) -> TrainBatches:
    if len(split) < global_batch_size:
        raise OpenImagesFormatError(f"{split.root}/{split.split}: {len(split)} images, fewer than one global batch "
                                    f"of {global_batch_size}")
    return TrainBatches(len(split), global_batch_size, rank, world_size, seed)


class EvalLoader:
    def __init__(self, root: str, *, batch_size: int, rank: int, world_size: int, image_size: int,
                 num_workers: int, log=print):
        self.split = read_split(root, "validation", log=log)
        self.num_samples = len(self.split)
        mine = list(range(rank, self.num_samples, world_size))
        batches = [[(i, 0) for i in mine[k:k + batch_size]] for k in range(0, len(mine), batch_size)]
        self.loader = DataLoader(_ImageDataset(self.split, image_size, False, 0), batch_sampler=batches,
                                 num_workers=num_workers, collate_fn=collate, persistent_workers=num_workers > 0,
                                 worker_init_fn=ignore_sigterm)

    def __iter__(self):
        return iter(self.loader)
