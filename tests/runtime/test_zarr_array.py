"""Our zarr v2 reader/writer against the zarr package (v2, what Megatron's zarr checkpoints were written with)."""

import os

import numpy as np
import pytest
import torch

from runtime.mcore.zarr_array import ZarrArray, ZarrError, write_zarr

zarr = pytest.importorskip("zarr")
numcodecs = pytest.importorskip("numcodecs")


def _reference_array(path, data, chunks, compressor=None):
    arr = zarr.create(data.shape, dtype=data.dtype, chunks=chunks, store=str(path), compressor=compressor,
                      fill_value=None)
    arr[...] = data
    return arr


@pytest.mark.parametrize("compressor", [None, "blosc"], ids=["raw", "blosc"])
def test_regions_of_a_zarr_written_array_read_back_identically(tmp_path, compressor):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((5, 7, 6)).astype(np.float32)  # chunks leave partial edge chunks on every axis
    codec = numcodecs.Blosc(cname="zstd", clevel=3) if compressor else None
    _reference_array(tmp_path / "a", data, (2, 3, 4), codec)
    arr = ZarrArray(str(tmp_path / "a"))
    assert arr.shape == (5, 7, 6) and arr.chunks == (2, 3, 4) and arr.dtype == torch.float32
    for region in [(slice(0, 5), slice(0, 7), slice(0, 6)), (slice(1, 4), slice(2, 7), slice(3, 5)),
                   (slice(4, 5), slice(0, 1), slice(5, 6)), (slice(2, 2), slice(0, 7), slice(0, 6))]:
        np.testing.assert_array_equal(arr.read(region).numpy(), data[region])
    np.testing.assert_array_equal(arr.read().numpy(), data)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.uint8])
def test_our_writer_is_read_by_zarr(tmp_path, dtype):
    data = (np.arange(3 * 10 * 4).reshape(3, 10, 4) % 251).astype(dtype)
    write_zarr(str(tmp_path / "b"), torch.from_numpy(data), chunks=(1, 4, 4))
    back = zarr.open(str(tmp_path / "b"), mode="r")
    assert back.chunks == (1, 4, 4)
    np.testing.assert_array_equal(back[:], data)
    np.testing.assert_array_equal(ZarrArray(str(tmp_path / "b")).read((slice(1, 3), slice(3, 9), slice(0, 4))).numpy(),
                                  data[1:3, 3:9])


def test_bfloat16_round_trip_keeps_every_bit(tmp_path):
    x = torch.randn(9, 5).to(torch.bfloat16)
    write_zarr(str(tmp_path / "c"), x, chunks=(4, 5))
    arr = ZarrArray(str(tmp_path / "c"))
    assert arr.dtype == torch.bfloat16
    assert torch.equal(arr.read().view(torch.int16), x.view(torch.int16))
    assert '"bfloat16"' in (tmp_path / "c" / ".zarray").read_text()  # tensorstore's spelling, as Megatron wrote


def test_zero_dimensional_array(tmp_path):
    write_zarr(str(tmp_path / "s"), torch.tensor(3.5))
    assert zarr.open(str(tmp_path / "s"), mode="r")[()] == 3.5
    assert ZarrArray(str(tmp_path / "s")).read().item() == 3.5


def test_truncated_and_missing_chunks_are_named(tmp_path):
    write_zarr(str(tmp_path / "d"), torch.zeros(4, 4), chunks=(2, 4))
    chunk = tmp_path / "d" / "1.0"
    chunk.write_bytes(chunk.read_bytes()[:-3])
    arr = ZarrArray(str(tmp_path / "d"))
    arr.read((slice(0, 2), slice(0, 4)))  # the intact chunk still reads
    with pytest.raises(ZarrError, match=f"{chunk}: 29 bytes, a \\(2, 4\\) chunk of torch.float32 has 32"):
        arr.read()
    os.unlink(chunk)
    with pytest.raises(ZarrError, match=f"{chunk}: chunk missing"):
        arr.read()


def test_bad_headers_are_named(tmp_path):
    with pytest.raises(ZarrError, match="missing .zarray"):
        ZarrArray(str(tmp_path / "nothing"))
    write_zarr(str(tmp_path / "e"), torch.zeros(2))
    header = tmp_path / "e" / ".zarray"
    header.write_text(header.read_text().replace('"<f4"', '"<c8"'))
    with pytest.raises(ZarrError, match="dtype '<c8' is not one of"):
        ZarrArray(str(tmp_path / "e"))
    header.write_text("{not json")
    with pytest.raises(ZarrError, match=f"{header}: not valid JSON"):
        ZarrArray(str(tmp_path / "e"))


def test_region_outside_the_array_is_refused(tmp_path):
    write_zarr(str(tmp_path / "f"), torch.zeros(4, 4))
    with pytest.raises(ZarrError, match="outside shape"):
        ZarrArray(str(tmp_path / "f")).read((slice(0, 5), slice(0, 4)))


def test_row_shards_of_raw_chunks_are_read_without_whole_chunks(tmp_path, monkeypatch):
    """A TP shard of rows is one contiguous byte run per chunk: read directly, never the whole chunk."""
    data = torch.arange(4 * 8 * 6, dtype=torch.float32).reshape(4, 8, 6)
    write_zarr(str(tmp_path / "g"), data, chunks=(1, 4, 6))
    arr = ZarrArray(str(tmp_path / "g"))
    monkeypatch.setattr(ZarrArray, "_chunk", lambda self, index: pytest.fail(f"whole chunk {index} read"))
    assert torch.equal(arr.read((slice(0, 4), slice(2, 6), slice(0, 6))), data[:, 2:6])
    assert torch.equal(arr.read((slice(1, 3), slice(5, 6), slice(0, 6))), data[1:3, 5:6])
