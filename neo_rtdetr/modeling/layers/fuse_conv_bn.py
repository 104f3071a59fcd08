"""Folding inference-mode batch norms into the convolutions before them (deployment only).

``BN(conv(x)) = conv'(x)`` with ``W' = W * g / s`` and ``b' = (b - mean) * g / s + beta`` (``s = sqrt(var + eps)``),
exact up to float rounding when the BN uses its running statistics (eval mode, or a frozen BN).
"""

from typing import Tuple

import torch
from torch import Tensor, nn

from detectron2.layers import FrozenBatchNorm2d as _D2FrozenBatchNorm2d

from .conv_norm import ConvNormLayer
from .frozen_batch_norm import bn_scale_shift

__all__ = ["fold_conv_bn", "fold_batch_norms"]

_NORMS = (nn.BatchNorm2d, _D2FrozenBatchNorm2d)


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, norm: nn.Module) -> Tuple[Tensor, Tensor]:
    """The kernel ``[C_out, C_in/g, k, k]`` and bias ``[C_out]`` of ``norm(conv(x))`` as one convolution.

    Args:
        conv: a 2D convolution (with or without bias).
        norm: ``nn.BatchNorm2d`` (its running statistics are used) or a frozen BN (weight, bias, running_mean,
            running_var, eps).
    """
    scale, bias = bn_scale_shift(norm)
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1), bias


def _folded(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    weight, bias = fold_conv_bn(conv, norm)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
        bias=True, padding_mode=conv.padding_mode, device=weight.device, dtype=weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused


@torch.no_grad()
def fold_batch_norms(module: nn.Module) -> int:
    """Fold every BN that directly follows a convolution into it, in place; the BN becomes ``nn.Identity``.

    Handles :class:`~neo_rtdetr.modeling.layers.conv_norm.ConvNormLayer` (``conv`` + ``norm``) and
    ``nn.Sequential`` containers with a ``Conv2d`` immediately followed by a BN. Only for inference: a trainable
    BN in training mode would normalise with batch statistics, which folding cannot express, so modules in
    training mode are refused.

    Returns:
        the number of folded BNs.

    Raises:
        RuntimeError: if ``module`` is in training mode.
    """
    if module.training:
        raise RuntimeError("fold_batch_norms: call model.eval() first (batch norms are folded with running statistics)")
    count = 0
    for parent in list(module.modules()):
        if isinstance(parent, ConvNormLayer) and isinstance(parent.norm, _NORMS):
            parent.conv = _folded(parent.conv, parent.norm)
            parent.norm = nn.Identity()
            count += 1
        elif isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for first, second in zip(names, names[1:]):
                conv, norm = parent._modules[first], parent._modules[second]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, _NORMS):
                    parent._modules[first] = _folded(conv, norm)
                    parent._modules[second] = nn.Identity()
                    count += 1
    return count
