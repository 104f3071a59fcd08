"""Frozen BatchNorm that loads official / Hugging Face RT-DETR backbone weights.

detectron2's ``FrozenBatchNorm2d`` has the right buffers (``weight``, ``bias``, ``running_mean``,
``running_var``; eps 1e-5) and forward, but a strict load of a state dict written by a trainable
``nn.BatchNorm2d`` fails on the extra ``num_batches_tracked`` entries. The official rtdetr_pytorch
``FrozenBatchNorm2d`` (and HF's) silently drop them; this subclass does the same.
"""

import torch
from detectron2.layers import FrozenBatchNorm2d as _D2FrozenBatchNorm2d
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d", "freeze_batch_norm"]


class FrozenBatchNorm2d(_D2FrozenBatchNorm2d):
    """detectron2's ``FrozenBatchNorm2d`` that ignores ``num_batches_tracked`` when loading.

    Shapes: input ``[B, C, H, W]`` -> output ``[B, C, H, W]``;
    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``x * scale + shift`` per channel, in ``x``'s dtype.

        When gradients flow (the frozen backbone still back-propagates to its trainable convolutions) this is one
        fused ``addcmul`` pass over the activation instead of detectron2's multiply then add (two passes); without
        gradients it is detectron2's single ``F.batch_norm``.
        """
        if not x.requires_grad:
            return super().forward(x)
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return torch.addcmul(shift.to(x.dtype).reshape(1, -1, 1, 1), x, scale.to(x.dtype).reshape(1, -1, 1, 1))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` / ``SyncBatchNorm`` in ``module`` by :class:`FrozenBatchNorm2d`.

    The current affine parameters and running statistics are copied.

    Returns:
        ``module`` itself (converted in place), or a new frozen BN if ``module`` is a BatchNorm.
    """
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
