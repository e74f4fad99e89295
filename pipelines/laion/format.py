"""LAION-400M moments shards and the COCO eval inputs, as the MLPerf SD reference lays them out.

Train shards: webdataset tars `webdataset-moments-filtered/NNNNN.tar`; per sample key a `<key>.npy` float32
(1, 8, 64, 64) of VAE moments (mean and log-variance, 4 + 4 channels) and a `<key>.txt` UTF-8 caption; other
members (`.json` ...) are ignored. Eval: `val2014_30k.tsv` (tab-separated, header `image_id id caption`) and
`val2014_30k_stats.npz` (Inception pool3 `mu` (2048,) and `sigma` (2048, 2048)).

Encoded shards (NVIDIA's `-encoded` shards, made offline by pipelines/laion/prepare/encode_captions.py):
`webdataset-moments-filtered-encoded/NNNNN.tar`, the same samples under the same keys and shard names, each with
a third member `<key>.context.npy`: float16 (77, 1024), the caption's context from the frozen OpenCLIP text
encoder (penultimate layer after ln_final), so that a train step needs no text encoder. float16 as NVIDIA's
(the context is 154 KiB per sample instead of 308; the encoder's fp32 output rounded once, relative error
<= 2^-11). The caption stays beside it.

Every malformed input is an error naming the shard and key (or file) and what is wrong.
"""

from __future__ import annotations

import csv
import glob
import io
import os

import numpy as np

SHARD_DIR = "webdataset-moments-filtered"
ENCODED_SHARD_DIR = "webdataset-moments-filtered-encoded"
CONTEXT_MEMBER = "context.npy"  # the member's extension: `<key>.context.npy`
CONTEXT_DTYPE = np.float16
CONTEXT_LENGTH = 77  # OpenCLIP's tokens per caption
PROMPTS_FILE = "val2014_30k.tsv"
STATS_FILE = "val2014_30k_stats.npz"
MOMENT_CHANNELS = 8
SCALE_FACTOR = 0.18215  # SD's latent scale
LOGVAR_RANGE = (-30.0, 20.0)  # LDM's DiagonalGaussianDistribution clamp


def shard_paths(data_dir: str, encoded: bool = False) -> list[str]:
    directory = os.path.join(data_dir, ENCODED_SHARD_DIR if encoded else SHARD_DIR)
    paths = sorted(glob.glob(os.path.join(directory, "*.tar")))
    if not paths:
        hint = " (write them with python -m pipelines.laion.prepare.encode_captions)" if encoded else ""
        raise FileNotFoundError(f"{directory}: no *.tar shards{hint}")
    return paths


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_shard(path: str, samples) -> None:
    """samples: (key, moments float32 (1, 8, h, w), caption[, context float16 (77, d)]) in order; with a context,
    an encoded shard."""
    import webdataset as wds

    os.makedirs(os.path.dirname(path), exist_ok=True)
    # A fixed member mtime: the same samples give the same bytes (checksums of a regenerated set hold).
    with wds.TarWriter(path, mtime=0.0) as sink:
        for key, moments, caption, *context in samples:
            sample = {"__key__": key, "npy": _npy_bytes(np.asarray(moments, dtype=np.float32)),
                      "txt": caption.encode("utf-8")}
            if context:
                sample[CONTEXT_MEMBER] = _npy_bytes(np.asarray(context[0], dtype=CONTEXT_DTYPE))
            sink.write(sample)


def decode_sample(raw: dict, shard: str, latent_size: int) -> tuple[str, np.ndarray, str]:
    """(key, moments (8, h, w) float32, caption) of one raw webdataset sample; raises naming shard and key."""
    key = raw.get("__key__", "?")
    where = f"{shard}: sample {key!r}"
    for ext in ("npy", "txt"):
        if ext not in raw:
            members = sorted(k for k in raw if not k.startswith("__"))
            raise ValueError(f"{where} has no .{ext} member (members: {members})")
    try:
        moments = np.load(io.BytesIO(raw["npy"]), allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{where}: .npy member is not a readable numpy array ({type(e).__name__}: {e})") from None
    want = (1, MOMENT_CHANNELS, latent_size, latent_size)
    if moments.dtype != np.float32 or moments.shape != want:
        raise ValueError(f"{where}: moments {moments.dtype} {moments.shape}, expected float32 {want}")
    try:
        caption = raw["txt"].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: .txt member is not UTF-8 ({e})") from None
    return key, moments[0], caption


def decode_context(raw: dict, shard: str, context_dim: int) -> np.ndarray:
    """The float16 (77, context_dim) context of one raw sample of an encoded shard; raises naming shard and key."""
    where = f"{shard}: sample {raw.get('__key__', '?')!r}"
    if CONTEXT_MEMBER not in raw:
        members = sorted(k for k in raw if not k.startswith("__"))
        raise ValueError(f"{where} has no .{CONTEXT_MEMBER} member (members: {members}): not an encoded shard")
    try:
        context = np.load(io.BytesIO(raw[CONTEXT_MEMBER]), allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{where}: .{CONTEXT_MEMBER} member is not a readable numpy array "
                         f"({type(e).__name__}: {e})") from None
    want = (CONTEXT_LENGTH, context_dim)
    if context.dtype != CONTEXT_DTYPE or context.shape != want:
        raise ValueError(f"{where}: .{CONTEXT_MEMBER} is {context.dtype} {context.shape}, expected "
                         f"{np.dtype(CONTEXT_DTYPE)} {want}")
    return context


def iterate_shard(path: str, latent_size: int, context_dim: int | None = None):
    """Every sample of one shard, in order, through webdataset's tar reader: (key, moments, caption), and the
    context as a fourth element when `context_dim` is given (an encoded shard)."""
    import webdataset as wds

    def reraise(exn):
        raise ValueError(f"{path}: malformed tar ({type(exn).__name__}: {exn})") from exn

    # Every rank reads the whole shard it names (the caller decides who reads what): no node splitting.
    for raw in wds.WebDataset(path, shardshuffle=False, handler=reraise, empty_check=False,
                              nodesplitter=lambda urls: urls):
        sample = decode_sample(raw, path, latent_size)
        yield sample if context_dim is None else (*sample, decode_context(raw, path, context_dim))


def latent_from_moments(moments_B8HW, eps_B4HW):
    """z = (mean + exp(0.5 logvar) eps) x 0.18215, logvar clamped as LDM does (torch tensors)."""
    mean, logvar = moments_B8HW.chunk(2, dim=1)
    std = (0.5 * logvar.clamp(*LOGVAR_RANGE)).exp()
    return (mean + std * eps_B4HW) * SCALE_FACTOR


def read_prompts(path: str) -> list[str]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the eval prompts file is missing")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or "caption" not in rows[0]:
        raise ValueError(f"{path}: expected a header with a 'caption' column, got {rows[:1]}")
    col = rows[0].index("caption")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise ValueError(f"{path}: line {n} has {len(row)} columns, the header {len(rows[0])}")
        out.append(row[col])
    return out


def write_prompts(path: str, captions: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["image_id", "id", "caption"])
        for i, caption in enumerate(captions):
            w.writerow([i, i, caption])


def read_fid_stats(path: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the FID reference statistics are missing")
    with np.load(path, allow_pickle=False) as z:
        for name in ("mu", "sigma"):
            if name not in z:
                raise ValueError(f"{path}: missing array {name!r} (has {sorted(z.files)})")
        mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"{path}: mu {mu.shape} / sigma {sigma.shape}, expected ({dim},) / ({dim}, {dim})")
    return mu, sigma
