"""Multi-hot Criteo on disk: memory-mapped npz members, bad input named by file, batch assembly, rank
slices, validation padding, the prefetch thread, and the synthetic writer."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch

from pipelines.criteo import format as fmt
from pipelines.criteo.loader import CriteoReader, EvalBatches, Prefetcher, TrainBatches

SIZES = (3, 1, 2)  # a small day layout: 3 features, so a file can be written by hand in the tests
ROWS = (11, 4, 7)


def make_day(rng, n, sizes=SIZES, rows=ROWS):
    dense = rng.random((n, fmt.NUM_DENSE), dtype=np.float32)
    labels = rng.integers(0, 2, (n, 1)).astype(np.int32)
    sparse = [rng.integers(0, r, (n, k)).astype(np.int32) for r, k in zip(rows, sizes)]
    return dense, labels, sparse


@pytest.fixture()
def two_days(tmp_path):
    rng = np.random.default_rng(0)
    days = [make_day(rng, n) for n in (10, 7)]
    for i, (dense, labels, sparse) in enumerate(days):
        fmt.write_day(str(tmp_path), i, dense, labels, sparse)
    return tmp_path, days


def test_npz_members_are_memory_mapped_and_equal_to_np_load(two_days):
    path, days = two_days
    npz = os.path.join(path, "day_0_sparse_multi_hot.npz")
    with np.load(npz) as loaded:
        for k in range(len(SIZES)):
            member = fmt.npz_member_memmap(npz, str(k))
            assert isinstance(member, np.memmap) and member.dtype == np.int32
            np.testing.assert_array_equal(member, loaded[str(k)])
    with zipfile.ZipFile(npz) as zf:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())


def test_open_day_checks_the_three_files_against_each_other(two_days):
    path, days = two_days
    day = fmt.open_day(str(path), 1, SIZES)
    assert day.rows == 7 and len(day.sparse) == 3
    np.testing.assert_array_equal(day.dense, days[1][0])
    np.testing.assert_array_equal(day.labels, days[1][1])
    for member, written in zip(day.sparse, days[1][2]):
        np.testing.assert_array_equal(member, written)
    assert fmt.day_rows(str(path), 0) == 10


def _rewrite(path, day, **parts):
    dense_path, labels_path, sparse_path = fmt.day_paths(str(path), day)
    if "dense" in parts:
        np.save(dense_path, parts["dense"])
    if "labels" in parts:
        np.save(labels_path, parts["labels"])
    if "sparse" in parts:
        (np.savez_compressed if parts.get("compressed") else np.savez)(sparse_path, **parts["sparse"])


@pytest.mark.parametrize("case,match", [
    ("dense float64", r"day_0_dense\.npy: expected float32"),
    ("labels rows", r"day_0_labels\.npy: 9 rows, but .*day_0_dense\.npy has 10"),
    ("labels int64", r"day_0_labels\.npy: expected int32"),
    ("member missing", r"day_0_sparse_multi_hot\.npz: no member '2' \(has 0, 1\)"),
    ("member rows", r"day_0_sparse_multi_hot\.npz: member '1' has 8 rows"),
    ("member width", r"day_0_sparse_multi_hot\.npz: member '0' is int32 \(10, 2\), expected int32 \(N, 3\)"),
    ("member int64", r"day_0_sparse_multi_hot\.npz: member '1' is int64"),
    ("compressed", r"day_0_sparse_multi_hot\.npz: member '0' is compressed"),
    ("dense missing", r"day_0_dense\.npy: missing"),
    ("not a zip", r"day_0_sparse_multi_hot\.npz: not a readable npz"),
])
def test_bad_day_files_get_an_error_naming_the_file(two_days, case, match):
    path, days = two_days
    dense, labels, sparse = days[0]
    members = {str(k): s for k, s in enumerate(sparse)}
    if case == "dense float64":
        _rewrite(path, 0, dense=dense.astype(np.float64))
    elif case == "labels rows":
        _rewrite(path, 0, labels=labels[:9])
    elif case == "labels int64":
        _rewrite(path, 0, labels=labels.astype(np.int64))
    elif case == "member missing":
        _rewrite(path, 0, sparse={k: v for k, v in members.items() if k != "2"})
    elif case == "member rows":
        _rewrite(path, 0, sparse={**members, "1": members["1"][:8]})
    elif case == "member width":
        _rewrite(path, 0, sparse={**members, "0": members["0"][:, :2].copy()})
    elif case == "member int64":
        _rewrite(path, 0, sparse={**members, "1": members["1"].astype(np.int64)})
    elif case == "compressed":
        _rewrite(path, 0, sparse=members, compressed=True)
    elif case == "dense missing":
        os.unlink(fmt.day_paths(str(path), 0)[0])
    elif case == "not a zip":
        with open(fmt.day_paths(str(path), 0)[2], "wb") as f:
            f.write(b"not a zip file")
    with pytest.raises(fmt.CriteoFormatError, match=match):
        fmt.open_day(str(path), 0, SIZES)


@pytest.mark.parametrize("bad_id", [11, -1])
def test_an_id_outside_its_table_is_named_with_file_member_and_row(two_days, bad_id):
    path, days = two_days
    dense, labels, sparse = days[1]
    sparse = [s.copy() for s in sparse]
    sparse[0][5, 2] = bad_id
    fmt.write_day(str(path), 1, dense, labels, sparse)
    reader = CriteoReader([fmt.open_day(str(path), d, SIZES) for d in (0, 1)], ROWS, SIZES)
    reader.read(0, 12)  # rows 0..11: day 1's row 5 not included
    with pytest.raises(fmt.CriteoFormatError, match=rf"day_1_sparse_multi_hot\.npz: member '0' row 5 holds id "
                                                    rf"{bad_id}, outside table 0 of 11 rows"):
        reader.read(8, 9)


def test_a_batch_across_a_day_boundary_has_the_keyed_jagged_layout(two_days):
    path, days = two_days
    reader = CriteoReader([fmt.open_day(str(path), d, SIZES) for d in (0, 1)], ROWS, SIZES)
    batch = reader.read(7, 6)  # rows 7..9 of day 0, 0..2 of day 1
    want_dense = np.concatenate([days[0][0][7:], days[1][0][:3]])
    np.testing.assert_array_equal(batch.dense.numpy(), want_dense)
    np.testing.assert_array_equal(batch.labels.numpy(), np.concatenate([days[0][1][7:, 0], days[1][1][:3, 0]]))
    assert batch.labels.dtype == torch.float32 and batch.valid == 6
    kjt = batch.sparse
    assert kjt.keys() == ["cat_0", "cat_1", "cat_2"] and kjt.stride() == 6
    for k, size in enumerate(SIZES):
        feature = kjt[f"cat_{k}"]
        want = np.concatenate([days[0][2][k][7:], days[1][2][k][:3]])
        np.testing.assert_array_equal(feature.values().numpy(), want.reshape(-1))
        assert feature.lengths().tolist() == [size] * 6


def test_rank_slices_of_a_global_batch_are_its_halves_in_order(two_days):
    path, _ = two_days
    reader = CriteoReader([fmt.open_day(str(path), d, SIZES) for d in (0, 1)], ROWS, SIZES)
    whole = list(TrainBatches(reader, 8, 0, 1, steps=2))
    halves = [list(TrainBatches(reader, 8, r, 2, steps=2)) for r in range(2)]
    for step in range(2):
        joined = torch.cat([halves[0][step].dense, halves[1][step].dense])
        torch.testing.assert_close(joined, whole[step].dense)
    resumed = list(TrainBatches(reader, 8, 1, 2, steps=2, start_step=1))
    torch.testing.assert_close(resumed[0].dense, halves[1][1].dense)
    with pytest.raises(ValueError, match="need 24 rows"):
        TrainBatches(reader, 8, 0, 1, steps=3)


def test_validation_rows_are_split_evenly_and_padded_at_the_tail(two_days):
    path, days = two_days
    reader = CriteoReader([fmt.open_day(str(path), 1, SIZES)], ROWS, SIZES, 0, 4)  # ceil(7 / 2) rows
    per_rank = [list(EvalBatches(reader, 1, r, 3)) for r in range(3)]
    assert [len(b) for b in per_rank] == [2, 2, 2]  # ceil(4 / 3) = 2 rows each, one per batch
    assert [[b.valid for b in bs] for bs in per_rank] == [[1, 1], [1, 1], [0, 0]]
    rows = torch.cat([b.dense for bs in per_rank for b in bs])[:4]
    torch.testing.assert_close(rows, torch.from_numpy(days[1][0][:4]))
    pad = per_rank[2][0]
    assert pad.dense.abs().sum() == 0 and pad.sparse.values().abs().sum() == 0 and pad.dense.shape[0] == 1


def test_prefetcher_delivers_in_order_and_reraises_errors():
    assert list(Prefetcher(range(10), depth=3)) == list(range(10))

    def failing():
        yield 1
        raise fmt.CriteoFormatError("day_3_sparse_multi_hot.npz: boom")

    it = Prefetcher(failing(), depth=2)
    assert next(it) == 1
    with pytest.raises(fmt.CriteoFormatError, match="day_3"):
        next(it)
    slow = Prefetcher(iter(range(1000)), depth=1)
    next(slow)
    slow.close()  # a consumer that stops early does not leave the thread blocked


def test_synthetic_writer_is_deterministic_and_bags_come_from_the_lookup_tables(tmp_path):
    from pipelines.criteo.prepare.multi_hot import lookup_tables
    from pipelines.criteo.synthetic import write_synthetic_criteo

    rows = tuple(min(r, 50) for r in fmt.TABLE_ROWS)
    info = write_synthetic_criteo(str(tmp_path / "a"), days=2, rows_per_day=300, table_rows=rows, seed=3)
    write_synthetic_criteo(str(tmp_path / "b"), days=2, rows_per_day=300, table_rows=rows, seed=3)
    for name in ("day_1_dense.npy", "day_1_labels.npy", "day_1_sparse_multi_hot.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert json.loads((tmp_path / "a" / "synthetic_info.json").read_text()) == info
    assert info["planted_model_validation_auroc"] > 0.85
    day = fmt.open_day(str(tmp_path / "a"), 0)
    tables = lookup_tables(rows)
    for k, member in enumerate(day.sparse):  # each bag is the table row of its one-hot id (its first element)
        np.testing.assert_array_equal(member, tables[k][member[:, 0]])
    assert np.all(day.dense >= np.log(3.0, dtype=np.float32))  # log(x + 3) of counts >= 0


# -- sizes checked when a day is opened: a member shorter (or longer) than its .npy header says -----------------
def _npy_bytes(header_like: np.ndarray, data: np.ndarray) -> bytes:
    """An .npy whose header describes `header_like` (dtype, shape) but whose payload is `data`'s bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(header_like))
    return buf.getvalue() + np.ascontiguousarray(data).tobytes()


def _header_len(header_like: np.ndarray) -> int:
    return len(_npy_bytes(header_like, header_like[:0]))


def _write_npz_with_raw_member(path, members: dict, name: str, raw: bytes) -> None:
    """np.savez's layout (stored, not compressed), member `name` replaced by `raw`: a structurally valid zip."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for k, array in members.items():
            zf.writestr(f"{k}.npy", raw if k == name else _npy_bytes(array, array))


@pytest.mark.parametrize("case,member,data", [
    ("truncated", "1", lambda m: m[:8]),  # header (10, 1): 2 rows short; would read into member '2'
    ("header int32, data int16", "0", lambda m: m.astype(np.int16)),
    ("header int32, data int64", "2", lambda m: m.astype(np.int64)),
    ("header (10, 3), data (10, 2)", "0", lambda m: m[:, :2]),
    ("trailing bytes", "2", lambda m: np.concatenate([m, m[:1]])),
])
def test_an_npz_member_whose_bytes_disagree_with_its_header_is_named_at_open(two_days, case, member, data):
    """Before: a short middle member memory-mapped its neighbour's bytes and surfaced, if at all, as 'id outside
    table' when training reached the row. Now open_day compares each member's byte length with its header."""
    path, days = two_days
    members = {str(k): s for k, s in enumerate(days[0][2])}
    payload = data(members[member])
    sparse_path = fmt.day_paths(str(path), 0)[2]
    _write_npz_with_raw_member(sparse_path, members, member, _npy_bytes(members[member], payload))
    with np.load(sparse_path, allow_pickle=False) as z:  # the header itself is valid: np.load reads it
        assert z.files == ["0", "1", "2"]
    expected = _header_len(members[member]) + members[member].nbytes
    actual = _header_len(members[member]) + payload.nbytes
    match = (rf"day_0_sparse_multi_hot\.npz: member '{member}' is {actual} bytes, but its \.npy header "
             rf"\(int32 \(10, {SIZES[int(member)]}\)\) implies {expected}")
    with pytest.raises(fmt.CriteoFormatError, match=match):
        fmt.open_day(str(path), 0, SIZES)
    with pytest.raises(fmt.CriteoFormatError, match=match):
        fmt.npz_member_memmap(sparse_path, member)


def test_npz_members_must_agree_on_rows_among_themselves(two_days):
    path, days = two_days
    members = {str(k): s for k, s in enumerate(days[0][2])}
    _rewrite(path, 0, sparse={**members, "2": members["2"][:9]})
    with pytest.raises(fmt.CriteoFormatError, match=r"member '2' has 9 rows, but .*day_0_dense\.npy has 10"):
        fmt.open_day(str(path), 0, SIZES)


def _synthetic_day(tmp_path):
    from pipelines.criteo.synthetic import write_synthetic_criteo

    rows = tuple(min(r, 50) for r in fmt.TABLE_ROWS)
    write_synthetic_criteo(str(tmp_path), days=2, rows_per_day=40, table_rows=rows, seed=3)
    fmt.open_day(str(tmp_path), 0)  # as written: fine
    return fmt.day_paths(str(tmp_path), 0)


@pytest.mark.parametrize("which", [0, 1])  # dense, labels
def test_a_truncated_synthetic_npy_is_named_with_expected_and_actual_bytes(tmp_path, which):
    path = _synthetic_day(tmp_path)[which]
    size = os.path.getsize(path)
    os.truncate(path, size - 6)
    with pytest.raises(fmt.CriteoFormatError, match=rf"day_0_(dense|labels)\.npy: the file is {size - 6} bytes, but "
                                                    rf"its \.npy header .* implies {size} .*: truncated"):
        fmt.open_day(str(tmp_path), 0)


def test_a_truncated_synthetic_npz_is_named(tmp_path):
    path = _synthetic_day(tmp_path)[2]
    os.truncate(path, os.path.getsize(path) // 2)  # the zip directory at the end is lost with the tail
    with pytest.raises(fmt.CriteoFormatError, match=r"day_0_sparse_multi_hot\.npz: not a readable npz/zip file "
                                                    r".*truncated"):
        fmt.open_day(str(tmp_path), 0)


def test_an_npz_member_of_python_objects_is_refused_without_unpickling(two_days):
    path, days = two_days
    members = {str(k): s for k, s in enumerate(days[0][2])}
    objects = np.empty((10, 1), dtype=object)
    sparse_path = fmt.day_paths(str(path), 0)[2]
    with zipfile.ZipFile(sparse_path, "w") as zf:
        for k, array in members.items():
            buf = io.BytesIO()
            np.save(buf, objects if k == "1" else array, allow_pickle=True)  # writing only; never loaded
            zf.writestr(f"{k}.npy", buf.getvalue())
    with pytest.raises(fmt.CriteoFormatError, match=r"member '1' holds Python objects"):
        fmt.open_day(str(path), 0, SIZES)
