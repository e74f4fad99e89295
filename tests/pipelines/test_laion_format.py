"""The moments shards (webdataset tars written here byte by byte with tarfile), their errors, the latent
sampling, the eval inputs and the indexed loader's layout-independent global batches."""

from __future__ import annotations

import io
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


def _tar(path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _moments(value: float, size: int = 4) -> np.ndarray:
    return np.full((1, 8, size, size), value, dtype=np.float32)


def test_reads_shards_written_byte_by_byte(tmp_path):
    shard = tmp_path / fmt.SHARD_DIR / "00000.tar"
    _tar(shard, [("a1.npy", _npy(_moments(1.0))), ("a1.txt", "a red circle".encode()),
                 ("a1.json", b"{}"),  # ignored, as the reference's keep_only_keys
                 ("b2.npy", _npy(_moments(2.0))), ("b2.txt", "ünïcode".encode())])
    rows = list(fmt.iterate_shard(str(shard), 4))
    assert [(k, c) for k, _, c in rows] == [("a1", "a red circle"), ("b2", "ünïcode")]
    assert rows[1][1].shape == (8, 4, 4) and float(rows[1][1][0, 0, 0]) == 2.0
    assert fmt.shard_paths(str(tmp_path)) == [str(shard)]


@pytest.mark.parametrize("members, message", [
    ([("k7.npy", _npy(np.zeros((1, 8, 5, 5), np.float32))), ("k7.txt", b"x")], r"sample 'k7': moments float32"),
    ([("k7.npy", _npy(np.zeros((1, 8, 4, 4), np.float64))), ("k7.txt", b"x")], r"sample 'k7': moments float64"),
    ([("k7.npy", _npy(_moments(0.0)))], r"sample 'k7' has no .txt member"),
    ([("k7.npy", _npy(_moments(0.0))[:40]), ("k7.txt", b"x")], r"sample 'k7': .npy member is not a readable"),
    ([("k7.npy", _npy(_moments(0.0))), ("k7.txt", b"\xff\xfe")], r"sample 'k7': .txt member is not UTF-8"),
])
def test_malformed_samples_name_shard_and_key(tmp_path, members, message):
    shard = tmp_path / "00003.tar"
    _tar(shard, members)
    with pytest.raises(ValueError, match=f"00003.tar: {message}"):
        list(fmt.iterate_shard(str(shard), 4))


def test_truncated_tar_is_an_error_naming_the_shard(tmp_path):
    shard = tmp_path / "00004.tar"
    _tar(shard, [("k1.npy", _npy(_moments(0.0))), ("k1.txt", b"x"), ("k2.npy", _npy(_moments(1.0))),
                 ("k2.txt", b"y")])
    shard.write_bytes(shard.read_bytes()[:900])
    with pytest.raises(ValueError, match="00004.tar"):
        list(fmt.iterate_shard(str(shard), 4))


def test_latent_from_moments_clamps_logvar_and_scales():
    mean = torch.tensor([1.0, -2.0, 0.5, 0.0]).view(1, 4, 1, 1)
    logvar = torch.tensor([0.0, 2.0, -100.0, 50.0]).view(1, 4, 1, 1)
    eps = torch.tensor([1.0, 1.0, 1.0, 1.0]).view(1, 4, 1, 1)
    z = fmt.latent_from_moments(torch.cat([mean, logvar], dim=1), eps).flatten()
    # std = exp(0.5 * clamp(logvar, -30, 20)): 1, e, exp(-15), exp(10)
    expected = torch.tensor([2.0, -2.0 + np.e, 0.5 + np.exp(-15.0), np.exp(10.0)]) * 0.18215
    torch.testing.assert_close(z, expected.float())


def test_eval_inputs_and_their_errors(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("image_id\tid\tcaption\n9\t1\ta cat\n4\t2\ta dog on a sofa\n")
    assert fmt.read_prompts(str(tsv)) == ["a cat", "a dog on a sofa"]
    tsv.write_text("image_id\tid\tcaption\n9\t1\n")
    with pytest.raises(ValueError, match="p.tsv: line 2 has 2 columns"):
        fmt.read_prompts(str(tsv))
    stats = tmp_path / "s.npz"
    np.savez(stats, mu=np.zeros(3), sigma=np.eye(3))
    mu, sigma = fmt.read_fid_stats(str(stats), 3)
    assert mu.shape == (3,) and sigma.shape == (3, 3)
    with pytest.raises(ValueError, match=r"s.npz: mu \(3,\) / sigma \(3, 3\), expected \(2048,\)"):
        fmt.read_fid_stats(str(stats), 2048)
    np.savez(stats, mu=np.zeros(3))
    with pytest.raises(ValueError, match="s.npz: missing array 'sigma'"):
        fmt.read_fid_stats(str(stats), 3)


def test_indexed_global_batches_do_not_depend_on_the_layout(tmp_path):
    samples = [(f"{i:04d}", _moments(float(i)), f"caption {i}") for i in range(40)]
    fmt.write_shard(str(tmp_path / fmt.SHARD_DIR / "00000.tar"), samples[:25])
    fmt.write_shard(str(tmp_path / fmt.SHARD_DIR / "00001.tar"), samples[25:])
    one = IndexedMoments(str(tmp_path), latent_size=4, global_batch_size=8, rank=0, world_size=1, seed=5)
    ranks = [IndexedMoments(str(tmp_path), latent_size=4, global_batch_size=8, rank=r, world_size=2, seed=5)
             for r in range(2)]
    assert one.num_samples == 40
    for step in (0, 7):
        m, c = one.batch(step)
        parts = [r.batch(step) for r in ranks]
        assert torch.equal(m, torch.cat([p[0] for p in parts])) and c == parts[0][1] + parts[1][1]
        # captions and moments stay paired
        assert all(f"caption {int(mi[0, 0, 0])}" == ci for mi, ci in zip(m, c))
    assert one.batch(0)[1] != one.batch(1)[1]


def test_streaming_loader_resamples_shards_into_local_batches(tmp_path):
    from pipelines.laion.loader import StreamingMoments

    samples = [(f"{i:04d}", _moments(float(i)), f"caption {i}") for i in range(30)]
    fmt.write_shard(str(tmp_path / fmt.SHARD_DIR / "00000.tar"), samples[:15])
    fmt.write_shard(str(tmp_path / fmt.SHARD_DIR / "00001.tar"), samples[15:])
    loader = StreamingMoments(str(tmp_path), latent_size=4, global_batch_size=8, rank=1, world_size=2, seed=3,
                              num_workers=0, shuffle_buffer=10, num_samples=30)
    seen = set()
    for step in range(12):  # 48 samples from 30: resampled, no end of epoch
        m, c = loader.batch(step)
        assert m.shape == (4, 8, 4, 4) and len(c) == 4
        assert all(f"caption {int(mi[0, 0, 0])}" == ci for mi, ci in zip(m, c))
        seen.update(c)
    assert len(seen) > 10
    loader.close()


def test_a_resumed_stream_draws_on_instead_of_replaying_its_first_attempt(tmp_path):
    """The stream has no position a checkpoint could hold: a process whose first step is 6 (a resumed run) is
    seeded from that step; one starting at 0 gives the same batches every time (seeded by seed, rank)."""
    from pipelines.laion.loader import StreamingMoments

    samples = [(f"{i:04d}", _moments(float(i)), f"caption {i}") for i in range(60)]
    fmt.write_shard(str(tmp_path / fmt.SHARD_DIR / "00000.tar"), samples[:30])
    fmt.write_shard(str(tmp_path / fmt.SHARD_DIR / "00001.tar"), samples[30:])

    def captions(first_step, steps=6):
        loader = StreamingMoments(str(tmp_path), latent_size=4, global_batch_size=4, rank=0, world_size=1, seed=3,
                                  num_workers=0, shuffle_buffer=10, num_samples=60)
        out = [c for step in range(first_step, first_step + steps) for c in loader.batch(step)[1]]
        loader.close()
        return out

    assert captions(0) == captions(0)
    assert captions(6) != captions(0)
