"""The preprocessing chain on tiny fake Criteo TSVs: each step against torchrec's own implementation of it
(the reference runs torchrec's scripts), the lookup tables against the reference's one-shot draw, and the
whole chain through preprocess.sh into files the training loader reads."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from pipelines.criteo import format as fmt
from pipelines.criteo.prepare import contiguous, multi_hot, shuffle, tsv_to_npy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAYS = 3
ROWS_PER_DAY = (40, 25, 31)


def fake_tsv(path, rows: int, rng) -> None:
    """label, 13 ints (some missing, some -1), 26 hex ids from small vocabularies (repeats across days)."""
    lines = []
    for _ in range(rows):
        ints = ["" if rng.random() < 0.15 else str(int(rng.integers(-1, 300))) for _ in range(13)]
        cats = ["" if rng.random() < 0.1 else f"{int(rng.integers(0, 12 + 5 * k)) * 2654435761 % 2**32:08x}"
                for k in range(26)]
        lines.append("\t".join([str(int(rng.integers(0, 2)))] + ints + cats))
    lines[0] = lines[0].split("\t", 2)[0] + "\t-1\t" + lines[0].split("\t", 2)[2]  # every day's minimum is -1
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def raw_days(tmp_path_factory):
    raw = tmp_path_factory.mktemp("criteo_raw")
    rng = np.random.default_rng(0)
    for day, rows in enumerate(ROWS_PER_DAY):
        fake_tsv(raw / f"day_{day}", rows, rng)
    return raw


def test_hex_parsing_matches_python_int():
    values = np.array(["", "0", "0a", "7fffffff", "80000000", "ffffffff", "DEADBEEF", "1234abcd"])
    parsed = tsv_to_npy.parse_hex_column(values).view(np.uint32)
    assert parsed.tolist() == [int(v or "0", 16) for v in values]


def test_dense_is_log_x_plus_3_and_rejects_values_below_minus_2():
    np.testing.assert_allclose(tsv_to_npy.dense_transform(np.array([[-2, -1, 0, 7]])),
                               np.log(np.array([[1, 2, 3, 10]], np.float64)).astype(np.float32))
    with pytest.raises(ValueError, match="-3"):
        tsv_to_npy.dense_transform(np.array([-3]))


def test_tsv_to_npy_matches_torchrec(raw_days, tmp_path):
    pytest.importorskip("iopath")
    from torchrec.datasets.criteo import BinaryCriteoUtils

    rows = tsv_to_npy.convert_day(str(raw_days / "day_0"), str(tmp_path), 0)
    assert rows == ROWS_PER_DAY[0]
    theirs = [str(tmp_path / f"ref_{p}.npy") for p in ("dense", "sparse", "labels")]
    BinaryCriteoUtils.tsv_to_npys(str(raw_days / "day_0"), *theirs)
    ours = {p: np.load(tmp_path / f"day_0_{p}.npy") for p in ("dense", "sparse", "labels")}
    ref = {p: np.load(f) for p, f in zip(("dense", "sparse", "labels"), theirs)}
    assert ours["sparse"].dtype == np.int32 and ours["dense"].dtype == np.float32
    np.testing.assert_array_equal(ours["sparse"].view(np.uint32), ref["sparse"])
    np.testing.assert_array_equal(ours["labels"], ref["labels"])
    # torchrec 1.9 shifts by the day's minimum (log(x - min + 2)); the reference's log(x + 3) is the same
    # transform when the minimum is -1, as in this fake day.
    np.testing.assert_array_equal(ours["dense"], ref["dense"])


@pytest.fixture(scope="module")
def step1(raw_days, tmp_path_factory):
    out = tmp_path_factory.mktemp("step1")
    for day in range(DAYS):
        tsv_to_npy.convert_day(str(raw_days / f"day_{day}"), str(out), day)
    return out


def test_contiguous_ids_match_torchrec_first_appearance_order(step1, tmp_path, monkeypatch):
    pytest.importorskip("iopath")
    from torchrec.datasets.criteo import BinaryCriteoUtils

    monkeypatch.setattr(contiguous, "_BLOCK_ROWS", 7)  # several blocks per day
    paths = [str(step1 / f"day_{d}_sparse.npy") for d in range(DAYS)]
    maps = contiguous.build_maps(paths)
    os.makedirs(tmp_path / "ours")
    for d, p in enumerate(paths):
        contiguous.apply_maps(p, str(tmp_path / "ours" / f"day_{d}_sparse.npy"), maps)
    # torchrec maps in place over int64 copies of the hex values; give it those
    os.makedirs(tmp_path / "in64")
    in64 = []
    for d, p in enumerate(paths):
        in64.append(str(tmp_path / "in64" / f"day_{d}_sparse.npy"))
        np.save(in64[-1], np.load(p).view(np.uint32).astype(np.int64))
    BinaryCriteoUtils.sparse_to_contiguous(in64, str(tmp_path), frequency_threshold=0)
    for d in range(DAYS):
        ours = np.load(tmp_path / "ours" / f"day_{d}_sparse.npy")
        theirs = np.load(tmp_path / f"day_{d}_sparse_contig_freq.npy")
        np.testing.assert_array_equal(ours, theirs)
    assert ours.min() >= contiguous.FIRST_ID


def test_shuffle_matches_torchrec_order_and_float32_rounding(step1, tmp_path):
    pytest.importorskip("iopath")
    from torchrec.datasets.criteo import BinaryCriteoUtils

    sparse_dir = tmp_path / "sparse"
    os.makedirs(sparse_dir)
    rng = np.random.default_rng(1)
    for d in range(DAYS):  # ids above 2^24 too, where float32 rounds
        ids = rng.integers(0, 2**28, (ROWS_PER_DAY[d], 26)).astype(np.int32)
        np.save(sparse_dir / f"day_{d}_sparse.npy", ids)
    shuffle.shuffle_days(str(step1), str(sparse_dir), str(tmp_path / "ours"), list(range(DAYS - 1)), DAYS - 1, seed=0)
    os.makedirs(tmp_path / "theirs")
    # as torchrec's shuffle_preproc_criteo.py calls it: row counts of the training days only
    BinaryCriteoUtils.shuffle(str(step1), str(sparse_dir), str(tmp_path / "theirs"),
                              rows_per_day=dict(enumerate(ROWS_PER_DAY[:-1])), days=DAYS, random_seed=0)
    for d in range(DAYS):
        for part in ("dense", "sparse", "labels"):
            ours = np.load(tmp_path / "ours" / f"day_{d}_{part}.npy")
            theirs = np.load(tmp_path / "theirs" / f"day_{d}_{part}.npy")
            assert ours.dtype == theirs.dtype, (d, part)
            np.testing.assert_array_equal(ours, theirs, err_msg=f"day {d} {part}")
    original = np.load(sparse_dir / "day_0_sparse.npy")
    shuffled = np.load(tmp_path / "ours" / "day_0_sparse.npy")
    def representable(ids):
        return ids == ids.astype(np.float32).astype(np.int32)

    assert representable(shuffled).all() and not representable(original).all()  # ids rounded through float32
    exact = tmp_path / "exact"
    shuffle.shuffle_days(str(step1), str(sparse_dir), str(exact), list(range(DAYS - 1)), DAYS - 1, exact_ids=True)
    both = np.concatenate([np.load(sparse_dir / f"day_{d}_sparse.npy") for d in range(DAYS - 1)])
    first_day = both[shuffle.reference_permutation(len(both))[:ROWS_PER_DAY[0]]]
    np.testing.assert_array_equal(np.load(exact / "day_0_sparse.npy"), first_day)


def test_lookup_tables_drawn_in_chunks_equal_the_reference_one_shot_draw():
    rows, sizes = (7, 40, 3, 25), (3, 1, 100, 12)
    np.random.seed(0)  # the reference: the global legacy generator, one randint per feature, in feature order
    expected = []
    for n, size in zip(rows, sizes):
        ids = np.random.randint(0, n, size=(n, size - 1))
        expected.append(np.concatenate([np.arange(n)[:, None], ids], axis=1).astype(np.int32))
    chunked = [np.empty((n, s), np.int32) for n, s in zip(rows, sizes)]
    for k, start, block in multi_hot.iter_lookup_tables(rows, sizes, chunk_rows=4):
        chunked[k][start:start + len(block)] = block
    for k in range(len(rows)):
        np.testing.assert_array_equal(chunked[k], expected[k])
    one_hot = np.array([[0, 39, 2, 24], [8, 41, 5, 3]])  # ids past the table wrap (id % rows)
    bags = multi_hot.expand(one_hot, expected)
    np.testing.assert_array_equal(bags[0][1], expected[0][1])
    np.testing.assert_array_equal(bags[1][:, 0], [39, 1])
    np.testing.assert_array_equal(bags[2][1], expected[2][2])


def test_whole_chain_from_tsv_to_files_the_loader_reads(raw_days, tmp_path):
    rows = ",".join(str(r) for r in (5, 7, 3, 11, 2, 3, 9, 4, 6, 13, 3, 8, 10, 2, 5, 7, 4, 3, 14, 6, 9, 12, 3, 8, 5, 4))
    env = {**os.environ, "RAW_DIR": str(raw_days), "TMP_DIR": str(tmp_path / "tmp"),
           "DATA_DIR": str(tmp_path / "data"), "DAYS": str(DAYS), "WORKERS": "1", "TABLE_ROWS": rows,
           "VERIFY_FLAGS": "--train-samples 65 --eval-samples 16"}
    r = subprocess.run(["bash", "pipelines/criteo/prepare/preprocess.sh"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "OK: 65 training and 16 validation samples" in r.stdout
    from pipelines.criteo.loader import CriteoReader

    table_rows = tuple(int(x) for x in rows.split(","))
    days = [fmt.open_day(str(tmp_path / "data"), d) for d in range(DAYS)]
    batch = CriteoReader(days[:-1], table_rows, fmt.MULTI_HOT_SIZES).read(60, 5)  # the training set's last rows
    assert batch.sparse.values().numel() == 5 * sum(fmt.MULTI_HOT_SIZES)
    # the same rows of the training days concatenated by hand, feature by feature
    np.testing.assert_array_equal(batch.dense.numpy(), np.concatenate([d.dense for d in days[:-1]])[60:65])
    np.testing.assert_array_equal(batch.labels.numpy(), np.concatenate([d.labels for d in days[:-1]])[60:65, 0])
    for k in range(len(fmt.MULTI_HOT_SIZES)):
        want = np.concatenate([d.sparse[k] for d in days[:-1]])[60:65].reshape(-1)
        np.testing.assert_array_equal(batch.sparse[f"cat_{k}"].values().numpy(), want)
    # the validation day is not shuffled: its one-hot ids are the contiguous ids of the raw day, in order
    step2 = np.load(tmp_path / "tmp" / "step2" / f"day_{DAYS - 1}_sparse.npy")
    np.testing.assert_array_equal(days[-1].sparse[20][:, 0], step2[:, 20] % table_rows[20])
