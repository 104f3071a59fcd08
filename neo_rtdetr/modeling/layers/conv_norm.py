"""Conv + BatchNorm + activation block and the activation factory shared by backbone and encoder.

Attribute names (``conv``, ``norm``, ``act``) are those of the official rtdetr_pytorch
``ConvNormLayer`` so that official state dicts load without renaming.
"""

from typing import Optional, Union

import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from torch import Tensor, nn

from .frozen_batch_norm import bn_scale_shift

__all__ = ["ConvNormLayer", "get_activation"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def get_activation(act: Union[str, nn.Module, None]) -> nn.Module:
    """Build an activation module from its name.

    Args:
        act: ``"relu"``, ``"silu"``/``"swish"``, ``"gelu"``, ``"leaky_relu"``, ``"sigmoid"``, ``"tanh"``,
            ``"identity"`` (case-insensitive),
            ``None`` (identity), or an ``nn.Module`` instance, returned as is.

    Returns:
        A new activation module (never in-place: the official code uses in-place ReLU/SiLU, which
        gives the same values but is unfriendly to hooks and autograd checks).

    Raises:
        ValueError: for an unknown name.
    """
    if act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    try:
        return _ACTIVATIONS[act.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(_ACTIVATIONS)} or None") from None


class ConvNormLayer(nn.Module):
    """``Conv2d -> BatchNorm2d -> activation``.

    Args:
        ch_in: input channels C_in.
        ch_out: output channels C_out.
        kernel_size: square kernel size k.
        stride: convolution stride s.
        padding: convolution padding; ``None`` means ``(k - 1) // 2`` ("same" for odd k).
        bias: whether the convolution has a bias (official default False: BN follows).
        act: activation name / module / None (see :func:`get_activation`).

    Shapes:
        input ``[B, C_in, H, W]`` -> output ``[B, C_out, H', W']`` with
        ``H' = floor((H + 2p - k) / s) + 1`` (same for W).
    """

    def __init__(
        self,
        ch_in: int,
        ch_out: int,
        kernel_size: int,
        stride: int = 1,
        padding: Optional[int] = None,
        bias: bool = False,
        act: Union[str, nn.Module, None] = None,
    ):
        super().__init__()
        if padding is None:
            padding = (kernel_size - 1) // 2
        self.conv = nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding=padding, bias=bias)
        self.norm = nn.BatchNorm2d(ch_out)
        self.act = get_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``[B, C_in, H, W]``. Returns: ``[B, C_out, H', W']``.

        A frozen BN (per-channel ``scale``, ``shift`` constants) is folded into the convolution when gradients
        flow: ``conv(x, W * scale) + shift`` equals ``BN(conv(x, W))`` and costs a weight-sized multiply instead of
        an activation-sized pass in the forward and another in the backward.
        """
        if torch.is_grad_enabled() and isinstance(self.norm, FrozenBatchNorm2d):
            norm, conv = self.norm, self.conv
            scale, shift = bn_scale_shift(norm)
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            weight = conv.weight * scale.reshape(-1, 1, 1, 1)
            y = F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)
            return self.act(y)
        return self.act(self.norm(self.conv(x)))
