"""ImageNet loaders: the torch DataLoader path (sharding, determinism, eval coverage, errors) and the
DALI CPU pipelines against it."""

import io
import os
import re

import pytest
import torch
from PIL import Image

from pipelines import tfrecord
from pipelines.imagenet import format as fmt
from pipelines.imagenet.loader import build_eval_loader, build_train_loader
from pipelines.imagenet.synthetic import write_synthetic_imagenet

NUM_TRAIN, NUM_VAL = 40, 20
IMAGE_SIZE, RESIZE_SIZE = 32, 40
MEAN = torch.tensor(fmt.MEAN_RGB).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("imagenet"))
    write_synthetic_imagenet(path, num_classes=4, train_per_class=10, val_per_class=5,
                             num_train_shards=3, num_val_shards=2, min_side=24, max_side=48, seed=3)
    return path


def train_batches(data_dir, *, world_size, rank, epoch=0, num_workers=0, global_batch_size=8):
    loader = build_train_loader(data_dir, global_batch_size=global_batch_size, rank=rank,
                                world_size=world_size, image_size=IMAGE_SIZE, seed=11,
                                num_workers=num_workers, epoch=epoch)
    return list(loader)


def eval_batches(data_dir, *, world_size, rank, batch_size=3):
    loader = build_eval_loader(data_dir, batch_size=batch_size, rank=rank, world_size=world_size,
                               image_size=IMAGE_SIZE, resize_size=RESIZE_SIZE, num_workers=0)
    return loader, list(loader)


def stripes_are_vertical(images):
    """Synthetic classes alternate horizontal (even label) and vertical (odd) stripes; a swapped
    H and W anywhere in a pipeline would flip this."""
    grey = images.mean(1)
    return (grey.diff(dim=2).abs().mean((1, 2)) > grey.diff(dim=1).abs().mean((1, 2))).long()


def test_train_global_batch_is_the_same_for_any_world_size(data_dir):
    single = train_batches(data_dir, world_size=1, rank=0, epoch=1)
    assert len(single) == NUM_TRAIN // 8
    for world_size in (2, 4):
        ranks = [train_batches(data_dir, world_size=world_size, rank=r, epoch=1) for r in range(world_size)]
        for step, (images, labels) in enumerate(single):
            assert torch.equal(torch.cat([batches[step][0] for batches in ranks]), images)
            assert torch.equal(torch.cat([batches[step][1] for batches in ranks]), labels)


def test_train_is_deterministic_per_epoch_and_worker_count(data_dir):
    epoch_1 = train_batches(data_dir, world_size=2, rank=1, epoch=1)
    with_workers = train_batches(data_dir, world_size=2, rank=1, epoch=1, num_workers=2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch_1, with_workers))
    epoch_2 = train_batches(data_dir, world_size=2, rank=1, epoch=2)
    assert not torch.equal(epoch_1[0][0], epoch_2[0][0])


def test_train_loader_interface_and_tensors(data_dir):
    loader = build_train_loader(data_dir, global_batch_size=8, rank=0, world_size=2, image_size=IMAGE_SIZE,
                                seed=0, num_workers=0)
    assert (loader.num_samples, loader.steps_per_epoch, len(loader)) == (NUM_TRAIN, 5, 5)
    assert (loader.local_batch_size, loader.local_samples) == (4, 20)
    seen = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        for images, labels in loader:
            assert images.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
            assert images.is_contiguous() and labels.dtype == torch.int64
            pixels = images + MEAN
            assert pixels.min() >= 0 and pixels.max() <= 255 and torch.equal(pixels, pixels.round())
            seen.append((images, labels))
    labels = torch.cat([b[1] for b in seen])
    assert labels.min() >= 0 and labels.max() <= 3
    vertical = stripes_are_vertical(torch.cat([b[0] for b in seen]))
    assert (vertical == labels % 2).float().mean() >= 0.9  # crops can be a fraction of a stripe


@pytest.mark.parametrize("kwargs, message", [
    (dict(global_batch_size=6, world_size=4), "not a positive multiple"),
    (dict(global_batch_size=48, world_size=1), "exceeds the 40 records"),
    (dict(global_batch_size=8, world_size=2, rank=2), "outside world"),
])
def test_train_loader_rejects_bad_sharding(data_dir, kwargs, message):
    args = dict(rank=0, image_size=IMAGE_SIZE, seed=0, num_workers=0) | kwargs
    with pytest.raises(ValueError, match=message):
        build_train_loader(data_dir, **args)


def test_eval_covers_every_record_exactly_once(data_dir):
    _, single = eval_batches(data_dir, world_size=1, rank=0)
    all_images, all_labels = torch.cat([b[0] for b in single]), torch.cat([b[1] for b in single])
    assert len(all_labels) == NUM_VAL
    total = 0
    for rank in range(3):
        loader, batches = eval_batches(data_dir, world_size=3, rank=rank)
        images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        assert loader.local_samples == len(labels) == len(range(rank, NUM_VAL, 3))
        assert [len(b[1]) for b in batches][-1] == loader.local_samples - 3 * (len(batches) - 1)
        assert torch.equal(images, all_images[rank::3]) and torch.equal(labels, all_labels[rank::3])
        total += loader.local_samples
    assert total == NUM_VAL
    index = fmt.build_index(data_dir, "validation")
    assert all_labels.tolist() == [index.record(i).label for i in range(NUM_VAL)]
    assert torch.equal(stripes_are_vertical(all_images), all_labels % 2)


def _shard_with(tmp_path, payloads):
    folder = tmp_path / "bad"
    folder.mkdir()
    path = str(folder / "validation-00000-of-00001")
    with tfrecord.TFRecordWriter(path) as writer:
        for payload in payloads:
            writer.write(payload)
    return str(folder), path


def _tiny_jpeg():
    out = io.BytesIO()
    Image.new("RGB", (48, 40), (10, 200, 30)).save(out, format="JPEG")
    return out.getvalue()


def test_loader_errors_name_the_file(tmp_path):
    good = fmt.encode_image_example(_tiny_jpeg(), 2)
    no_label = tfrecord.encode_example({fmt.IMAGE_KEY: tfrecord.bytes_feature([_tiny_jpeg()])})
    folder, path = _shard_with(tmp_path, [good, no_label])
    with pytest.raises(fmt.ImageNetFormatError, match="missing feature 'image/class/label'") as error:
        eval_batches(folder, world_size=1, rank=0)
    assert path in str(error.value)
    raw = bytearray(open(path, "rb").read())
    raw[40] ^= 0xFF  # inside the first record's JPEG
    open(path, "wb").write(bytes(raw))
    with pytest.raises(tfrecord.TFRecordError, match="bad data CRC") as error:
        eval_batches(folder, world_size=1, rank=0)
    assert path in str(error.value)


def _label_byte(payload: bytes, label: int) -> int:
    """Position in a synthetic record's payload of its label's varint (one byte: labels < 128)."""
    key = fmt.LABEL_KEY.encode()
    at = payload.index(key) + len(key)
    # Feature map value {Feature {Int64List {packed [label]}}}: tag, length, tag, length, tag, length.
    assert payload[at:at + 7:2] == bytes([0x12, 0x1A, 0x0A, label]), payload[at:at + 7]
    return at + 6


def _damage_shard(path: str, damage: str) -> int:
    """Damage one record of a shard; returns its offset."""
    records = tfrecord.scan_records(path)
    raw = bytearray(open(path, "rb").read())
    if damage == "label bit":  # the lowest bit of a label >= 2: still a valid label, only the CRC knows
        for offset, size in records:
            payload = bytes(raw[offset + 12:offset + size - 4])
            label = fmt.decode_image_example(payload, path).label + 1
            if label >= 2:
                break
        raw[offset + 12 + _label_byte(payload, label)] ^= 0x01
        payload = bytes(raw[offset + 12:offset + size - 4])
        assert fmt.decode_image_example(payload, path).label + 1 == label ^ 1  # parses, wrong label
    elif damage == "image bit":  # inside the JPEG's entropy-coded data: decodes, to other pixels
        offset, size = records[0]
        payload = bytes(raw[offset + 12:offset + size - 4])
        jpeg = fmt.decode_image_example(payload, path).jpeg
        raw[offset + 12 + payload.index(jpeg) + len(jpeg) // 2] ^= 0x10
    elif damage == "length bit":
        offset = records[1][0]
        raw[offset + 2] ^= 0x04  # the record's length field
    else:  # truncated: the shard ends halfway through its last record
        offset, size = records[-1]
        raw = raw[:offset + size // 2]
    open(path, "wb").write(bytes(raw))
    return offset


# The corruption DALI cannot see (it checks no CRC): each loader must refuse the shard and name it, the
# torch loader when it reads the record, DALI when its loader is built (the index verification).
@pytest.mark.parametrize("damage, message", [("label bit", "bad data CRC"), ("image bit", "bad data CRC"),
                                             ("length bit", "bad length CRC"), ("truncated", "truncated record")])
@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_corrupt_shard_fails_naming_the_shard(tmp_path, loader, damage, message):
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    data = str(tmp_path / "data")
    write_synthetic_imagenet(data, num_classes=4, train_per_class=2, val_per_class=4, num_train_shards=1,
                             num_val_shards=2, min_side=24, max_side=32, seed=5)
    shard = os.path.join(data, fmt.shard_name("validation", 1, 2))
    offset = _damage_shard(shard, damage)
    index_dir = str(tmp_path / "index")
    with pytest.raises(tfrecord.TFRecordError, match=message) as error:
        if loader == "torch":
            list(build_eval_loader(data, batch_size=3, rank=0, world_size=1, image_size=IMAGE_SIZE,
                                   resize_size=RESIZE_SIZE, num_workers=0, index_dir=index_dir))
        else:
            dali_eval(data, index_dir, world_size=1, rank=0)  # building it is enough
    assert str(error.value).startswith(f"{shard}: ") and f"at offset {offset}" in str(error.value)


# --- DALI (CPU operators) -------------------------------------------------------------------------

def test_dali_train_loader_verifies_its_shards_too(tmp_path):
    pytest.importorskip("nvidia.dali")
    from pipelines.imagenet.dali import build_dali_train_loader
    data = str(tmp_path / "data")
    write_synthetic_imagenet(data, num_classes=2, train_per_class=4, val_per_class=1, num_train_shards=2,
                             num_val_shards=1, min_side=24, max_side=32, seed=5)
    shard = os.path.join(data, fmt.shard_name("train", 0, 2))
    offset = _damage_shard(shard, "label bit")
    message = re.escape(f"{shard}: bad data CRC in record ") + rf"\d+ at offset {offset} "
    with pytest.raises(tfrecord.TFRecordError, match=message):
        build_dali_train_loader(data, global_batch_size=4, rank=0, world_size=1, image_size=IMAGE_SIZE,
                                seed=0, index_dir=str(tmp_path / "index"), num_threads=1, device="cpu")


def dali_eval(data_dir, index_dir, *, world_size, rank, batch_size=8):
    from pipelines.imagenet.dali import build_dali_eval_loader
    return build_dali_eval_loader(data_dir, batch_size=batch_size, rank=rank, world_size=world_size,
                                  image_size=IMAGE_SIZE, resize_size=RESIZE_SIZE, index_dir=index_dir,
                                  num_threads=1, device="cpu")


def test_dali_eval_matches_torch_eval(data_dir, tmp_path):
    pytest.importorskip("nvidia.dali")
    _, batches = eval_batches(data_dir, world_size=1, rank=0)
    torch_images, torch_labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    loaders = [dali_eval(data_dir, str(tmp_path), world_size=2, rank=r) for r in range(2)]
    for _epoch in range(2):  # the second pass checks the padded last batch does not shift the next
        outputs = [b for loader in loaders for b in loader]
        images, labels = torch.cat([b[0] for b in outputs]), torch.cat([b[1] for b in outputs])
        assert [loader.local_samples for loader in loaders] == [10, 10]  # DALI shards are contiguous
        assert images.shape == torch_images.shape and images.dtype == torch.float32
        assert torch.equal(labels, torch_labels)
        # Both paths decode with libjpeg-turbo and resample the same source window with antialiased
        # bilinear weights, each rounding to uint8: float results within one grey level of each other
        # round at most 1 apart (measured: max 1, mean 0.18). Allow 2 and 0.5.
        difference = (images - torch_images).abs()
        assert difference.max() <= 2.0 and difference.mean() <= 0.5


def test_dali_train_tensors(data_dir, tmp_path):
    pytest.importorskip("nvidia.dali")
    from pipelines.imagenet.dali import build_dali_train_loader
    loader = build_dali_train_loader(data_dir, global_batch_size=8, rank=1, world_size=2,
                                     image_size=IMAGE_SIZE, seed=0, index_dir=str(tmp_path),
                                     num_threads=1, device="cpu")
    assert (loader.num_samples, len(loader), loader.local_batch_size) == (NUM_TRAIN, 5, 4)
    seen = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen += list(loader)
    assert len(seen) == 10
    images, labels = torch.cat([b[0] for b in seen]), torch.cat([b[1] for b in seen])
    assert images.shape == (40, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() <= 3
    pixels = images + MEAN
    assert pixels.min() >= -0.5 and pixels.max() <= 255.5
    assert (stripes_are_vertical(images) == labels % 2).float().mean() >= 0.9


def test_dali_train_resume_draws_afresh_and_reads_only_what_is_left(data_dir, tmp_path):
    """DALI's reader order lives in the pipeline, not in any checkpoint: a resumed process (first set_epoch at epoch
    1, step 2) must not replay epoch 0's order from its start, and must not decode the 2 skipped batches."""
    pytest.importorskip("nvidia.dali")
    from pipelines.imagenet.dali import build_dali_train_loader

    def loader():
        return build_dali_train_loader(data_dir, global_batch_size=4, rank=0, world_size=1, image_size=IMAGE_SIZE,
                                       seed=0, index_dir=str(tmp_path), num_threads=1, device="cpu")

    fresh = loader()
    fresh.set_epoch(0)
    epoch0 = [labels for _, labels in fresh]

    class Counting:
        def __init__(self, pipe):
            self.pipe, self.runs = pipe, 0

        def run(self):
            self.runs += 1
            return self.pipe.run()

    resumed = loader()
    resumed.set_epoch(1, start_step=2)
    resumed._pipe = counting = Counting(resumed._pipe)
    rest = [labels for _, labels in resumed]
    assert len(rest) == len(epoch0) - 2 == counting.runs
    assert any(not torch.equal(a, b) for a, b in zip(rest, epoch0[2:]))  # not epoch 0's order replayed
    with pytest.raises(ValueError, match="start_step 10 outside an epoch of 10 steps"):
        resumed.set_epoch(1, start_step=len(epoch0))


# Only beside a labelled record is this guaranteed: DALI 2.4 fills a missing int64 feature of a batch with
# stale memory, so a batch of unlabelled records alone is caught only when that memory is out of range
# (nondeterministic; a CI run saw it in range). verify_dataset.sh is the guard for that case.
@pytest.mark.parametrize("batch_size", [2])
def test_dali_missing_label_names_the_file(tmp_path, batch_size):
    pytest.importorskip("nvidia.dali")
    no_label = tfrecord.encode_example({fmt.IMAGE_KEY: tfrecord.bytes_feature([_tiny_jpeg()])})
    folder, path = _shard_with(tmp_path, [fmt.encode_image_example(_tiny_jpeg(), 1), no_label])
    loader = dali_eval(folder, str(tmp_path / "index"), world_size=1, rank=0, batch_size=batch_size)
    # Beside a labelled record DALI fails and the checking reader names the record (see dali.py).
    with pytest.raises(fmt.ImageNetFormatError, match="image/class/label") as error:
        list(loader)
    assert path in str(error.value) and "missing" in str(error.value)


class _Residual(torch.nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


@pytest.mark.slow
def test_synthetic_debug_set_is_learnable(tmp_path):
    """The debug flavour's data: a small ResNet (~150k parameters) reaches >= 0.9 top-1 in three
    epochs of SGD (measured 1.0 with torch seeds 0, 1, 2; 3 to 15 s per epoch on 2 shared cores)."""
    nn, F = torch.nn, torch.nn.functional
    write_synthetic_imagenet(str(tmp_path))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          _Residual(16, 32), _Residual(32, 64), _Residual(64, 64),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 16))
    train = build_train_loader(str(tmp_path), global_batch_size=32, rank=0, world_size=1, image_size=56,
                               seed=0, num_workers=1)
    evaluation = build_eval_loader(str(tmp_path), batch_size=128, rank=0, world_size=1, image_size=56,
                                   resize_size=64, num_workers=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-5)
    steps = 3 * len(train)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # one epoch of warmup, then polynomial decay
        optimizer, lambda s: min((s + 1) / len(train), (1 - s / steps) ** 2))
    for epoch in range(3):
        train.set_epoch(epoch)
        model.train()
        for images, labels in train:
            loss = F.cross_entropy(model(images / 64.0), labels, label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(images / 64.0).argmax(1) == labels).sum().item()
                      for images, labels in evaluation)
    assert correct / evaluation.local_samples >= 0.9
