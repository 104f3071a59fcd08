"""Frozen BatchNorm that loads official / Hugging Face RT-DETR backbone weights.

detectron2's ``FrozenBatchNorm2d`` has the right buffers (``weight``, ``bias``, ``running_mean``,
``running_var``; eps 1e-5) and forward, but a strict load of a state dict written by a trainable
``nn.BatchNorm2d`` fails on the extra ``num_batches_tracked`` entries. The official rtdetr_pytorch
``FrozenBatchNorm2d`` (and HF's) silently drop them; this subclass does the same.
"""

from typing import Tuple

from detectron2.layers import FrozenBatchNorm2d as _D2FrozenBatchNorm2d
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d", "bn_scale_shift", "freeze_batch_norm"]


def bn_scale_shift(norm: nn.Module) -> Tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` ``[C]`` with ``norm(x) == x * scale + shift`` for a BN that uses its running
    statistics (a frozen BN, or ``nn.BatchNorm2d`` in eval mode): ``scale = weight / sqrt(running_var + eps)``,
    ``shift = bias - running_mean * scale``. In the buffers' dtype; differentiable (no ``no_grad``)."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    shift = norm.bias - norm.running_mean * scale
    return scale, shift


class FrozenBatchNorm2d(_D2FrozenBatchNorm2d):
    """detectron2's ``FrozenBatchNorm2d`` that ignores ``num_batches_tracked`` when loading.

    Shapes: input ``[B, C, H, W]`` -> output ``[B, C, H, W]``;
    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel (detectron2's forward).

    The frozen BNs of the models here all sit in :class:`~neo_rtdetr.modeling.layers.conv_norm.ConvNormLayer`,
    which folds them into its convolution whenever gradients are enabled, so the forward only runs without
    gradients (detectron2's single ``F.batch_norm``).
    """

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
