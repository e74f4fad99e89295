"""Encoded shards (the caption's float16 (77, d) context beside the moments), written byte by byte with tarfile:
read back, and every malformed context member an error naming shard and key."""

from __future__ import annotations

import io
import re
import tarfile

import numpy as np
import pytest
import torch

from pipelines.laion import format as fmt
from pipelines.laion.loader import IndexedMoments


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _shard(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _sample(value: float, context, size: int = 4) -> dict[str, bytes]:
    members = {"npy": _npy(np.full((1, 8, size, size), value, dtype=np.float32)), "txt": b"a caption"}
    if context is not None:
        members["context.npy"] = _npy(context)
    return members


def _context(value: float, dim: int = 6, dtype=np.float16, length: int = 77) -> np.ndarray:
    return np.full((length, dim), value, dtype=dtype)


def test_encoded_shards_read_back_with_their_contexts(tmp_path):
    shard = tmp_path / fmt.ENCODED_SHARD_DIR / "00000.tar"
    _shard(shard, [("k1", _sample(1.0, _context(0.5))), ("k2", _sample(2.0, _context(-0.25)))])
    rows = list(fmt.iterate_shard(str(shard), 4, context_dim=6))
    assert [r[0] for r in rows] == ["k1", "k2"] and [r[2] for r in rows] == ["a caption"] * 2
    assert rows[1][3].dtype == np.float16 and rows[1][3].shape == (77, 6) and (rows[1][3] == -0.25).all()
    loader = IndexedMoments(str(tmp_path), latent_size=4, global_batch_size=4, rank=0, world_size=1, seed=3,
                            context_dim=6)
    moments, context = loader.batch(0)
    assert moments.shape == (4, 8, 4, 4) and context.shape == (4, 77, 6) and context.dtype == torch.float16
    # each drawn sample's context is its own: k1's moments are 1.0 and its context 0.5
    assert torch.equal(context[:, 0, 0] == 0.5, moments[:, 0, 0, 0] == 1.0)


@pytest.mark.parametrize("context, problem", [
    (_context(0.5, dtype=np.float32), "float32 (77, 6), expected float16 (77, 6)"),
    (_context(0.5, length=76), "float16 (76, 6), expected float16 (77, 6)"),
    (_context(0.5, dim=5), "float16 (77, 5), expected float16 (77, 6)"),
    (None, "has no .context.npy member"),
])
def test_a_bad_context_member_names_shard_and_key(tmp_path, context, problem):
    shard = tmp_path / fmt.ENCODED_SHARD_DIR / "00007.tar"
    _shard(shard, [("good", _sample(1.0, _context(0.5))), ("bad9", _sample(1.0, context))])
    with pytest.raises(ValueError, match=rf"00007\.tar: sample 'bad9'.*{re.escape(problem)}"):
        list(fmt.iterate_shard(str(shard), 4, context_dim=6))


def test_truncated_context_member_is_named(tmp_path):
    shard = tmp_path / fmt.ENCODED_SHARD_DIR / "00001.tar"
    members = _sample(1.0, _context(0.5))
    members["context.npy"] = members["context.npy"][:100]
    _shard(shard, [("cut", members)])
    with pytest.raises(ValueError, match=r"00001\.tar: sample 'cut': \.context\.npy member is not a readable"):
        list(fmt.iterate_shard(str(shard), 4, context_dim=6))


def test_encoded_loader_without_encoded_shards_says_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare.encode_captions"):
        IndexedMoments(str(tmp_path), latent_size=4, global_batch_size=4, rank=0, world_size=1, seed=3,
                       context_dim=6)
