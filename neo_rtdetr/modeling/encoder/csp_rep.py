"""RepVGG block and CSP layer of RT-DETR's CCFM (cross-scale feature fusion).

Names follow the official ``RepVggBlock`` (``conv1`` 3x3, ``conv2`` 1x1) and ``CSPRepLayer``
(``conv1``, ``conv2``, ``bottlenecks``, ``conv3``).
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.conv_norm import ConvNormLayer, get_activation
from ..layers.fuse_conv_bn import fold_conv_bn

__all__ = ["RepVggBlock", "CSPRepLayer"]


class RepVggBlock(nn.Module):
    """``act(BN(conv3x3(x)) + BN(conv1x1(x)))``; after :meth:`convert_to_deploy`, ``act(conv(x))``.

    Args:
        ch_in: input channels.
        ch_out: output channels.
        act: activation name.

    Shapes: ``[B, ch_in, H, W]`` -> ``[B, ch_out, H, W]``.
    """

    def __init__(self, ch_in: int, ch_out: int, act: str = "relu"):
        super().__init__()
        self.ch_in = ch_in
        self.ch_out = ch_out
        self.conv1 = ConvNormLayer(ch_in, ch_out, 3, 1, padding=1, act=None)
        self.conv2 = ConvNormLayer(ch_in, ch_out, 1, 1, padding=0, act=None)
        self.act = get_activation(act)

    @property
    def deployed(self) -> bool:
        return hasattr(self, "conv")

    def forward(self, x: Tensor) -> Tensor:
        if self.deployed:
            y = self.conv(x)
        else:
            y = self.conv1(x) + self.conv2(x)
        return self.act(y)

    @torch.no_grad()
    def convert_to_deploy(self) -> None:
        """Fuse both conv+BN branches (with BN running statistics) into one 3x3 ``conv`` with bias.

        The branches ``conv1`` / ``conv2`` are removed afterwards, so the block's state dict then
        holds ``conv.weight`` / ``conv.bias`` only. Only valid for inference (BN in eval mode).
        Calling it twice is a no-op.
        """
        if self.deployed:
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        ref = self.conv1.conv.weight
        self.conv = nn.Conv2d(self.ch_in, self.ch_out, 3, 1, padding=1, bias=True, device=ref.device, dtype=ref.dtype)
        self.conv.weight.copy_(kernel)
        self.conv.bias.copy_(bias)
        del self.conv1
        del self.conv2

    def get_equivalent_kernel_bias(self) -> Tuple[Tensor, Tensor]:
        """Returns: fused kernel ``[ch_out, ch_in, 3, 3]`` and bias ``[ch_out]``."""
        k3, b3 = self._fuse_bn_tensor(self.conv1)
        k1, b1 = self._fuse_bn_tensor(self.conv2)
        return k3 + F.pad(k1, [1, 1, 1, 1]), b3 + b1

    @staticmethod
    def _fuse_bn_tensor(branch: ConvNormLayer) -> Tuple[Tensor, Tensor]:
        return fold_conv_bn(branch.conv, branch.norm)


class CSPRepLayer(nn.Module):
    """CSP layer with RepVGG blocks: ``conv3(bottlenecks(conv1(x)) + conv2(x))``.

    Args:
        in_channels: input channels (``2 * hidden_dim`` in the encoder: a concat of two maps).
        out_channels: output channels.
        num_blocks: number of RepVGG blocks (official: ``round(3 * depth_mult)``).
        expansion: hidden channels ``h = int(out_channels * expansion)``; ``conv3`` is a 1x1
            ConvNormLayer ``h -> out_channels`` if ``h != out_channels``, else Identity.
        bias: conv bias of ``conv1``/``conv2``/``conv3`` (official: None/False).
        act: activation name.

    Shapes: ``[B, in_channels, H, W]`` -> ``[B, out_channels, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 3,
        expansion: float = 1.0,
        bias: bool = False,
        act: str = "silu",
    ):
        super().__init__()
        hidden_channels = int(out_channels * expansion)
        self.conv1 = ConvNormLayer(in_channels, hidden_channels, 1, 1, bias=bias, act=act)
        self.conv2 = ConvNormLayer(in_channels, hidden_channels, 1, 1, bias=bias, act=act)
        self.bottlenecks = nn.Sequential(
            *[RepVggBlock(hidden_channels, hidden_channels, act=act) for _ in range(num_blocks)]
        )
        if hidden_channels != out_channels:
            self.conv3 = ConvNormLayer(hidden_channels, out_channels, 1, 1, bias=bias, act=act)
        else:
            self.conv3 = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))
