"""DALI pipelines for the ImageNet TFRecords, giving the same tensors as loader.py.

`(images, labels)` per step: float32 NCHW with MEAN_RGB subtracted (no std division) and int64
0-based labels, as torch tensors on the GPU when DALI decodes there ("mixed": nvJPEG plus the
hardware decoder), on the CPU otherwise. DALI is imported only inside the builders, so nothing else
in the repository needs it installed.

Differences from the torch path, both allowed by the rules and both what NVIDIA's submission does:
- the train crop ignores stored bounding boxes (random area [0.05, 1], aspect [3/4, 4/3], 100 tries,
  i.e. sample_distorted_bounding_box with the whole image as the box);
- order: each rank reads its contiguous shard of the records through a shuffle buffer; steps per
  epoch are still N // global_batch_size on every rank, so ranks never disagree on the step count.
Eval reproduces loader.py's arithmetic (short side truncated, floor-centred crop, the resize reads
only the crop's source region), so on the CPU both paths agree to within one grey level.

DALI's tfrecord reader checks no CRC: a flipped bit in a label or a JPEG would reach training
silently. So the builders index with build_index(verify=True): every record of every shard is checked
once (length CRC, data CRC, complete) when its index is built, and the result is cached beside the
index (format.py); a corrupt shard fails the build with an error naming the file, the record's
number and offset, and what is wrong.
"""

from __future__ import annotations

from typing import Iterator

import torch

from pipelines.dali_torch import to_torch
from pipelines.imagenet.format import (
    IMAGE_KEY,
    LABEL_KEY,
    MEAN_RGB,
    NUM_CLASSES,
    ImageNetFormatError,
    RecordIndex,
    build_index,
)

# nvJPEG buffers sized for the largest ImageNet image so they are never regrown mid-run (the values
# DALI's own ResNet-50 example uses).
_MIXED_DECODER_ARGS = dict(device_memory_padding=211_025_920, host_memory_padding=140_544_512,
                           preallocate_width_hint=5980, preallocate_height_hint=6430,
                           hw_decoder_load=0.99)  # A100/H100: nearly all baseline JPEGs on the HW decoder


def _device_id(device: str | None) -> int | None:
    """DALI device id: the current CUDA device, or None for a CPU-only pipeline."""
    if device is None:
        device = "gpu" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    return torch.cuda.current_device() if device == "gpu" else None


def _read(index: RecordIndex, *, rank: int, world_size: int, train: bool, shuffle_buffer: int):
    import nvidia.dali.tfrecord as tfrec
    from nvidia.dali import fn
    if index.index_files is None:
        raise ValueError("the DALI reader needs index files: build the index with an index_dir")
    inputs = fn.readers.tfrecord(
        path=index.shards, index_path=index.index_files, name="reader",
        features={IMAGE_KEY: tfrec.FixedLenFeature((), tfrec.string, ""),
                  # DALI 2.4 fills a missing int64 feature with stale memory, not the default.
                  # VarLen at least makes a batch mixing labelled and unlabelled records fail
                  # (DaliLoader then finds the record); a batch with no label at all is caught
                  # only if the stale value is out of range: verify_dataset.sh checks every record.
                  LABEL_KEY: tfrec.VarLenFeature(tfrec.int64, 0)},
        shard_id=rank, num_shards=world_size, random_shuffle=train, initial_fill=shuffle_buffer,
        pad_last_batch=not train, stick_to_shard=not train)
    jpegs = inputs[IMAGE_KEY]
    return jpegs, inputs[LABEL_KEY], fn.get_property(jpegs, key="source_info")


def _normalize(images, mirror=None):
    from nvidia.dali import fn, types
    return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=list(MEAN_RGB),
                                    std=[1.0, 1.0, 1.0], **({} if mirror is None else {"mirror": mirror}))


def _train_graph(jpegs, *, image_size: int, mixed: bool):
    from nvidia.dali import fn, types
    images = fn.decoders.image_random_crop(  # decodes only the crop window (ROI decode)
        jpegs, device="mixed" if mixed else "cpu", output_type=types.RGB, random_area=[0.05, 1.0],
        random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=100, **(_MIXED_DECODER_ARGS if mixed else {}))
    images = fn.resize(images, resize_x=image_size, resize_y=image_size, interp_type=types.INTERP_LINEAR)
    return _normalize(images, mirror=fn.random.coin_flip(probability=0.5))


def _eval_graph(jpegs, *, image_size: int, resize_size: int, mixed: bool):
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    def as_float(x):
        return fn.cast(x, dtype=types.FLOAT)

    # fn.resize(resize_shorter=) rounds the long side; the reference truncates it, so the output size
    # and the centre-crop window are computed here from the JPEG header, in integers like loader.py.
    shape = fn.peek_image_shape(jpegs, dtype=types.INT32)
    height, width = shape[0], shape[1]
    short = dmath.min(height, width)
    new_h, new_w = resize_size * height // short, resize_size * width // short
    top, left = as_float((new_h - image_size) // 2), as_float((new_w - image_size) // 2)
    scale_y, scale_x = as_float(height) / as_float(new_h), as_float(width) / as_float(new_w)
    images = fn.decoders.image(jpegs, device="mixed" if mixed else "cpu", output_type=types.RGB,
                               **(_MIXED_DECODER_ARGS if mixed else {}))
    images = fn.resize(images, size=[image_size, image_size], interp_type=types.INTERP_LINEAR,
                       roi_start=fn.stack(top * scale_y, left * scale_x), roi_relative=False,
                       roi_end=fn.stack((top + image_size) * scale_y, (left + image_size) * scale_x))
    return _normalize(images)


def _pipeline(graph, index: RecordIndex, *, batch_size: int, rank: int, world_size: int, train: bool,
              seed: int, num_threads: int, device: str | None, prefetch_queue_depth: int,
              shuffle_buffer: int = 1024, **graph_args):
    from nvidia.dali import Pipeline
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    device_id = _device_id(device)
    # Distinct per rank: each rank shuffles its own shard and draws its own augmentations.
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                    seed=(seed * 65_537 + rank) % 2**31, prefetch_queue_depth=prefetch_queue_depth)
    with pipe:
        jpegs, labels, source_info = _read(index, rank=rank, world_size=world_size, train=train,
                                           shuffle_buffer=shuffle_buffer)
        pipe.set_outputs(graph(jpegs, mixed=device_id is not None, **graph_args), labels, source_info)
    pipe.build()
    return pipe


def _labels(labels_tl, source_info_tl) -> torch.Tensor:
    import numpy as np
    labels = []
    for i in range(len(labels_tl)):
        value = np.asarray(labels_tl[i]).reshape(-1)
        if value.size != 1 or not 1 <= value[0] <= NUM_CLASSES:
            where = np.asarray(source_info_tl[i]).tobytes().decode(errors="replace")
            raise ImageNetFormatError(f"{where}: feature '{LABEL_KEY}' missing or invalid: DALI read "
                                      f"{value.tolist()}, expected one value in 1..{NUM_CLASSES}")
        labels.append(int(value[0]) - 1)
    return torch.tensor(labels, dtype=torch.int64)



def _shard_records(num_records: int, rank: int, world_size: int) -> range:
    """The records DALI's reader gives shard `rank`: a contiguous range."""
    return range(num_records * rank // world_size, num_records * (rank + 1) // world_size)


class DaliLoader:
    """Same interface as loader.ImageNetLoader: num_samples, steps_per_epoch (= len), local_samples,
    local_batch_size, set_epoch, iteration.

    DALI's reader keeps its own shuffled order from epoch to epoch, a state no checkpoint holds. So a process that
    starts at a later epoch or mid-epoch (a resumed run; the first set_epoch says so) rebuilds its train pipeline
    with a seed of (seed, epoch) instead of replaying epoch 0's order, and yields only the rest of that epoch's
    steps without reading the skipped ones (decoding them would cost up to an epoch of JPEGs in the timed
    region). Its samples are then a fresh draw, not the uninterrupted run's: resumed runs are not submitted.

    The shards' CRCs were checked when the index was built (build_index(verify=True)). DALI cannot
    always say which record broke it (e.g. a JPEG that does not decode); when the pipeline fails,
    this rank's records are read with the checking reader so the error names the file."""

    def __init__(self, pipe, index: RecordIndex, *, rank: int, world_size: int, steps_per_epoch: int,
                 local_samples: int, local_batch_size: int, reseed=None):
        self._pipe, self._index = pipe, index
        self._records = _shard_records(len(index), rank, world_size)
        self.num_samples, self.steps_per_epoch = len(index), steps_per_epoch
        self.local_samples, self.local_batch_size = local_samples, local_batch_size
        self._reseed = reseed  # epoch -> a pipeline seeded for it (train); None: the order never matters (eval)
        self._skip, self._started = 0, False

    def _run(self):
        try:
            return self._pipe.run()
        except RuntimeError as dali_error:
            for i in self._records:
                self._index.record(i)  # raises, naming the file, at the first bad record
            raise dali_error

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step < self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside an epoch of {self.steps_per_epoch} steps")
        if not self._started and (epoch or start_step) and self._reseed is not None:
            self._pipe = self._reseed(epoch)
        self._started = True
        self._skip = start_step

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skip, self._skip = self._skip, 0
        remaining = self.local_samples - skip * self.local_batch_size
        for _ in range(skip, self.steps_per_epoch):
            images_tl, labels_tl, source_info_tl = self._run()
            images, labels = to_torch(images_tl), _labels(labels_tl, source_info_tl)
            keep = min(remaining, self.local_batch_size)  # eval: drop the reader's padding
            remaining -= keep
            yield images[:keep], labels[:keep].to(images.device, non_blocking=True)


def build_dali_train_loader(data_dir: str, *, global_batch_size: int, rank: int, world_size: int,
                            image_size: int, seed: int, index_dir: str, num_threads: int = 4,
                            device: str | None = None, prefetch_queue_depth: int = 2,
                            shuffle_buffer: int = 10_000) -> DaliLoader:
    """Train pipeline; `device` "gpu" (mixed decode) or "cpu", default: gpu if CUDA is available."""
    index = build_index(data_dir, "train", index_dir, verify=True)
    if global_batch_size <= 0 or global_batch_size % world_size or global_batch_size > len(index):
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                         f"world_size {world_size} and at most {len(index)} records")
    local_batch_size = global_batch_size // world_size

    def pipeline(pipe_seed: int):
        return _pipeline(_train_graph, index, batch_size=local_batch_size, rank=rank, world_size=world_size,
                         train=True, seed=pipe_seed, num_threads=num_threads, device=device,
                         prefetch_queue_depth=prefetch_queue_depth,
                         shuffle_buffer=min(shuffle_buffer, len(index) // world_size), image_size=image_size)

    steps = len(index) // global_batch_size
    return DaliLoader(pipeline(seed), index, rank=rank, world_size=world_size, steps_per_epoch=steps,
                      local_samples=steps * local_batch_size, local_batch_size=local_batch_size,
                      reseed=lambda epoch: pipeline((seed * 1_000_003 + epoch) % 2**31))


def build_dali_eval_loader(data_dir: str, *, batch_size: int, rank: int, world_size: int,
                           image_size: int, resize_size: int, index_dir: str, num_threads: int = 4,
                           device: str | None = None, prefetch_queue_depth: int = 2) -> DaliLoader:
    """Eval pipeline: rank r evaluates DALI's contiguous shard r of the records, each exactly once."""
    if resize_size < image_size:
        raise ValueError(f"resize_size {resize_size} is smaller than image_size {image_size}")
    index = build_index(data_dir, "validation", index_dir, verify=True)
    pipe = _pipeline(_eval_graph, index, batch_size=batch_size, rank=rank, world_size=world_size,
                     train=False, seed=0, num_threads=num_threads, device=device,
                     prefetch_queue_depth=prefetch_queue_depth, image_size=image_size,
                     resize_size=resize_size)
    local_samples = len(_shard_records(len(index), rank, world_size))
    return DaliLoader(pipe, index, rank=rank, world_size=world_size,
                      steps_per_epoch=-(-local_samples // batch_size), local_samples=local_samples,
                      local_batch_size=batch_size)
