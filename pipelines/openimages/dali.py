"""DALI pipelines for OpenImages, giving loader.py's `Batch` (same images within decoder/resize rounding, same
boxes and labels, same order).

Graph, per image: DALI's COCO reader (ltrb boxes relative to the json's image size, image ids, category ids as
in the json), decode (`mixed`: nvJPEG and the hardware decoder on a GPU; `cpu` here), bilinear resize to S x S
without antialiasing (the reference's F.interpolate), then flip + normalise (ImageNet mean/std) in one
crop_mirror_normalize, and bb_flip on the boxes with the same flag. The flip commutes with a resize that
samples pixel centres, and normalising commutes with a bilinear resize, so this is loader.py's arithmetic in
another order.

Order: the reader is given the image list itself (`images=`), so each rank reads exactly loader.py's rank
slice of the (seed, epoch) permutation, and the flips come from loader.train_flip(seed, epoch, index)
through an external source: a global batch is the torch loader's whatever the loader or world size, and a
resumed run restarts mid-epoch at the same image. The price: a train pipeline is built per epoch (the
reader parses the json again; NVIDIA instead lets one reader reshuffle itself with shuffle_after_epoch, an
order no other loader can reproduce).

Bad data, as loader.py: format.read_split is the authority on annotations; when it skipped some (unknown
image or category, box without area inside its image, counted and logged once) the reader is given a copy
of the json without them, so DALI never sees an annotation the torch loader drops, and each image's box
count is checked against the split's. A JPEG that does not decode, or decodes to another size than the json
says, is an OpenImagesFormatError naming the file (DALI's own error does not name it: the step's files are
decoded again to find it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Iterator

import numpy as np
import torch

from pipelines.dali_torch import to_torch
from pipelines.openimages.format import OpenImagesFormatError, Split, labels_path, read_split
from pipelines.openimages.loader import MEAN, PAD_BOX, STD, Batch, decode, train_batches, train_flip
from pipelines.sampling import EpochLoader

# nvJPEG's hardware decoder takes nearly all baseline JPEGs on A100/H100 (NVIDIA's --dali-hw-decoder-load)
_MIXED_DECODER_ARGS = dict(hw_decoder_load=0.99)
_SIZE_THRESHOLD = 1e-6  # px; DALI drops boxes thinner than this (default 0.1): keep all that read_split keeps


def _device_id(device: str) -> int | None:
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    return torch.cuda.current_device() if device == "gpu" else None


def _annotations_for_dali(split: Split, log) -> tuple[str, str | None]:
    """(annotations file for the reader, a temporary directory to remove or None): the split's own json when
    read_split kept every annotation, else a copy holding only the ones it kept."""
    source = labels_path(split.root, split.split)
    if not split.skipped:
        return source, None
    known_images = set(split.image_ids)
    sizes = dict(zip(split.image_ids, split.sizes))
    known_categories = set(split.category_ids)

    def kept(ann) -> bool:  # the complement of read_split's skips
        if ann["image_id"] not in known_images or ann["category_id"] not in known_categories:
            return False
        h, w = sizes[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        return min(max(x + bw, 0.0), w) > min(max(x, 0.0), w) and min(max(y + bh, 0.0), h) > min(max(y, 0.0), h)

    directory = tempfile.mkdtemp(prefix=f"openimages-{split.split}-dali-")
    path = os.path.join(directory, "annotations.json")
    with open(path, "w") as f:
        json.dump({**split.coco, "annotations": [a for a in split.coco["annotations"] if kept(a)]}, f)
    if log is not None:
        log(f"{source}: DALI reads a copy without the skipped annotations ({path})")
    return path, directory


def _graph(split: Split, annotations: str, files: list[str], *, image_size: int, mixed: bool, flips=None):
    from nvidia.dali import fn, types

    jpegs, boxes, categories, image_ids = fn.readers.coco(
        file_root=os.path.join(split.root, split.split, "data"), annotations_file=annotations, images=files,
        ltrb=True, ratio=True, image_ids=True, avoid_class_remapping=True, include_iscrowd=True,
        size_threshold=_SIZE_THRESHOLD, pad_last_batch=True, name="reader")
    # (H, W, C) from the JPEG header, on the CPU whatever decodes: checked against the json's size
    decoded_hw = fn.peek_image_shape(jpegs, dtype=types.INT32)
    images = fn.decoders.image(jpegs, device="mixed" if mixed else "cpu", output_type=types.RGB,
                               **(_MIXED_DECODER_ARGS if mixed else {}))
    images = fn.resize(images, resize_x=image_size, resize_y=image_size, interp_type=types.INTERP_LINEAR,
                       antialias=False, dtype=types.FLOAT)
    mirror = 0
    if flips is not None:
        mirror = fn.external_source(source=flips, batch=False, dtype=types.INT32)
        boxes = fn.bb_flip(boxes, ltrb=True, horizontal=mirror)
    images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mirror=mirror,
                                      mean=[255 * m for m in MEAN], std=[255 * s for s in STD])
    return images, boxes, categories, image_ids, decoded_hw



class _Pipeline:
    """One DALI pipeline over a fixed list of the split's images (indices into it), in that order."""

    def __init__(self, split: Split, annotations: str, indices: list[int], *, batch_size: int, image_size: int,
                 num_threads: int, device: str, flips: list[bool] | None = None):
        from nvidia.dali import Pipeline

        self.split, self.indices, self.batch_size, self.image_size = split, indices, batch_size, image_size
        self._class_of = {c: i for i, c in enumerate(split.category_ids)}
        source = None
        if flips is not None:
            flags = np.asarray(flips, dtype=np.int32)

            def source(info):  # DALI prefetches past the list's end; those batches are never used
                return flags[(info.iteration * batch_size + info.idx_in_batch) % len(flags)]

        self._pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=_device_id(device),
                              seed=0, prefetch_queue_depth=2)
        with self._pipe:
            self._pipe.set_outputs(*_graph(split, annotations, [split.file_names[i] for i in indices],
                                           image_size=image_size, mixed=device == "gpu", flips=source))
        self._pipe.build()

    def batches(self, steps: int) -> Iterator[Batch]:
        """`steps` batches from the list's start; the last one cut to the list's end (the reader pads it)."""
        for step in range(steps):
            rows = self.indices[step * self.batch_size:(step + 1) * self.batch_size]
            try:
                images, boxes, categories, image_ids, decoded_hw = self._pipe.run()
            except RuntimeError as error:
                self._name_bad_file(step, error)
                raise
            yield self._batch(rows, to_torch(images)[: len(rows)], boxes, categories, image_ids, decoded_hw)

    def _name_bad_file(self, step: int, error: RuntimeError) -> None:
        # DALI runs ahead by its prefetch depth: the failing sample is in this step's batch or the next ones
        window = self.indices[step * self.batch_size:(step + 3) * self.batch_size]
        for i in window:
            decode(self.split.path(i))  # raises OpenImagesFormatError naming the file
        raise OpenImagesFormatError(f"{self.split.root}/{self.split.split}: DALI failed near images "
                                    f"{[self.split.file_names[i] for i in window[:4]]}...: {error}") from None

    def _batch(self, rows, images, boxes_tl, categories_tl, image_ids_tl, decoded_hw_tl) -> Batch:
        s = self.image_size
        count = max([len(self.split.labels[i]) for i in rows] + [1])
        boxes = torch.tensor(PAD_BOX).repeat(len(rows), count, 1)
        labels = torch.full((len(rows), count), -1, dtype=torch.int64)
        for j, i in enumerate(rows):
            path = self.split.path(i)
            image_id = int(np.asarray(image_ids_tl[j]).reshape(-1)[0])
            if image_id != self.split.image_ids[i]:
                raise RuntimeError(f"{path}: DALI's reader gave image id {image_id}, expected "
                                   f"{self.split.image_ids[i]} (reader order differs from the list)")
            h, w = (int(v) for v in np.asarray(decoded_hw_tl[j])[:2])
            if (h, w) != self.split.sizes[i]:
                raise OpenImagesFormatError(f"{path}: decoded {w}x{h}, the json says "
                                            f"{self.split.sizes[i][1]}x{self.split.sizes[i][0]}")
            b = np.asarray(boxes_tl[j], dtype=np.float32).reshape(-1, 4)
            c = np.asarray(categories_tl[j]).reshape(-1)
            if len(c) != len(self.split.labels[i]):
                raise OpenImagesFormatError(f"{path}: DALI's reader gave {len(c)} boxes, the json's valid "
                                            f"annotations are {len(self.split.labels[i])}")
            # ratio=True: relative to the json's size; clamped to the image as read_split clamps
            boxes[j, : len(b)] = torch.from_numpy(np.clip(b, 0.0, 1.0) * s)
            labels[j, : len(c)] = torch.tensor([self._class_of[int(k)] for k in c], dtype=torch.int64)
        sizes = torch.tensor([self.split.sizes[i] for i in rows], dtype=torch.int64)
        ids = torch.tensor([self.split.image_ids[i] for i in rows], dtype=torch.int64)
        return Batch(images, boxes, labels, ids, sizes)

    def close(self) -> None:
        del self._pipe


class _Loader:
    def __init__(self, root: str, split_name: str, log):
        self.split = read_split(root, split_name, log=log)
        self.num_samples = len(self.split)
        self._annotations, self._tmp = _annotations_for_dali(self.split, log)
        self._pipe = None

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class DaliTrainLoader(_Loader, EpochLoader):
    """loader.TrainLoader's interface (split, num_samples, iteration, and pipelines.sampling.EpochLoader's
    steps_per_epoch (= len), set_epoch(epoch, start_step))."""

    def __init__(self, root: str, *, global_batch_size: int, rank: int, world_size: int, image_size: int,
                 seed: int, num_threads: int, device: str, log=print):
        super().__init__(root, "train", log)
        self._batches = train_batches(self.split, global_batch_size, rank, world_size, seed)
        self.image_size, self.num_threads, self.device, self.seed = image_size, num_threads, device, seed

    def __iter__(self) -> Iterator[Batch]:
        epoch, steps = self._batches.epoch, len(self._batches) - self._batches.start_step
        if steps <= 0:
            return
        indices = [i for batch in self._batches for i, _ in batch]  # this rank's images from start_step on
        if self._pipe is not None:
            self._pipe.close()
        self._pipe = _Pipeline(self.split, self._annotations, indices, batch_size=self._batches.local_batch_size,
                               image_size=self.image_size, num_threads=self.num_threads, device=self.device,
                               flips=[train_flip(self.seed, epoch, i) for i in indices])
        yield from self._pipe.batches(steps)


class DaliEvalLoader(_Loader):
    """loader.EvalLoader's interface: rank r takes images r::world in order, every image once, the last batch
    partial; one pipeline for every evaluation (its reader pads the last batch, so each pass starts afresh)."""

    def __init__(self, root: str, *, batch_size: int, rank: int, world_size: int, image_size: int,
                 num_threads: int, device: str, log=print):
        super().__init__(root, "validation", log)
        self.indices = list(range(rank, self.num_samples, world_size))
        self.steps = -(-len(self.indices) // batch_size)
        if self.indices:
            self._pipe = _Pipeline(self.split, self._annotations, self.indices, batch_size=batch_size,
                                   image_size=image_size, num_threads=num_threads, device=device)

    def __iter__(self) -> Iterator[Batch]:
        if self._pipe is not None:
            yield from self._pipe.batches(self.steps)
