"""TFRecord container and tf.Example messages, read and written without TensorFlow or protobuf.

A TFRecord file is a sequence of records, each laid out as

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

all little-endian. The index format DALI's tfrecord reader takes is one text line per record,
"<offset> <size>", where size counts the 16 framing bytes too; `scan_records` returns exactly that
from the headers alone, `verify_records` after checking every record of the file in full.

CRC32C (Castagnoli) has no stdlib implementation (zlib's crc32 uses another polynomial), so it is
computed here: short inputs byte by byte from a 256-entry table, long ones with numpy over many
independent 64-byte lanes whose CRCs are then merged (a CRC is linear over GF(2), so the CRC of
A||B is shift_|B|(crc(A)) xor crc(B)). That makes a 100 KB JPEG record cost well under a millisecond
instead of ~10 ms in a Python loop.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from runtime.atomic_write import AtomicPath, atomic_open

_POLY = 0x82F63B78  # CRC32C polynomial, bit-reversed
_MASK_DELTA = 0xA282EAD8  # TFRecord's CRC masking constant
_LANE_BYTES = 64  # bytes per lane of the vector path; 16 numpy steps, then a log2(lanes) merge
_VECTOR_MIN = 1024  # below this the Python loop (~0.12 us/byte) beats numpy's ~200 us fixed cost
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
FRAMING_BYTES = _HEADER.size + _FOOTER.size


class TFRecordError(ValueError):
    """A shard is corrupt or truncated; the message names the file and the record offset."""


# ---------------------------------------------------------------------------------------------
# CRC32C

def _build_byte_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1).astype(np.uint32)
    return table


_BYTE_TABLE = _build_byte_table()
_BYTE_TABLE_LIST = _BYTE_TABLE.tolist()


def _four_zero_bytes(register: np.ndarray) -> np.ndarray:
    for _ in range(4):
        register = _BYTE_TABLE[register & 0xFF] ^ (register >> 8)
    return register


# Advancing the register over one little-endian 32-bit word w is F(register ^ w), with F linear, so
# F splits into two 65536-entry tables for the low and high halves of its argument.
_WORD_LOW = _four_zero_bytes(np.arange(65536, dtype=np.uint32))
_WORD_HIGH = _four_zero_bytes(np.arange(65536, dtype=np.uint32) << 16)


def _operator_tables(columns: np.ndarray) -> np.ndarray:
    """Byte tables [4, 256] of the GF(2) linear map whose images of the 32 unit vectors are `columns`."""
    tables = np.zeros((4, 256), dtype=np.uint32)
    for byte in range(4):
        for bit in range(8):
            span = 1 << bit
            tables[byte, span:2 * span] = tables[byte, :span] ^ columns[8 * byte + bit]
    return tables


_BYTE_POSITIONS = (0, 1, 2, 3) if sys.byteorder == "little" else (3, 2, 1, 0)  # of each uint32's bytes


def _apply(tables: np.ndarray, x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.uint32)
    octets = x.view(np.uint8).reshape(x.shape + (4,))
    out = np.take(tables[0], octets[..., _BYTE_POSITIONS[0]])
    for byte in (1, 2, 3):
        out ^= np.take(tables[byte], octets[..., _BYTE_POSITIONS[byte]])
    return out


_UNITS = np.uint32(1) << np.arange(32, dtype=np.uint32)
_SHIFT_TABLES = {4: _operator_tables(_four_zero_bytes(_UNITS))}  # bytes of zeros -> operator


def _shift_tables(num_zero_bytes: int) -> np.ndarray:
    """Operator moving a register over `num_zero_bytes` zeros; only powers of two times 4 are used."""
    if num_zero_bytes not in _SHIFT_TABLES:
        half = _shift_tables(num_zero_bytes // 2)
        _SHIFT_TABLES[num_zero_bytes] = _operator_tables(_apply(half, _apply(half, _UNITS)))
    return _SHIFT_TABLES[num_zero_bytes]


_LOW_HALF, _HIGH_HALF = (0, 1) if sys.byteorder == "little" else (1, 0)  # uint16 halves of a uint32


def _lane_registers(words: np.ndarray) -> np.ndarray:
    """Registers, from zero, after each row of `words` ([lanes, words per lane], little-endian
    uint32 words of each lane's bytes in order). np.take with uint16 index views: fancy indexing
    with a uint32 index costs ~7 ns an element, this ~1 ns."""
    lanes = np.zeros(words.shape[0], dtype=np.uint32)
    x, high = np.empty_like(lanes), np.empty_like(lanes)
    halves = x.view(np.uint16)
    low_index, high_index = halves[_LOW_HALF::2], halves[_HIGH_HALF::2]
    for column in words.T:  # strided columns: cheaper than a transposed copy at these sizes
        np.bitwise_xor(lanes, column, out=x)
        np.take(_WORD_LOW, low_index, out=lanes, mode="clip")  # indices < 65536: clip never clips
        np.take(_WORD_HIGH, high_index, out=high, mode="clip")
        np.bitwise_xor(lanes, high, out=lanes)
    return lanes


def _register_over(data: bytes | memoryview, register: int) -> int:
    if len(data) < _VECTOR_MIN:
        table = _BYTE_TABLE_LIST
        for byte in data:
            register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
        return register
    # Leading zero bytes leave a zero register unchanged, so pad at the front to whole lanes and fold
    # the starting register into the first four data bytes (same effect as starting from it).
    size = len(data)
    pad = -size % _LANE_BYTES
    buffer = np.zeros(size + pad, dtype=np.uint8)
    buffer[pad:] = np.frombuffer(data, dtype=np.uint8)
    buffer[pad:pad + 4] ^= np.frombuffer(register.to_bytes(4, "little"), dtype=np.uint8)
    lanes = _lane_registers(buffer.view("<u4").reshape(-1, _LANE_BYTES // 4))
    span = _LANE_BYTES
    while lanes.size > 1:
        if lanes.size % 2:  # an all-zero lane in front changes nothing
            lanes = np.concatenate((np.zeros(1, dtype=np.uint32), lanes))
        pairs = lanes.reshape(-1, 2)
        lanes = _apply(_shift_tables(span), pairs[:, 0]) ^ pairs[:, 1]
        span *= 2
    return int(lanes[0])


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C of `data`; pass a previous result as `crc` to continue over concatenated input."""
    return _register_over(memoryview(data).cast("B"), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Records

def encode_record(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return b"".join((length, _FOOTER.pack(masked_crc32c(length)), payload,
                     _FOOTER.pack(masked_crc32c(payload))))


class TFRecordWriter:
    """Writes a shard atomically: records go to a temporary file renamed over `path` on close, so a
    crashed conversion never leaves a plausible-looking partial shard behind."""

    def __init__(self, path: str):
        self.path = path
        self._target = AtomicPath(path)
        self._file = open(self._target.tmp, "wb")
        self.num_records = 0

    def write(self, payload: bytes) -> None:
        self._file.write(encode_record(payload))
        self.num_records += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
            self._target.commit()

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
            self._target.discard()


def _check_header(path: str, offset: int, header: bytes) -> int:
    if len(header) < _HEADER.size:
        raise TFRecordError(f"{path}: truncated record header at offset {offset} "
                            f"({len(header)} of {_HEADER.size} bytes)")
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
        raise TFRecordError(f"{path}: bad length CRC in record at offset {offset} "
                            "(corrupt file, or not a TFRecord file)")
    return length


def _check_data(path: str, offset: int, length: int, body: bytes) -> bytes:
    """`body` is data + footer; returns the data after checking its size and CRC."""
    if len(body) < length + _FOOTER.size:
        raise TFRecordError(f"{path}: truncated record at offset {offset}: expected "
                            f"{length + _FOOTER.size} bytes after the header, file has {len(body)}")
    data = body[:length]
    (data_crc,) = _FOOTER.unpack_from(body, length)
    if masked_crc32c(data) != data_crc:
        raise TFRecordError(f"{path}: bad data CRC in record at offset {offset} ({length} bytes)")
    return data


def read_record_at(fd: int, path: str, offset: int, size: int) -> bytes:
    """Payload of the record at `offset` spanning `size` bytes (framing included) of an open file
    descriptor; both CRCs are checked. os.pread keeps this safe to share across threads."""
    raw = os.pread(fd, size, offset)
    if len(raw) < size:
        raise TFRecordError(f"{path}: truncated record at offset {offset}: index says {size} bytes, "
                            f"file has {len(raw)}")
    length = _check_header(path, offset, raw[:_HEADER.size])
    if length + FRAMING_BYTES != size:
        raise TFRecordError(f"{path}: record at offset {offset} holds {length} bytes but the index "
                            f"says {size - FRAMING_BYTES} (stale index?)")
    return _check_data(path, offset, length, raw[_HEADER.size:])


def iter_records(path: str) -> Iterator[bytes]:
    """Payloads of every record in a shard, in order, CRC-checked."""
    with open(path, "rb") as f:
        offset = 0
        while header := f.read(_HEADER.size):
            length = _check_header(path, offset, header)
            yield _check_data(path, offset, length, f.read(length + _FOOTER.size))
            offset += length + FRAMING_BYTES


def scan_records(path: str) -> list[tuple[int, int]]:
    """(offset, size) of each record, size including framing (DALI's index format). Reads only the
    headers, so it costs a seek per record; data CRCs are checked when a record is read."""
    file_size = os.path.getsize(path)
    records = []
    with open(path, "rb") as f:
        offset = 0
        while offset < file_size:
            f.seek(offset)
            length = _check_header(path, offset, f.read(_HEADER.size))
            size = length + FRAMING_BYTES
            if offset + size > file_size:
                raise TFRecordError(f"{path}: truncated record at offset {offset}: needs {size} "
                                    f"bytes, file ends after {file_size - offset}")
            records.append((offset, size))
            offset += size
    return records


_BULK_LANE_BYTES = 1024  # lanes of the whole-shard check: fewer lanes to merge, <1% padding on JPEGs
_BULK_BATCH_BYTES = 8 << 20  # records checked together; measured fastest of 2, 8 and 32 MiB


def _data_crcs(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """crc32c of buffer[start:start + length] for each record, all records in one vector pass.

    Each record is copied front-padded to whole lanes (leading zeros leave a zero register alone)
    with the initial register folded into its first four bytes; every lane's register is computed
    at once, moved over the lanes that follow it in its record (a shift by k lanes is the product
    of the power-of-two shifts in k's binary digits) and XORed together per record."""
    crcs = np.zeros(len(starts), dtype=np.uint32)
    short = lengths < 4  # too short to fold the initial register into; none in a real shard
    for i in np.flatnonzero(short):
        crcs[i] = crc32c(buffer[starts[i]:starts[i] + lengths[i]])
    starts, lengths, rows = starts[~short], lengths[~short], np.flatnonzero(~short)
    if not len(rows):
        return crcs
    lane_counts = -(-lengths // _BULK_LANE_BYTES)
    first_lanes = np.concatenate(([0], np.cumsum(lane_counts)[:-1]))
    padded = np.zeros(int(lane_counts.sum()) * _BULK_LANE_BYTES, dtype=np.uint8)
    for start, length, first, count in zip(starts.tolist(), lengths.tolist(), first_lanes.tolist(),
                                           lane_counts.tolist()):
        begin = (first + count) * _BULK_LANE_BYTES - length
        padded[begin:begin + length] = buffer[start:start + length]
        padded[begin:begin + 4] ^= 0xFF  # the initial register 0xFFFFFFFF
    lanes = _lane_registers(padded.view("<u4").reshape(-1, _BULK_LANE_BYTES // 4))
    lanes_after = np.repeat(first_lanes + lane_counts - 1, lane_counts) - np.arange(len(lanes))
    bit = 0
    while lanes_after.any():
        moved = np.flatnonzero(lanes_after & 1)
        lanes[moved] = _apply(_shift_tables(_BULK_LANE_BYTES << bit), lanes[moved])
        lanes_after >>= 1
        bit += 1
    crcs[rows] = np.bitwise_xor.reduceat(lanes, first_lanes) ^ np.uint32(0xFFFFFFFF)
    return crcs


def _masked(crcs: np.ndarray) -> np.ndarray:
    return ((crcs >> 15) | (crcs << 17)) + np.uint32(_MASK_DELTA)  # uint32 arithmetic wraps


def _check_data_crcs(path: str, data: np.ndarray, records: list[tuple[int, int]], first: int) -> None:
    """Data CRCs of records[first:] (whose headers are checked) against their footers."""
    offsets = np.array([offset for offset, _ in records[first:]], dtype=np.int64)
    lengths = np.array([size - FRAMING_BYTES for _, size in records[first:]], dtype=np.int64)
    footers = (offsets + _HEADER.size + lengths)[:, None] + np.arange(_FOOTER.size)
    stored = np.ascontiguousarray(data[footers]).view("<u4").ravel()
    computed = _masked(_data_crcs(data, offsets + _HEADER.size, lengths))
    bad = np.flatnonzero(computed != stored)
    if len(bad):
        i = int(bad[0])
        raise TFRecordError(f"{path}: bad data CRC in record {first + i} at offset {offsets[i]} "
                            f"({lengths[i]} bytes: stored {int(stored[i]):#010x}, "
                            f"computed {int(computed[i]):#010x})")


def verify_records(path: str) -> list[tuple[int, int]]:
    """(offset, size) of each record, as scan_records returns them, after checking the whole shard:
    every record's length CRC, data CRC and that it is complete. Raises TFRecordError at the first
    problem in file order, naming the file, the record's number (from 0) and offset, and what is
    wrong. Data CRCs are computed over batches of records at once (see _data_crcs): about twice the
    speed of checking record by record (read_record_at, iter_records)."""
    file_size = os.path.getsize(path)
    if file_size == 0:
        return []
    data = np.memmap(path, dtype=np.uint8, mode="r")  # unmapped when the last view of it goes
    records: list[tuple[int, int]] = []
    unchecked, unchecked_bytes = 0, 0  # records[unchecked:] have their headers checked, not their data
    offset = 0
    while offset < file_size:
        number, problem = len(records), None
        if offset + _HEADER.size > file_size:
            problem = (f"truncated record {number} at offset {offset}: the file ends "
                       f"{file_size - offset} bytes into its {_HEADER.size}-byte header")
        else:
            header = data[offset:offset + _HEADER.size].tobytes()
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                problem = (f"bad length CRC in record {number} at offset {offset} "
                           "(corrupt length field, or not a TFRecord file)")
            elif offset + length + FRAMING_BYTES > file_size:
                problem = (f"truncated record {number} at offset {offset}: needs {length + FRAMING_BYTES} "
                           f"bytes, the file ends after {file_size - offset}")
        if problem is not None:
            if unchecked < len(records):
                _check_data_crcs(path, data, records, unchecked)  # an earlier bad record goes first
            raise TFRecordError(f"{path}: {problem}")
        records.append((offset, length + FRAMING_BYTES))
        offset += length + FRAMING_BYTES
        unchecked_bytes += length
        if unchecked_bytes >= _BULK_BATCH_BYTES or offset >= file_size:
            _check_data_crcs(path, data, records, unchecked)
            unchecked, unchecked_bytes = len(records), 0
    return records


def write_index(records: Sequence[tuple[int, int]], index_path: str) -> None:
    with atomic_open(index_path, "w") as f:  # other ranks may be reading or writing the same index
        f.writelines(f"{offset} {size}\n" for offset, size in records)


def read_index(index_path: str) -> list[tuple[int, int]]:
    with open(index_path) as f:
        return [(int(offset), int(size)) for offset, size in (line.split() for line in f)]


# ---------------------------------------------------------------------------------------------
# tf.Example:  Example{1: Features}  Features{1: map<string, Feature>}  (map entry {1: key, 2: value})
#              Feature{1: BytesList | 2: FloatList | 3: Int64List}, each list {1: repeated value}

class ExampleError(ValueError):
    """A tf.Example payload does not parse; the caller adds the file and offset."""


class Feature(NamedTuple):
    kind: str  # "bytes", "float" or "int64"
    values: list


def bytes_feature(values: Sequence[bytes | str]) -> Feature:
    return Feature("bytes", [v.encode() if isinstance(v, str) else bytes(v) for v in values])


def float_feature(values: Sequence[float]) -> Feature:
    return Feature("float", [float(v) for v in values])


def int64_feature(values: Sequence[int]) -> Feature:
    return Feature("int64", [int(v) for v in values])


_KIND_FIELDS = {"bytes": 1, "float": 2, "int64": 3}
_FIELD_KINDS = {number: kind for kind, number in _KIND_FIELDS.items()}


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 go out as 10-byte two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _encode_feature(feature: Feature) -> bytes:
    if feature.kind == "bytes":
        body = b"".join(_length_delimited(1, v) for v in feature.values)
    elif feature.kind == "float":  # packed, as TensorFlow writes them
        body = _length_delimited(1, struct.pack(f"<{len(feature.values)}f", *feature.values)) \
            if feature.values else b""
    elif feature.kind == "int64":
        body = _length_delimited(1, b"".join(map(_varint, feature.values))) if feature.values else b""
    else:
        raise ValueError(f"unknown feature kind {feature.kind!r}")
    return _length_delimited(_KIND_FIELDS[feature.kind], body)


def encode_example(features: dict[str, Feature]) -> bytes:
    """Serialized tf.Example; keys are written sorted so equal inputs give equal bytes."""
    entries = b"".join(
        _length_delimited(1, _length_delimited(1, key.encode()) + _length_delimited(2, _encode_feature(f)))
        for key, f in sorted(features.items()))
    return _length_delimited(1, entries)


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ExampleError(f"truncated or overlong varint at byte {pos}")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of one message; value is an int for varints, else a
    memoryview of the field's bytes."""
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos, end)
        else:
            if wire == 2:
                size, pos = _read_varint(buf, pos, end)
            elif wire in (1, 5):
                size = 8 if wire == 1 else 4
            else:
                raise ExampleError(f"unsupported wire type {wire} for field {field} at byte {pos}")
            if pos + size > end:
                raise ExampleError(f"field {field} at byte {pos} runs {pos + size - end} bytes past "
                                   "the end of its message")
            value, pos = buf[pos:pos + size], pos + size
        yield field, wire, value


def _decode_list(kind: str, buf: memoryview) -> list:
    values: list = []
    for field, wire, value in _fields(buf, 0, len(buf)):
        if field != 1:
            continue  # unknown fields are skipped, as protobuf parsers do
        if kind == "bytes" and wire == 2:
            values.append(bytes(value))
        elif kind == "float" and wire in (2, 5):  # packed or one fixed32
            if len(value) % 4:
                raise ExampleError(f"packed float list of {len(value)} bytes is not a multiple of 4")
            values.extend(struct.unpack(f"<{len(value) // 4}f", value))
        elif kind == "int64" and wire == 2:  # packed
            pos = 0
            while pos < len(value):
                number, pos = _read_varint(value, pos, len(value))
                values.append(number - (1 << 64) if number >> 63 else number)
        elif kind == "int64" and wire == 0:
            values.append(value - (1 << 64) if value >> 63 else value)
        else:
            raise ExampleError(f"{kind} list has a value of wire type {wire}")
    return values


def decode_example(payload: bytes | memoryview) -> dict[str, Feature]:
    """Features of a serialized tf.Example; values are lists (bytes, float or int)."""
    buf = memoryview(payload).cast("B")
    features: dict[str, Feature] = {}
    for field, wire, features_msg in _fields(buf, 0, len(buf)):
        if field != 1 or wire != 2:
            continue
        for entry_field, entry_wire, entry in _fields(features_msg, 0, len(features_msg)):
            if entry_field != 1 or entry_wire != 2:
                continue
            key, feature = None, Feature("empty", [])  # a Feature with no list set
            for part_field, part_wire, part in _fields(entry, 0, len(entry)):
                if part_field == 1 and part_wire == 2:
                    key = bytes(part).decode()
                elif part_field == 2 and part_wire == 2:
                    for kind_field, kind_wire, body in _fields(part, 0, len(part)):
                        if kind_field in _FIELD_KINDS and kind_wire == 2:
                            kind = _FIELD_KINDS[kind_field]
                            feature = Feature(kind, _decode_list(kind, body))
            if key is None:
                raise ExampleError("feature map entry without a key")
            features[key] = feature
    return features
