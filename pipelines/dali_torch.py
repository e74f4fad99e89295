"""DALI output batches as torch tensors: the one conversion every DALI pipeline here uses."""

from __future__ import annotations

import numpy as np
import torch


def to_torch(tensor_list, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A dense DALI batch (a TensorListCPU or TensorListGPU of equal-shape samples) as a torch tensor of its own,
    since DALI reuses its buffers for the next batch: a host copy for a CPU batch; for a GPU batch, a device
    tensor of `dtype` (the batch's own type) filled on the current stream, so that work queued after it sees
    the data."""
    from nvidia.dali.backend import TensorListGPU

    if not isinstance(tensor_list, TensorListGPU):
        return torch.from_numpy(np.array(tensor_list.as_tensor()))
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = tensor_list.as_tensor()
    out = torch.empty(dense.shape(), dtype=dtype, device=torch.device("cuda", torch.cuda.current_device()))
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream())
    return out
