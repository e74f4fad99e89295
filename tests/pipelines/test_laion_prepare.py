"""The offline image -> moments converter on a small image shard, with the debug VAE."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipelines.laion import format as fmt  # noqa: E402
from pipelines.laion.prepare.images_to_moments import convert_shard, preprocess  # noqa: E402


def _two_colour(w: int, h: int):
    from PIL import Image

    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2:] = (0, 0, 255)
    return Image.fromarray(a)


def test_preprocess_resizes_the_short_side_and_crops_the_centre():
    x = preprocess(_two_colour(40, 20), size=16)  # -> 32 x 16, then columns 8..24
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert x[0, 8, 2] == pytest.approx(1.0, abs=0.02) and x[2, 8, 2] == pytest.approx(-1.0, abs=0.02)
    assert x[2, 8, 13] == pytest.approx(1.0, abs=0.02) and x[0, 8, 13] == pytest.approx(-1.0, abs=0.02)


def test_convert_shard_writes_the_vaes_moments(tmp_path):
    import webdataset as wds
    from diffusers import AutoencoderKL

    from models.stable_diffusion.config import DEBUG_VAE

    src = tmp_path / "images.tar"
    with wds.TarWriter(str(src)) as sink:
        for i, (w, h) in enumerate([(40, 20), (16, 30), (17, 17)]):
            buf = io.BytesIO()
            _two_colour(w, h).save(buf, format="PNG")
            sink.write({"__key__": f"s{i}", "png": buf.getvalue(), "txt": f"caption {i}".encode()})
    torch.manual_seed(0)
    vae = AutoencoderKL(**DEBUG_VAE).eval()
    out = tmp_path / "out" / "00000.tar"
    assert convert_shard(vae, str(src), str(out), 16, 2, torch.device("cpu")) == 3
    rows = list(fmt.iterate_shard(str(out), 8))
    assert [(k, c) for k, _, c in rows] == [("s0", "caption 0"), ("s1", "caption 1"), ("s2", "caption 2")]
    with torch.no_grad():
        expected = vae.encode(preprocess(_two_colour(16, 30), 16)[None]).latent_dist.parameters
    torch.testing.assert_close(torch.from_numpy(rows[1][1])[None], expected, rtol=1e-5, atol=1e-5)

    bad = tmp_path / "bad.tar"
    with wds.TarWriter(str(bad)) as sink:
        sink.write({"__key__": "x9", "txt": b"no image"})
    with pytest.raises(ValueError, match=r"bad.tar: sample 'x9' lacks an image"):
        convert_shard(vae, str(bad), str(tmp_path / "o2.tar"), 16, 2, torch.device("cpu"))
