"""ImageNet on disk: the reference TFRecord shard layout, its tf.Example features, and a random-access
index over every record of a split.

Shards are named `{split}-{i:05d}-of-{n:05d}` (reference: 1024 train, 128 validation shards). Each
record is a tf.Example with `image/encoded` (JPEG bytes), `image/class/label` (int64, 1..1000),
`image/class/text` and `image/object/bbox/{xmin,ymin,xmax,ymax}` (normalised floats, often empty).

The index is built by scanning record headers. With an `index_dir` it is cached there as one DALI
index file per shard (so the DALI reader uses the same files), under a folder named after the data
directory's path: data_dir itself may be read-only.

DALI's reader checks no CRC, so `build_index(verify=True)` (what the DALI loaders ask for) first
checks every record of a shard in full (length CRC, data CRC, complete), then records that beside the
shard's index (`<index>.verified`, keyed on the shard's size, mtime and a hash of its first and last
4 KiB), so later runs only stat and hash those ends. Processes building the same index share the work
through a lock file per shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from pipelines.tfrecord import (
    ExampleError,
    Feature,
    bytes_feature,
    decode_example,
    encode_example,
    float_feature,
    int64_feature,
    read_index,
    read_record_at,
    scan_records,
    verify_records,
    write_index,
)
from runtime.atomic_write import atomic_open

SPLIT_SHARDS = {"train": 1024, "validation": 128}
SPLIT_RECORDS = {"train": 1_281_167, "validation": 50_000}
NUM_CLASSES = 1000
MEAN_RGB = (123.68, 116.78, 103.94)  # subtracted per channel; the reference does not divide by std

IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
TEXT_KEY = "image/class/text"
BBOX_KEYS = ("image/object/bbox/ymin", "image/object/bbox/xmin",
             "image/object/bbox/ymax", "image/object/bbox/xmax")  # the column order of ImageRecord.bboxes

_SHARD_PATTERN = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})$")


class ImageNetFormatError(ValueError):
    """The data does not follow the layout above; the message names the file and what is wrong."""


class ImageRecord(NamedTuple):
    jpeg: bytes
    label: int  # 0-based (stored value - 1)
    text: str
    bboxes: np.ndarray  # float32 [K, 4]: ymin, xmin, ymax, xmax in [0, 1]; K may be 0


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}"


def find_shards(data_dir: str, split: str) -> list[str]:
    """All shard paths of `split` in order; every shard the "-of-N" count promises must be present."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: no such data directory")
    found: dict[int, str] = {}
    counts: set[int] = set()
    for name in os.listdir(data_dir):
        match = _SHARD_PATTERN.match(name)
        if match and match["split"] == split:
            found[int(match["index"])] = name
            counts.add(int(match["count"]))
    if not found:
        raise ImageNetFormatError(f"{data_dir}: no {split} shards (expected {split}-NNNNN-of-NNNNN)")
    if len(counts) > 1:
        raise ImageNetFormatError(f"{data_dir}: {split} shards disagree on their total: "
                                  f"-of- {sorted(counts)}")
    count = counts.pop()
    missing = [shard_name(split, i, count) for i in range(count) if i not in found]
    beyond = sorted(found[i] for i in found if i >= count)
    if missing or beyond:
        raise ImageNetFormatError(
            f"{data_dir}: {split} shards say -of-{count:05d} but {len(found)} are present"
            + (f"; missing {len(missing)}, e.g. {missing[:3]}" if missing else "")
            + (f"; numbered past the total: {beyond[:3]}" if beyond else ""))
    return [os.path.join(data_dir, shard_name(split, i, count)) for i in range(count)]


def encode_image_example(jpeg: bytes, stored_label: int, *, text: str = "",
                         bboxes: Sequence[Sequence[float]] | np.ndarray = (),
                         extra: dict[str, Feature] | None = None) -> bytes:
    """tf.Example payload in the reference layout. `stored_label` is the on-disk value (1..1000);
    `bboxes` rows are (ymin, xmin, ymax, xmax), normalised."""
    boxes = np.asarray(bboxes, dtype=np.float32).reshape(-1, 4)
    features = {IMAGE_KEY: bytes_feature([jpeg]), LABEL_KEY: int64_feature([stored_label]),
                TEXT_KEY: bytes_feature([text])}
    for column, key in enumerate(BBOX_KEYS):
        features[key] = float_feature(boxes[:, column].tolist())
    features.update(extra or {})
    return encode_example(features)


def _single(features: dict[str, Feature], key: str, kind: str, where: str):
    if key not in features:
        raise ImageNetFormatError(f"{where}: missing feature '{key}'")
    feature = features[key]
    if feature.kind != kind or len(feature.values) != 1:
        raise ImageNetFormatError(f"{where}: feature '{key}' should hold one {kind} value, "
                                  f"holds {len(feature.values)} of kind {feature.kind}")
    return feature.values[0]


def decode_image_example(payload: bytes, where: str) -> ImageRecord:
    """Parse and validate one record; `where` (file and offset) prefixes every error."""
    try:
        features = decode_example(payload)
    except ExampleError as error:
        raise ImageNetFormatError(f"{where}: not a valid tf.Example: {error}") from None
    jpeg = _single(features, IMAGE_KEY, "bytes", where)
    if not jpeg:
        raise ImageNetFormatError(f"{where}: feature '{IMAGE_KEY}' is empty")
    label = _single(features, LABEL_KEY, "int64", where)
    if not 1 <= label <= NUM_CLASSES:
        raise ImageNetFormatError(f"{where}: label {label} outside 1..{NUM_CLASSES}")
    text = features[TEXT_KEY].values[0].decode(errors="replace") \
        if TEXT_KEY in features and features[TEXT_KEY].values else ""
    columns = []
    for key in BBOX_KEYS:
        feature = features.get(key, Feature("float", []))
        if feature.kind not in ("float", "empty"):
            raise ImageNetFormatError(f"{where}: feature '{key}' should be a float list")
        columns.append(feature.values)
    if len({len(c) for c in columns}) > 1:
        raise ImageNetFormatError(f"{where}: bbox coordinate lists differ in length: "
                                  f"{[len(c) for c in columns]}")
    bboxes = np.array(columns, dtype=np.float32).reshape(4, -1).T
    return ImageRecord(jpeg, label - 1, text, bboxes)


def _cache_folder(index_dir: str, data_dir: str) -> str:
    key = hashlib.sha1(os.path.realpath(data_dir).encode()).hexdigest()[:16]
    return os.path.join(index_dir, key)


def _cached_records(shard: str, index_file: str) -> list[tuple[int, int]] | None:
    """The cached index if it still describes the shard (newer, contiguous, ends at its size)."""
    try:
        if os.path.getmtime(index_file) < os.path.getmtime(shard):
            return None
        records = read_index(index_file)
    except (OSError, ValueError):
        return None
    expected_offset = 0
    for offset, size in records:
        if offset != expected_offset:
            return None
        expected_offset += size
    return records if records and expected_offset == os.path.getsize(shard) else None


class RecordIndex:
    """Every record of a split as (shard, offset, size), with CRC-checked random access.

    File descriptors are opened lazily per process and dropped on pickling, so an index can be
    handed to DataLoader workers; reads use os.pread and need no seek position."""

    def __init__(self, split: str, shards: list[str], per_shard: list[list[tuple[int, int]]],
                 index_files: list[str] | None):
        self.split = split
        self.shards = shards
        self.index_files = index_files
        self.shard_ids = np.concatenate([np.full(len(r), k, np.int32) for k, r in enumerate(per_shard)])
        self.offsets = np.array([o for records in per_shard for o, _ in records], dtype=np.int64)
        self.sizes = np.array([s for records in per_shard for _, s in records], dtype=np.int64)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self):
        return {**self.__dict__, "_fds": {}}

    def where(self, i: int) -> str:
        return f"{self.shards[self.shard_ids[i]]} (record at offset {self.offsets[i]})"

    def _fd(self, shard_id: int) -> int:
        if self._pid != os.getpid():  # a forked worker: open its own descriptors
            self._fds, self._pid = {}, os.getpid()
        if shard_id not in self._fds:
            self._fds[shard_id] = os.open(self.shards[shard_id], os.O_RDONLY)
        return self._fds[shard_id]

    def payload(self, i: int) -> bytes:
        shard_id = int(self.shard_ids[i])
        return read_record_at(self._fd(shard_id), self.shards[shard_id],
                              int(self.offsets[i]), int(self.sizes[i]))

    def record(self, i: int) -> ImageRecord:
        return decode_image_example(self.payload(i), self.where(i))


VERIFIED_SUFFIX = ".verified"  # beside a shard's index: its records were all checked
_VERIFICATION_VERSION = 1
_FINGERPRINT_BYTES = 4096


def _shard_fingerprint(shard: str) -> dict:
    """What a verification is keyed on: size, mtime (ns) and a SHA-256 of the first and last 4 KiB
    (8 KiB read per shard and run), which hold the first record's length CRC and the last record's
    data CRC: a shard rewritten with the same size and mtime is caught too if its first or last
    record differs. A change inside an otherwise untouched file (bit rot) is not: that takes
    reading it all again (prepare/verify_dataset.py)."""
    with open(shard, "rb") as f:
        stat = os.fstat(f.fileno())
        digest = hashlib.sha256(f.read(_FINGERPRINT_BYTES))
        if stat.st_size > _FINGERPRINT_BYTES:
            f.seek(max(_FINGERPRINT_BYTES, stat.st_size - _FINGERPRINT_BYTES))
            digest.update(f.read(_FINGERPRINT_BYTES))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ends_sha256": digest.hexdigest()}


def _index_digest(records: Sequence[tuple[int, int]]) -> str:
    return hashlib.sha256("".join(f"{o} {s}\n" for o, s in records).encode()).hexdigest()


def _verified_records(shard: str, index_file: str, fingerprint: dict) -> list[tuple[int, int]] | None:
    """The cached index if a verification of this very shard and index is recorded beside it."""
    try:
        with open(index_file + VERIFIED_SUFFIX) as f:
            verification = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(verification, dict) or verification.get("version") != _VERIFICATION_VERSION \
            or verification.get("shard") != fingerprint:
        return None
    records = _cached_records(shard, index_file)
    if records is None or verification.get("index_sha256") != _index_digest(records):
        return None
    return records


def _verify_shard(shard: str, index_file: str | None) -> list[tuple[int, int]]:
    """Records of a shard whose every record has been checked, now or by an earlier run."""
    if index_file is None:
        return _nonempty(shard, verify_records(shard))
    fingerprint = _shard_fingerprint(shard)  # before reading: a change while verifying shows next time
    records = _verified_records(shard, index_file, fingerprint)
    if records is None:
        start = time.perf_counter()
        records = _nonempty(shard, verify_records(shard))
        write_index(records, index_file)
        verification = {"version": _VERIFICATION_VERSION, "shard": fingerprint,
                        "index_sha256": _index_digest(records), "records": len(records),
                        "checked": "length CRC, data CRC and completeness of every record",
                        "seconds": round(time.perf_counter() - start, 3)}
        with atomic_open(index_file + VERIFIED_SUFFIX, "w") as f:
            json.dump(verification, f)
    return records


@contextlib.contextmanager
def _shard_lock(lock_path: str, wait: bool) -> Iterator[bool]:
    """True while this process holds the lock, False if another holds it and `wait` is False. Where
    the file system has no flock every process is let through: the lock only shares out work
    (verifying a shard twice is wasteful, not wrong: both write the same files atomically)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield True
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        except OSError:  # e.g. ENOLCK/ENOSYS on a file system mounted without locks
            pass
        yield True
    finally:
        os.close(fd)  # releases the lock


def _verified_index(shards: list[str], index_files: list[str] | None) -> list[list[tuple[int, int]]]:
    """Per-shard records, every shard verified (or found verified). Ranks building the same index at
    once (one DALI loader per GPU) each take the shards no other has locked, then wait for the rest,
    so n local ranks verify about n times faster than one."""
    if index_files is None:
        return [_verify_shard(shard, None) for shard in shards]
    per_shard: list = [None] * len(shards)
    busy = []
    for k, shard in enumerate(shards):
        per_shard[k] = _verified_records(shard, index_files[k], _shard_fingerprint(shard))
        if per_shard[k] is None:
            with _shard_lock(index_files[k] + ".lock", wait=False) as held:
                if held:
                    per_shard[k] = _verify_shard(shard, index_files[k])
                else:
                    busy.append(k)
    for k in busy:
        with _shard_lock(index_files[k] + ".lock", wait=True):
            per_shard[k] = _verify_shard(shards[k], index_files[k])  # done by the holder, unless it failed
    return per_shard


def _nonempty(shard: str, records: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if not records:
        raise ImageNetFormatError(f"{shard}: shard holds no records")
    return records


def build_index(data_dir: str, split: str, index_dir: str | None = None, *,
                verify: bool = False) -> RecordIndex:
    """Index of all records of `split`; cached in `index_dir` (DALI's format) when one is given.

    verify: check every record of every shard (length CRC, data CRC, complete) before indexing it,
    raising TFRecordError naming the shard, the record's number and offset and what is wrong. For
    readers that check nothing themselves (DALI). Cached: see the module docstring."""
    shards = find_shards(data_dir, split)
    index_files = None
    if index_dir is not None:
        folder = _cache_folder(index_dir, data_dir)
        os.makedirs(folder, exist_ok=True)
        index_files = [os.path.join(folder, os.path.basename(s) + ".idx") for s in shards]
    if verify:
        return RecordIndex(split, shards, _verified_index(shards, index_files), index_files)
    per_shard = []
    for k, shard in enumerate(shards):
        records = _cached_records(shard, index_files[k]) if index_files else None
        if records is None:
            records = _nonempty(shard, scan_records(shard))
            if index_files:
                write_index(records, index_files[k])
        per_shard.append(records)
    return RecordIndex(split, shards, per_shard, index_files)
