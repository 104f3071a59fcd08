"""Where each ground-truth box of a batch goes in a padded per-image layout, computed on the host.

Built with numpy from the per-image box counts: no device synchronisation (the counts are host ints) and no
PyTorch parallel region (``torch.repeat_interleave`` on the host opens one over every intra-op thread even for a
handful of elements, which costs milliseconds when the data loader's workers keep the cores busy).
"""

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["target_slots"]


def target_slots(sizes: Sequence[int], repeats: int = 1) -> Tensor:
    """Image and slot index of every box, image-major, each image's boxes tiled ``repeats`` times.

    Args:
        sizes: number of boxes per image (B host ints).
        repeats: how many times each image's run of boxes is tiled (the denoising groups); 1 = once.

    Returns:
        [2, sum(sizes) * repeats] host int64 tensor: row 0 the image index, row 1 the slot index (one tensor: the
        callers copy it to the device in one go). For image ``b`` with ``n`` boxes the columns are ``b`` and
        ``0..n-1`` repeated ``repeats`` times, in that order.
    """
    counts = np.asarray(sizes).reshape(-1)
    if counts.size and counts.dtype.kind not in "iu":
        raise ValueError(f"box counts must be integers, got {list(sizes)}")
    counts = counts.astype(np.int64)
    if (counts < 0).any() or repeats < 1:
        raise ValueError(f"box counts must be >= 0 and repeats >= 1, got sizes={list(sizes)} repeats={repeats}")
    image_idx = np.repeat(np.arange(counts.size, dtype=np.int64), counts * repeats)
    slot_idx = np.concatenate([np.tile(np.arange(n, dtype=np.int64), repeats) for n in counts.tolist()] or
                              [np.zeros(0, dtype=np.int64)])
    return torch.from_numpy(np.stack([image_idx, slot_idx]))
