"""Host-to-accelerator copies that do not synchronise the device.

A CUDA copy from ordinary (pageable) host memory first synchronises the stream: the host waits until the
accelerator has finished everything queued so far. A training step makes several small copies (index tensors
built on the host from the batch's box counts); each one would stall the host in the middle of the step, so it can
no longer queue work ahead of the accelerator. Copied through page-locked (pinned) memory with
``non_blocking=True`` they are asynchronous; PyTorch keeps the pinned block alive until the copy has run.
"""

import torch
from torch import Tensor

__all__ = ["to_device"]


def to_device(tensor: Tensor, device: torch.device, dtype: torch.dtype = None) -> Tensor:
    """``tensor.to(device, dtype)`` without a device synchronisation for host tensors going to CUDA.

    Args:
        tensor: any tensor (a host tensor is staged through pinned memory when ``device`` is CUDA).
        device: the destination.
        dtype: optional destination dtype (converted on the host first, so the copy moves the final bytes).

    Returns:
        the tensor on ``device`` (``tensor`` itself when nothing changes).
    """
    device = torch.device(device)
    if dtype is not None and tensor.dtype != dtype and tensor.device.type == "cpu":
        tensor = tensor.to(dtype)
    if device.type == "cuda" and tensor.device.type == "cpu":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        tensor = tensor.to(device, non_blocking=True)
    else:
        tensor = tensor.to(device)
    return tensor if dtype is None else tensor.to(dtype)
