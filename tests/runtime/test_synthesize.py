"""Synthetic datasets are the same bytes whatever the process's torch thread count: Stable Diffusion's writer
decodes latents through a VAE and a random feature network, whose float reductions depended on it (its golden
losses differed between a fresh CI clone and the machine that recorded them)."""

import hashlib
from pathlib import Path

import pytest
import torch

from runtime.synthesize import main, synthesize


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_stable_diffusion_data_does_not_depend_on_the_thread_count(tmp_path):
    before = torch.get_num_threads()
    digests = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert synthesize("stable_diffusion", "debug", str(tmp_path / f"t{threads}"))
            assert torch.get_num_threads() == threads  # restored for the caller
            digests.append(_digest(tmp_path / f"t{threads}"))
    finally:
        torch.set_num_threads(before)
    assert len(digests[0]) > 5 and digests[0] == digests[1]


@pytest.mark.parametrize("argv, names", [
    (["resnt"], "unknown benchmark 'resnt'"),
    (["resnet", "--flavour", "dgx"], "unknown flavour 'dgx'"),
    (["resnet", "data.num_train=3"], "has no field 'num_train'"),
])
def test_a_typo_is_one_line_and_writes_nothing(tmp_path, capsys, argv, names):
    """launchers/debug.sh synthesizes first: a misspelt name must fail there in one line, not a traceback."""
    out = tmp_path / "data"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and names in err and err.count("\n") == 1
    assert not out.exists()
