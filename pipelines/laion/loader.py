"""Global batches of (moments, captions) from the moments shards.

Two loaders, the same batches' shape: this rank's (moments (b, 8, h, w) float32, captions list[str]), or with
`context_dim` (encoded shards, format.py) (moments, context (b, 77, context_dim) float16) in place of the captions.

- `IndexedMoments` ("indexed"): reads every shard once into memory and draws each global batch with
  replacement from a generator seeded by (seed, step, BATCH_INDICES); each rank takes its slice. Global batch `step` is
  then the same whatever the number of ranks and whether the run was resumed, which is what the debug
  flavour's parity and resume checks need. It refuses a dataset too large to hold.
- `StreamingMoments` ("stream"): the reference's pipeline: `WebDataset(resampled=True)` (shards drawn with
  replacement, no epochs), a shuffle buffer of 1000, batched per rank in DataLoader workers, each rank and
  worker seeded differently. Not reproducible across layouts, as the reference is not. The stream is seeded
  from (seed, rank, the first step asked for), so a resumed run draws on instead of replaying the samples its
  first attempt trained on.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from pipelines.laion.format import decode_context, decode_sample, iterate_shard, shard_paths

MAX_INDEXED_BYTES = 4 << 30
# Tags of the per-step random streams: each is seeded from (seed, step, tag), so that no two streams of a run share
# a generator seed (a plain seed + step offset would give batch k's indices the seed of batch k-1's noise).
BATCH_INDICES, DIFFUSION_DRAWS = 0, 1


def step_seed(seed: int, step: int, tag: int) -> int:
    """A 64-bit generator seed for stream `tag` of global batch `step` of the run seeded `seed`."""
    return int(np.random.SeedSequence([seed, step, tag]).generate_state(1, np.uint64)[0])


class IndexedMoments:
    def __init__(self, data_dir: str, *, latent_size: int, global_batch_size: int, rank: int, world_size: int,
                 seed: int, context_dim: int | None = None):
        moments, captions, contexts = [], [], []
        for path in shard_paths(data_dir, encoded=context_dim is not None):
            for _, m, caption, *context in iterate_shard(path, latent_size, context_dim):
                moments.append(m)
                captions.append(caption)
                contexts += context
                if len(moments) * (m.nbytes + (context[0].nbytes if context else 0)) > MAX_INDEXED_BYTES:
                    raise ValueError(f"{data_dir}: more than {MAX_INDEXED_BYTES >> 30} GiB of moments; use "
                                     "data.loader=stream for a dataset of this size")
        self.moments = torch.from_numpy(np.stack(moments))
        self.captions = captions
        self.contexts = torch.from_numpy(np.stack(contexts)) if contexts else None
        self.num_samples = len(captions)
        self.global_batch_size, self.rank, self.world_size, self.seed = global_batch_size, rank, world_size, seed
        self.local = global_batch_size // world_size

    def batch(self, step: int):
        g = torch.Generator().manual_seed(step_seed(self.seed, step, BATCH_INDICES))
        index = torch.randint(self.num_samples, (self.global_batch_size,), generator=g)
        mine = index[self.rank * self.local:(self.rank + 1) * self.local]
        if self.contexts is not None:
            return self.moments[mine], self.contexts[mine]
        return self.moments[mine], [self.captions[i] for i in mine.tolist()]


def _decode(raw: dict, latent_size: int, context_dim: int | None):
    """(moments, caption) of one raw sample, or (moments, context) of an encoded one."""
    shard = raw.get("__url__", "?")
    _, moments, caption = decode_sample(raw, shard, latent_size)
    return moments, caption if context_dim is None else decode_context(raw, shard, context_dim)


def _collate(rows):
    moments = torch.from_numpy(np.stack([r[0] for r in rows]))
    if isinstance(rows[0][1], str):
        return moments, [r[1] for r in rows]
    return moments, torch.from_numpy(np.stack([r[1] for r in rows]))


def _raw_stream(urls, seed: int, shuffle_buffer: int, latent_size: int, batch: int, context_dim: int | None = None):
    import webdataset as wds

    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed, deterministic=True),
        wds.tarfile_to_samples(),
        wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=random.Random(seed)),
        wds.map(lambda raw: _decode(raw, latent_size, context_dim)),
        wds.batched(batch, collation_fn=_collate, partial=False),
    )
    return pipeline


class StreamingMoments:
    def __init__(self, data_dir: str, *, latent_size: int, global_batch_size: int, rank: int, world_size: int,
                 seed: int, num_workers: int, shuffle_buffer: int = 1000, num_samples: int,
                 context_dim: int | None = None):
        self.urls = shard_paths(data_dir, encoded=context_dim is not None)
        self.num_samples = num_samples  # the reference's fixed count; a stream has no size of its own
        self.local = global_batch_size // world_size
        self._stream = dict(latent_size=latent_size, shuffle_buffer=shuffle_buffer, context_dim=context_dim)
        self.seed, self.rank, self.num_workers = seed, rank, num_workers
        self.loader, self._iter = None, None

    def stream_seed(self, first_step: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.rank, first_step]).generate_state(1)[0])

    def batch(self, step: int):
        if self._iter is None:  # the stream starts at the first step asked for: 0, or where a resumed run begins
            s = self._stream
            pipeline = _raw_stream(self.urls, self.stream_seed(step), s["shuffle_buffer"], s["latent_size"],
                                   self.local, s["context_dim"])
            self.loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=self.num_workers,
                                                      persistent_workers=self.num_workers > 0)
            self._iter = iter(self.loader)
        return next(self._iter)

    def close(self) -> None:
        self._iter = None
