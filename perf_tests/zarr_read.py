"""Reading a TP shard out of a Megatron zarr checkpoint array: our reader against the zarr package, same run.

The GPT-3 initial checkpoint is read this way at start-up (models/gpt3/reference_checkpoint.py): each rank
takes the rows of its tensor-parallel shard of every stacked [layers, rows, cols] array. This writes one
such array (fp32, uncompressed, one chunk per layer and TP=2 row half, as Megatron's zarr writer lays it out),
then times reading the TP=4 shard of rank 1 (a region that cuts chunks in two) and a whole TP=2 shard (whole
chunks), warm page cache, best of `--repeats`:
  (a) ours: runtime/mcore/zarr_array.ZarrArray.read
  (b) baseline: the zarr package (2.x), `zarr.open(path)[region]`
  (c) floor: numpy reading the same chunk files whole into one buffer (no slicing logic at all)
Then the loader's concurrency: the TP=2 shard of each of `--arrays` smaller arrays, read by 1, 2 and 8
threads (as models/gpt3/reference_checkpoint.py does with data.init_checkpoint_threads), with the files'
pages evicted first (posix_fadvise DONTNEED after a sync), so the reads come from the disk.

    python perf_tests/zarr_read.py [--layers 8] [--rows 6144] [--cols 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import cpu_name  # noqa: E402 (perf_tests/machine.py, beside this script)

from runtime.mcore.zarr_array import ZarrArray, write_zarr  # noqa: E402


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--rows", type=int, default=6144)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--arrays", type=int, default=16)
    args = p.parse_args(argv)
    import zarr

    L, R, C = args.layers, args.rows, args.cols
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "language_model.encoder.layers.mlp.dense_h_to_4h.weight")
        data = torch.randn(L, R, C)
        write_zarr(path, data, chunks=(1, R // 2, C))
        del data
        ours, theirs = ZarrArray(path), zarr.open(path, mode="r")
        chunk_files = [os.path.join(path, f"{i}.{j}.0") for i in range(L) for j in range(2)]
        regions = {"TP=4 shard 1 (half chunks)": (slice(0, L), slice(R // 4, R // 2), slice(0, C)),
                   "TP=2 shard 1 (whole chunks)": (slice(0, L), slice(R // 2, R), slice(0, C))}
        print(f"# zarr region reads on {cpu_name()} ({os.cpu_count()} cores), {datetime.date.today()}, "
              f"zarr {zarr.__version__}, torch {torch.__version__}")
        print(f"array [{L}, {R}, {C}] fp32 ({L * R * C * 4 / 2**30:.2f} GiB), chunks [1, {R // 2}, {C}], warm cache, "
              f"best of {args.repeats}\n")
        print("| region | MiB | ours GB/s | zarr GB/s | ours / zarr | raw chunk files GB/s |")
        print("|---|---|---|---|---|---|")
        for name, region in regions.items():
            a = ours.read(region).numpy()
            b = theirs[region]
            if not np.array_equal(a, b):
                print(f"{name}: MISMATCH between our reader and zarr", file=sys.stderr)
                return 1
            nbytes = a.nbytes
            del a, b
            t_ours = best(lambda region=region: ours.read(region), args.repeats)
            t_zarr = best(lambda region=region: theirs[region], args.repeats)
            first, last = region[1].start // (R // 2), (region[1].stop - 1) // (R // 2)
            files = [f for f in chunk_files if first <= int(f.rsplit(".", 2)[-2]) <= last]

            def raw(files=files):
                return [np.fromfile(f, dtype=np.float32) for f in files]

            t_raw = best(raw, args.repeats)
            raw_bytes = sum(os.path.getsize(f) for f in files)
            print(f"| {name} | {nbytes / 2**20:.0f} | {nbytes / t_ours / 1e9:.2f} | {nbytes / t_zarr / 1e9:.2f} | "
                  f"{t_zarr / t_ours:.2f}x | {raw_bytes / t_raw / 1e9:.2f} |")
        shutil.rmtree(path)
        threaded(tmp, args.arrays, L, R // 4, C)
    return 0


def evict(paths) -> None:
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def threaded(tmp: str, count: int, L: int, R: int, C: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    arrays = []
    for k in range(count):
        path = os.path.join(tmp, f"a{k}")
        write_zarr(path, torch.randn(L, R, C), chunks=(1, R // 2, C))
        arrays.append(ZarrArray(path))
    files = [os.path.join(a.path, f) for a in arrays for f in os.listdir(a.path)]
    region = (slice(0, L), slice(R // 2, R), slice(0, C))
    nbytes = count * L * (R // 2) * C * 4
    print(f"\n{count} arrays [{L}, {R}, {C}] fp32, TP=2 shard of each ({nbytes / 2**20:.0f} MiB), pages evicted "
          "before each read\n")
    print("| threads | GB/s | vs 1 thread |")
    print("|---|---|---|")
    base = None
    for threads in (1, 2, 8):
        evict(files)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda a: a.read(region), arrays))
        seconds = time.perf_counter() - start
        base = base or seconds
        print(f"| {threads} | {nbytes / seconds / 1e9:.2f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
