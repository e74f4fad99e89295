"""ImageNet on disk: CRC32C, TFRecord framing, tf.Example, shard layout, synthetic writer, converter.

Records and protobuf messages are assembled byte by byte here, so the reader and decoder are checked
against the formats themselves rather than against our own writer."""

import io
import json
import os
import random
import re
import struct
import threading
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pipelines import tfrecord
from pipelines.imagenet import format as fmt
from pipelines.imagenet import synthetic
from pipelines.imagenet.loader import sample_distorted_bounding_box
from pipelines.imagenet.prepare import build_tfrecords, verify_dataset


def crc32c_bitwise(data: bytes) -> int:
    """Independent reference: the CRC32C definition, one bit at a time."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_known_vectors():
    assert tfrecord.crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert tfrecord.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4
    assert tfrecord.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tfrecord.crc32c(b"") == 0


@pytest.mark.parametrize("size", [1, 3, 4, 5, 63, 64, 65, 1023, 1024, 1025, 4099, 70_001])
def test_crc32c_matches_bitwise_reference(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert tfrecord.crc32c(data) == crc32c_bitwise(data)
    cut = size // 3  # continuing from a previous value, across the vector/scalar boundary
    assert tfrecord.crc32c(data[cut:], tfrecord.crc32c(data[:cut])) == crc32c_bitwise(data)


# Record 1 holds b"123456789"; record 2 is empty. Length fields are uint64 LE, CRCs masked uint32 LE.
RECORD_1 = (b"\x09\x00\x00\x00\x00\x00\x00\x00" + struct.pack("<I", 0x3971F937)
            + b"123456789" + struct.pack("<I", mask(0xE3069283)))
RECORD_2 = bytes(8) + struct.pack("<I", 0x07980329) + struct.pack("<I", mask(0))


def test_hand_built_constants_are_masked_crcs():
    assert mask(crc32c_bitwise(RECORD_1[:8])) == 0x3971F937
    assert mask(crc32c_bitwise(bytes(8))) == 0x07980329
    assert mask(0xE3069283) == 0xC78AB0E5


def test_reader_on_hand_built_records(tmp_path):
    path = str(tmp_path / "shard")
    with open(path, "wb") as f:
        f.write(RECORD_1 + RECORD_2)
    assert list(tfrecord.iter_records(path)) == [b"123456789", b""]
    assert tfrecord.scan_records(path) == [(0, 25), (25, 16)]
    fd = os.open(path, os.O_RDONLY)
    try:
        assert tfrecord.read_record_at(fd, path, 0, 25) == b"123456789"
        assert tfrecord.read_record_at(fd, path, 25, 16) == b""
    finally:
        os.close(fd)
    assert tfrecord.encode_record(b"123456789") == RECORD_1
    index_path = str(tmp_path / "shard.idx")
    tfrecord.write_index(tfrecord.scan_records(path), index_path)
    assert open(index_path).read() == "0 25\n25 16\n"  # DALI's index format
    assert tfrecord.read_index(index_path) == [(0, 25), (25, 16)]


@pytest.mark.parametrize("damage, message, where", [
    (lambda raw: raw[:14] + b"X" + raw[15:], "bad data CRC", "record 0 at offset 0"),  # a payload byte
    (lambda raw: b"\x0a" + raw[1:], "bad length CRC", "record 0 at offset 0"),  # the length field
    (lambda raw: raw[:30], "truncated record", "record 1 at offset 25"),  # cut inside record 2's header
    (lambda raw: raw[:20], "truncated record", "record 0 at offset 0"),  # cut inside record 1's payload
])
def test_damaged_shard_names_file(tmp_path, damage, message, where):
    path = str(tmp_path / "train-00000-of-00001")
    with open(path, "wb") as f:
        f.write(damage(RECORD_1 + RECORD_2))
    with pytest.raises(tfrecord.TFRecordError, match=message) as error:
        list(tfrecord.iter_records(path))
    assert path in str(error.value)
    if "CRC" not in message:  # the header scan sees truncation and length corruption too
        with pytest.raises(tfrecord.TFRecordError, match=message):
            tfrecord.scan_records(path)
    with pytest.raises(tfrecord.TFRecordError, match=message) as error:  # the whole-shard check
        tfrecord.verify_records(path)
    assert str(error.value).startswith(f"{path}: ") and where in str(error.value)


def test_bulk_data_crcs_match_the_definition():
    rng = np.random.default_rng(7)
    buffer = rng.integers(0, 256, 40_000, dtype=np.uint8)
    lengths = np.array([0, 1, 3, 4, 5, 63, 64, 65, 1023, 1024, 1025, 2048, 4099, 9000], dtype=np.int64)
    starts = rng.integers(0, len(buffer) - lengths.max(), len(lengths)).astype(np.int64)
    crcs = tfrecord._data_crcs(buffer, starts, lengths)
    assert crcs.tolist() == [crc32c_bitwise(buffer[s:s + n].tobytes()) for s, n in zip(starts, lengths)]


def test_verify_records_checks_every_record_in_file_order(tmp_path, monkeypatch):
    monkeypatch.setattr(tfrecord, "_BULK_BATCH_BYTES", 3000)  # several batches, a batch boundary inside
    rng = np.random.default_rng(8)
    payloads = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes()
                for n in (0, 2, 4, 1500, 70_001, 10, 3000, 2999, 1024, 5)]
    path = str(tmp_path / "shard")
    write_records(path, payloads)
    records = tfrecord.scan_records(path)
    assert tfrecord.verify_records(path) == records
    raw = bytearray(open(path, "rb").read())
    raw[records[6][0] + 12 + 1700] ^= 0x08  # record 6's data
    raw[records[8][0] + 1] ^= 0x01  # record 8's length field
    open(path, "wb").write(bytes(raw))
    with pytest.raises(tfrecord.TFRecordError, match=f"bad data CRC in record 6 at offset {records[6][0]}"):
        tfrecord.verify_records(path)  # not record 8's bad length, found first by the header walk
    raw[records[6][0] + 12 + 1700] ^= 0x08
    open(path, "wb").write(bytes(raw))
    with pytest.raises(tfrecord.TFRecordError, match=f"bad length CRC in record 8 at offset {records[8][0]}"):
        tfrecord.verify_records(path)
    open(path, "wb").write(b"")
    assert tfrecord.verify_records(path) == []


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (tag and length fit one byte here)."""
    assert field < 16 and len(payload) < 128
    return bytes([field << 3 | 2, len(payload)]) + payload


def entry(key: bytes, feature: bytes) -> bytes:
    return ld(1, ld(1, key) + ld(2, feature))


def test_example_decoder_on_hand_assembled_bytes():
    features = (
        entry(b"a", ld(1, b"\x0a\x02xy"))  # bytes_list {value: "xy"}
        + entry(b"f", ld(2, b"\x0a\x08" + b"\x00\x00\xc0\x3f" + b"\x00\x00\x00\xc0"))  # packed 1.5, -2
        + entry(b"g", ld(2, b"\x0d\x00\x00\x80\x3f"))  # one unpacked fixed32: 1.0
        # unpacked 1, 300, -1 (a negative int64 is a 10-byte varint)
        + entry(b"i", ld(3, b"\x08\x01" + b"\x08\xac\x02" + b"\x08" + b"\xff" * 9 + b"\x01"))
        + entry(b"p", ld(3, b"\x0a\x02\x05\x07"))  # packed 5, 7
        + entry(b"e", ld(2, b""))  # an empty float list keeps its kind
    )
    decoded = tfrecord.decode_example(ld(1, features))
    assert decoded == {
        "a": ("bytes", [b"xy"]), "f": ("float", [1.5, -2.0]), "g": ("float", [1.0]),
        "i": ("int64", [1, 300, -1]), "p": ("int64", [5, 7]), "e": ("float", [])}


def test_example_encoder_writes_packed_sorted_bytes():
    encoded = tfrecord.encode_example({
        "p": tfrecord.int64_feature([5, 7]), "a": tfrecord.bytes_feature([b"xy"]),
        "f": tfrecord.float_feature([1.5, -2.0]), "e": tfrecord.float_feature([])})
    expected = ld(1, entry(b"a", ld(1, b"\x0a\x02xy")) + entry(b"e", ld(2, b""))
                  + entry(b"f", ld(2, b"\x0a\x08\x00\x00\xc0\x3f\x00\x00\x00\xc0"))
                  + entry(b"p", ld(3, b"\x0a\x02\x05\x07")))
    assert encoded == expected
    extremes = [-1, 0, 2**63 - 1, -2**63]
    assert tfrecord.decode_example(tfrecord.encode_example(
        {"x": tfrecord.int64_feature(extremes)}))["x"].values == extremes


def test_example_decoder_rejects_truncated_message():
    good = ld(1, entry(b"a", ld(1, b"\x0a\x02xy")))
    with pytest.raises(tfrecord.ExampleError, match="past the end"):
        tfrecord.decode_example(good[:-1])


def write_records(path, payloads):
    with tfrecord.TFRecordWriter(path) as writer:
        for payload in payloads:
            writer.write(payload)


def test_find_shards_checks_the_count(tmp_path):
    with pytest.raises(fmt.ImageNetFormatError, match="no train shards"):
        fmt.find_shards(str(tmp_path), "train")
    for i in (0, 2):
        write_records(str(tmp_path / fmt.shard_name("train", i, 3)), [b"x"])
    with pytest.raises(fmt.ImageNetFormatError, match="missing 1.*train-00001-of-00003"):
        fmt.find_shards(str(tmp_path), "train")
    write_records(str(tmp_path / fmt.shard_name("train", 1, 4)), [b"x"])
    with pytest.raises(fmt.ImageNetFormatError, match="disagree"):
        fmt.find_shards(str(tmp_path), "train")
    os.unlink(tmp_path / fmt.shard_name("train", 1, 4))
    write_records(str(tmp_path / fmt.shard_name("train", 1, 3)), [b"x"])
    assert [os.path.basename(p) for p in fmt.find_shards(str(tmp_path), "train")] == \
        ["train-00000-of-00003", "train-00001-of-00003", "train-00002-of-00003"]


def test_missing_or_bad_feature_names_file(tmp_path):
    path = str(tmp_path / "validation-00000-of-00001")
    good = fmt.encode_image_example(b"\xff\xd8jpeg", 7, bboxes=[[0.1, 0.2, 0.5, 0.6]])
    write_records(path, [
        good,
        tfrecord.encode_example({fmt.LABEL_KEY: tfrecord.int64_feature([3])}),
        fmt.encode_image_example(b"\xff\xd8jpeg", 1001),
        tfrecord.encode_example({fmt.IMAGE_KEY: tfrecord.bytes_feature([b"j"]),
                                 fmt.LABEL_KEY: tfrecord.int64_feature([1]),
                                 fmt.BBOX_KEYS[0]: tfrecord.float_feature([0.5])}),
    ])
    index = fmt.build_index(str(tmp_path), "validation")
    record = index.record(0)
    assert record.label == 6 and record.jpeg == b"\xff\xd8jpeg"
    np.testing.assert_allclose(record.bboxes, [[0.1, 0.2, 0.5, 0.6]])
    for i, message in [(1, "missing feature 'image/encoded'"), (2, "label 1001 outside"),
                       (3, "bbox coordinate lists differ")]:
        with pytest.raises(fmt.ImageNetFormatError, match=message) as error:
            index.record(i)
        assert path in str(error.value) and f"offset {index.offsets[i]}" in str(error.value)


def test_index_cache_is_dali_format_and_follows_the_shard(tmp_path):
    data, cache = tmp_path / "data", str(tmp_path / "cache")
    data.mkdir()
    shard = str(data / "train-00000-of-00001")
    write_records(shard, [b"a" * 10, b"b" * 20])
    index = fmt.build_index(str(data), "train", cache)
    assert open(index.index_files[0]).read() == "0 26\n26 36\n"
    assert [index.payload(i) for i in range(2)] == [b"a" * 10, b"b" * 20]
    write_records(shard, [b"c" * 5])  # rewritten: the cached index no longer ends at the file size
    assert fmt.build_index(str(data), "train", cache).sizes.tolist() == [21]


def test_verified_index_is_cached_and_follows_the_shard(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", str(tmp_path / "cache")
    data.mkdir()
    shard = str(data / "train-00000-of-00001")
    write_records(shard, [b"a" * 10, b"b" * 5000])
    verified = []
    real_verify = fmt.verify_records
    monkeypatch.setattr(fmt, "verify_records", lambda path: verified.append(path) or real_verify(path))
    index = fmt.build_index(str(data), "train", cache, verify=True)
    assert verified == [shard] and index.sizes.tolist() == [26, 5016]
    assert open(index.index_files[0]).read() == "0 26\n26 5016\n"  # the same DALI index as unverified
    record = json.load(open(index.index_files[0] + fmt.VERIFIED_SUFFIX))
    assert record["records"] == 2 and record["shard"]["size"] == os.path.getsize(shard)
    assert fmt.build_index(str(data), "train", cache, verify=True).sizes.tolist() == [26, 5016]
    assert verified == [shard]  # cached: not read again
    stat = os.stat(shard)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: checked again
    fmt.build_index(str(data), "train", cache, verify=True)
    assert verified == [shard] * 2
    # Same size and mtime, a flipped bit in the last record: the hash of the shard's ends sees it.
    stat = os.stat(shard)
    raw = bytearray(open(shard, "rb").read())
    raw[-100] ^= 0x01
    open(shard, "wb").write(bytes(raw))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fmt.build_index(str(data), "train", cache).sizes.tolist() == [26, 5016]  # headers are fine
    for _ in range(2):  # a failed check is not recorded as a pass
        with pytest.raises(tfrecord.TFRecordError, match=re.escape(f"{shard}: bad data CRC in record 1 at offset 26")):
            fmt.build_index(str(data), "train", cache, verify=True)
    assert verified == [shard] * 4
    # Without an index_dir every build checks everything.
    with pytest.raises(tfrecord.TFRecordError, match="bad data CRC in record 1"):
        fmt.build_index(str(data), "train", verify=True)


def test_processes_building_one_verified_index_share_the_shards(tmp_path, monkeypatch):
    """A shard whose lock another process holds is left to it and waited for at the end: here the
    test plays that process for shard 0 (flock locks conflict between descriptors, threads too)."""
    data, cache = tmp_path / "data", str(tmp_path / "cache")
    data.mkdir()
    shards = [str(data / fmt.shard_name("train", k, 3)) for k in range(3)]
    for k, shard in enumerate(shards):
        write_records(shard, [bytes([k]) * 100] * 3)
    calls = []
    real_verify = fmt.verify_records

    def verify(path):
        calls.append((threading.current_thread().name, os.path.basename(path)))
        return real_verify(path)

    monkeypatch.setattr(fmt, "verify_records", verify)
    index_files = [os.path.join(fmt._cache_folder(cache, str(data)), os.path.basename(s) + ".idx")
                   for s in shards]
    os.makedirs(os.path.dirname(index_files[0]))
    result = {}
    with fmt._shard_lock(index_files[0] + ".lock", wait=False) as held:
        assert held
        worker = threading.Thread(target=lambda: result.update(
            index=fmt.build_index(str(data), "train", cache, verify=True)), name="worker")
        worker.start()
        deadline = time.time() + 30
        while len(calls) < 2 and time.time() < deadline:  # the worker does shards 1 and 2 meanwhile
            time.sleep(0.01)
        assert worker.is_alive()  # and then waits for shard 0
        fmt._verify_shard(shards[0], index_files[0])
    worker.join(30)
    names = [os.path.basename(shard) for shard in shards]
    assert sorted(calls) == [("MainThread", names[0]), ("worker", names[1]), ("worker", names[2])]
    assert len(result["index"]) == 9


def test_sample_distorted_bounding_box_semantics():
    rng = random.Random(0)
    box = np.array([[0.5, 0.5, 0.9, 0.9]])  # ymin, xmin, ymax, xmax
    for _ in range(300):
        height, width = rng.randint(20, 400), rng.randint(20, 400)
        bboxes = box if rng.random() < 0.5 else np.zeros((0, 4))
        top, left, h, w = sample_distorted_bounding_box(rng, height, width, bboxes)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        if (h, w) == (height, width):
            continue  # the whole image, possibly the fallback
        assert 0.05 * height * width <= h * w <= height * width
        assert 0.75 - 1 / h <= w / h <= 4 / 3 + 1 / h  # width is rounded
        if len(bboxes):
            by0, bx0, by1, bx1 = box[0] * [height, width, height, width]
            overlap = max(0, min(by1, top + h) - max(by0, top)) * max(0, min(bx1, left + w) - max(bx0, left))
            assert overlap >= 0.1 * (by1 - by0) * (bx1 - bx0)
    # No crop of aspect 3 has 90% of a square's area: the whole image comes back.
    assert sample_distorted_bounding_box(rng, 50, 50, np.zeros((0, 4)), aspect_ratio_range=(3, 3),
                                         area_range=(0.9, 1.0)) == (0, 0, 50, 50)


SMALL = dict(num_classes=4, train_per_class=6, val_per_class=3, num_train_shards=3,
             num_val_shards=2, min_side=16, max_side=40, seed=5)


def test_synthetic_writer_round_trip(tmp_path):
    counts = synthetic.write_synthetic_imagenet(str(tmp_path / "a"), **SMALL)
    assert counts == {"train": 24, "validation": 12}
    for split, per_class, shards in (("train", 6, 3), ("validation", 3, 2)):
        index = fmt.build_index(str(tmp_path / "a"), split)
        assert len(index.shards) == shards and len(index) == 4 * per_class
        records = [index.record(i) for i in range(len(index))]
        assert Counter(r.label for r in records) == {c: per_class for c in range(4)}
        with_boxes = sum(len(r.bboxes) > 0 for r in records)
        assert 0 < with_boxes < len(records)
        for r in records:
            image = Image.open(io.BytesIO(r.jpeg))
            assert image.format == "JPEG" and image.mode == "RGB"
            assert all(16 <= side <= 40 for side in image.size)
            assert np.all((0 <= r.bboxes) & (r.bboxes <= 1))
            assert np.all(r.bboxes[:, 2:] > r.bboxes[:, :2])
    synthetic.main(["--out", str(tmp_path / "b")] + [
        arg for key, value in SMALL.items() for arg in (f"--{key.replace('_', '-')}", str(value))])
    for name in sorted(os.listdir(tmp_path / "a")):  # deterministic: same seed, same bytes
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _jpeg(path, colour, mode="RGB", fmt_name="JPEG", size=(20, 12)):
    Image.new(mode, size, colour).save(path, format=fmt_name)


def test_converter_on_fake_folder_tree(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    for synset in ("n02", "n01", "n03"):
        (raw / "train" / synset).mkdir(parents=True)
    _jpeg(raw / "train/n01/a.JPEG", (200, 0, 0))
    _jpeg(raw / "train/n01/b.JPEG", (180, 10, 0))
    _jpeg(raw / "train/n02/c.JPEG", (0, 200, 0), fmt_name="PNG")  # a PNG named .JPEG, as in ILSVRC
    _jpeg(raw / "train/n02/d.JPEG", (0, 0, 0, 0), mode="CMYK")
    _jpeg(raw / "train/n03/e.JPEG", 128, mode="L")  # greyscale JPEGs stay as they are
    (raw / "val").mkdir()
    for name, colour in (("v1.JPEG", (1, 2, 3)), ("v2.JPEG", (4, 5, 6)), ("v3.JPEG", (7, 8, 9))):
        _jpeg(raw / "val" / name, colour)
    (raw / "val_labels.txt").write_text("n03\nn01\nn02\n")
    build_tfrecords.main(["--train-dir", str(raw / "train"), "--val-dir", str(raw / "val"),
                          "--val-labels", str(raw / "val_labels.txt"), "--out", str(out),
                          "--train-shards", "2", "--val-shards", "1", "--workers", "1"])

    def records(split):
        index = fmt.build_index(str(out), split)
        return {tfrecord.decode_example(index.payload(i))["image/filename"].values[0].decode():
                index.record(i) for i in range(len(index))}

    train = records("train")
    assert {name: r.label for name, r in train.items()} == \
        {"a.JPEG": 0, "b.JPEG": 0, "c.JPEG": 1, "d.JPEG": 1, "e.JPEG": 2}  # sorted synsets, 1-based on disk
    for name in ("a.JPEG", "b.JPEG", "e.JPEG"):  # copied byte for byte
        assert train[name].jpeg == (raw / "train" / train[name].text / name).read_bytes()
    for name in ("c.JPEG", "d.JPEG"):  # re-encoded to RGB JPEG
        image = Image.open(io.BytesIO(train[name].jpeg))
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (20, 12))
    assert train["c.JPEG"].text == "n02"
    assert {name: r.label for name, r in records("validation").items()} == \
        {"v1.JPEG": 2, "v2.JPEG": 0, "v3.JPEG": 1}

    expect = ["--data-dir", str(out), "--train-records", "5", "--val-records", "3", "--train-shards",
              "2", "--val-shards", "1", "--num-classes", "3", "--workers", "1"]
    assert verify_dataset.main(expect) == 0
    index_dir = tmp_path / "index"  # --index-dir: the DALI loader's verified indexes, built offline
    assert verify_dataset.main(expect + ["--index-dir", str(index_dir)]) == 0
    assert sorted(p.name for p in index_dir.glob("*/*.verified")) == [
        "train-00000-of-00002.idx.verified", "train-00001-of-00002.idx.verified",
        "validation-00000-of-00001.idx.verified"]
    shard = out / "train-00001-of-00002"
    raw_bytes = bytearray(shard.read_bytes())
    raw_bytes[-10] ^= 0xFF
    shard.write_bytes(bytes(raw_bytes))
    assert verify_dataset.main(expect) == 1
    (raw / "val_pairs.txt").write_text("v2.JPEG n02\nv1.JPEG n01\nv3.JPEG n01\n")  # the other label format
    items = build_tfrecords.val_items(str(raw / "val"), ["n01", "n02", "n03"], str(raw / "val_pairs.txt"))
    assert [(os.path.basename(path), label) for path, label, _ in items] == \
        [("v1.JPEG", 1), ("v2.JPEG", 2), ("v3.JPEG", 1)]


def test_validation_label_noise_flips_exactly_that_fraction(tmp_path):
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    args = dict(num_classes=4, train_per_class=4, val_per_class=25, num_train_shards=1, num_val_shards=2,
                min_side=16, max_side=24, seed=3)
    synthetic.write_synthetic_imagenet(str(clean), **args)
    synthetic.write_synthetic_imagenet(str(noisy), val_label_noise=0.05, **args)
    labels = {}
    for name, root in (("clean", clean), ("noisy", noisy)):
        index = fmt.build_index(str(root), "validation", str(tmp_path / f"index_{name}"))
        labels[name] = [index.record(i).label for i in range(len(index))]
    differ = sum(a != b for a, b in zip(labels["clean"], labels["noisy"]))
    assert differ == 5  # round(0.05 * 100): a perfect classifier scores 0.95 on the noisy split
    index = fmt.build_index(str(clean), "train", str(tmp_path / "index_train"))
    noisy_train = fmt.build_index(str(noisy), "train", str(tmp_path / "index_train_noisy"))
    assert [index.payload(i) for i in range(len(index))] == [noisy_train.payload(i) for i in range(len(index))]
    with pytest.raises(ValueError, match="label_noise 1.5 outside"):
        synthetic.write_synthetic_imagenet(str(tmp_path / "bad"), val_label_noise=1.5, **args)
