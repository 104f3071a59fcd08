"""PResNet (ResNet-vd family) backbone of RT-DETR as a detectron2 ``Backbone``.

Module names equal those of the official rtdetr_pytorch ``PResNet`` (``conv1.conv1_{1,2,3}``,
``res_layers.{s}.blocks.{b}.branch2{a,b,c}``, ``...short`` / ``...short.{pool,conv}``), so the
official ImageNet/COCO backbone weights load without renaming.

Input convention of the official weights: RGB in [0, 1] (no mean/std normalisation).
"""

from collections import OrderedDict
from typing import Dict, Sequence, Type, Union

import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from torch import Tensor, nn

from ..layers.avg_pool import AvgPool2x2
from ..layers.conv_norm import ConvNormLayer, get_activation
from ..layers.frozen_batch_norm import freeze_batch_norm

__all__ = ["PResNet", "BasicBlock", "BottleNeck"]

# blocks per stage
_DEPTH_CFG = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_STAGE_WIDTHS = (64, 128, 256, 512)


def _projection(ch_in: int, ch_out: int, stride: int, variant: str) -> nn.Module:
    """Projection shortcut of a stage's first block.

    Variant ``d`` with stride 2: ``AvgPool2d(2, 2, ceil_mode=True)`` (as :class:`AvgPool2x2`) then a 1x1 stride-1 ConvNormLayer
    (keys ``short.conv.{conv,norm}``); otherwise a 1x1 stride-``stride`` ConvNormLayer (``short.{conv,norm}``).
    """
    if variant == "d" and stride == 2:
        return nn.Sequential(
            OrderedDict(
                [
                    ("pool", AvgPool2x2()),
                    ("conv", ConvNormLayer(ch_in, ch_out, 1, 1)),
                ]
            )
        )
    return ConvNormLayer(ch_in, ch_out, 1, stride)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34).

    Args:
        ch_in: input channels.
        ch_out: output channels (``expansion`` = 1).
        stride: stride of the first 3x3 conv and of the projection.
        shortcut: True for an identity shortcut, False for a projection (``short``).
        act: activation name.
        variant: ResNet variant ``a``/``b``/``c``/``d``.

    Shapes: ``[B, ch_in, H, W]`` -> ``[B, ch_out, ceil(H/stride), ceil(W/stride)]``.
    """

    expansion = 1

    def __init__(self, ch_in: int, ch_out: int, stride: int, shortcut: bool, act: str = "relu", variant: str = "d"):
        super().__init__()
        self.shortcut = shortcut
        if not shortcut:
            self.short = _projection(ch_in, ch_out, stride, variant)
        self.branch2a = ConvNormLayer(ch_in, ch_out, 3, stride, act=act)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, 1, act=None)
        self.act = get_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch2b(self.branch2a(x))
        short = x if self.shortcut else self.short(x)
        return self.act(out + short)


class BottleNeck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with a residual (ResNet-50/101), expansion 4.

    The stride sits on the 3x3 conv (``branch2b``) except for variant ``a`` (on the first 1x1).

    Args: as :class:`BasicBlock`; ``ch_out`` is the bottleneck width, the output has ``4 * ch_out``
    channels.

    Shapes: ``[B, ch_in, H, W]`` -> ``[B, 4*ch_out, ceil(H/stride), ceil(W/stride)]``.
    """

    expansion = 4

    def __init__(self, ch_in: int, ch_out: int, stride: int, shortcut: bool, act: str = "relu", variant: str = "d"):
        super().__init__()
        stride1, stride2 = (stride, 1) if variant == "a" else (1, stride)
        width = ch_out
        self.branch2a = ConvNormLayer(ch_in, width, 1, stride1, act=act)
        self.branch2b = ConvNormLayer(width, width, 3, stride2, act=act)
        self.branch2c = ConvNormLayer(width, ch_out * self.expansion, 1, 1, act=None)
        self.shortcut = shortcut
        if not shortcut:
            self.short = _projection(ch_in, ch_out * self.expansion, stride, variant)
        self.act = get_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch2c(self.branch2b(self.branch2a(x)))
        short = x if self.shortcut else self.short(x)
        return self.act(out + short)


class Blocks(nn.Module):
    """One ResNet stage: ``count`` blocks in ``self.blocks`` (official name).

    The first block has a projection shortcut and stride 2, except in the first stage
    (``stage_num == 2``) where the stride is 1 (the stem's max-pool already reduced by 4).
    """

    def __init__(
        self,
        block: Type[Union[BasicBlock, BottleNeck]],
        ch_in: int,
        ch_out: int,
        count: int,
        stage_num: int,
        act: str = "relu",
        variant: str = "d",
    ):
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(count):
            self.blocks.append(
                block(
                    ch_in,
                    ch_out,
                    stride=2 if i == 0 and stage_num != 2 else 1,
                    shortcut=i != 0,
                    act=act,
                    variant=variant,
                )
            )
            if i == 0:
                ch_in = ch_out * block.expansion

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


class PResNet(Backbone):
    """ResNet-vd backbone of RT-DETR (official ``PResNet``), detectron2 interface.

    Args:
        depth: 18, 34 (BasicBlock) or 50, 101 (BottleNeck).
        variant: ``"d"`` (default; three-conv stem and avg-pool projection shortcuts), ``"c"`` (three-conv
            stem), ``"b"`` / ``"a"`` (7x7 stem; ``a`` puts the bottleneck stride on the first 1x1).
        num_stages: number of residual stages built (1..4).
        return_idx: indices of the stages whose outputs are returned; stage ``i`` is named
            ``"res{i+2}"`` with stride ``2**(i+2)``.
        act: activation name.
        freeze_at: official semantics: if ``>= 0``, the parameters of the stem (``conv1``) and of
            ``res_layers[:freeze_at]`` get ``requires_grad=False``. (As in the official code this does
            not freeze BN running statistics by itself; use ``freeze_norm`` for that.)
        freeze_norm: replace every BatchNorm2d by a frozen BN (buffers, no trainable parameters).

    Attributes:
        conv1: stem ``Sequential(conv1_1, conv1_2, conv1_3)`` (variant c/d) or ``Sequential(conv1_1)``.
        res_layers: ``ModuleList`` of :class:`Blocks`.

    Forward:
        ``x [B, 3, H, W]`` (H, W multiples of 32 for RT-DETR) -> ``{"res3": [B, C3, H/8, W/8],
        "res4": [B, C4, H/16, W/16], "res5": [B, C5, H/32, W/32]}`` for ``return_idx=(1, 2, 3)``,
        with (C3, C4, C5) = (128, 256, 512) for depth 18/34 and (512, 1024, 2048) for 50/101.
        Spatial sizes are ceil-divided when H, W are not multiples of the stride.
    """

    def __init__(
        self,
        *,
        depth: int,
        variant: str = "d",
        num_stages: int = 4,
        return_idx: Sequence[int] = (1, 2, 3),
        act: str = "relu",
        freeze_at: int = -1,
        freeze_norm: bool = True,
    ):
        super().__init__()
        if depth not in _DEPTH_CFG:
            raise ValueError(f"depth must be one of {sorted(_DEPTH_CFG)}, got {depth}")
        if variant not in ("a", "b", "c", "d"):
            raise ValueError(f"variant must be 'a', 'b', 'c' or 'd', got {variant!r}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"num_stages must be in 1..4, got {num_stages}")
        return_idx = tuple(int(i) for i in return_idx)
        valid = all(0 <= i < num_stages for i in return_idx) and list(return_idx) == sorted(set(return_idx))
        if not return_idx or not valid:
            raise ValueError(f"return_idx must be increasing, unique and in [0, {num_stages}), got {return_idx}")

        self.depth = depth
        self.variant = variant
        self.num_stages = num_stages
        self.return_idx = return_idx

        ch_in = 64
        if variant in ("c", "d"):
            stem_def = [
                (3, ch_in // 2, 3, 2, "conv1_1"),
                (ch_in // 2, ch_in // 2, 3, 1, "conv1_2"),
                (ch_in // 2, ch_in, 3, 1, "conv1_3"),
            ]
        else:
            stem_def = [(3, ch_in, 7, 2, "conv1_1")]
        self.conv1 = nn.Sequential(
            OrderedDict((name, ConvNormLayer(ci, co, k, s, act=act)) for ci, co, k, s, name in stem_def)
        )

        block = BottleNeck if depth >= 50 else BasicBlock
        out_channels = [block.expansion * w for w in _STAGE_WIDTHS]
        out_strides = [4, 8, 16, 32]
        self.res_layers = nn.ModuleList()
        for i in range(num_stages):
            self.res_layers.append(
                Blocks(block, ch_in, _STAGE_WIDTHS[i], _DEPTH_CFG[depth][i], stage_num=i + 2, act=act, variant=variant)
            )
            ch_in = out_channels[i]

        self._out_features = [f"res{i + 2}" for i in return_idx]
        self._out_feature_channels = {f"res{i + 2}": out_channels[i] for i in return_idx}
        self._out_feature_strides = {f"res{i + 2}": out_strides[i] for i in return_idx}

        if freeze_at >= 0:
            self._freeze_parameters(self.conv1)
            for i in range(min(freeze_at, num_stages)):
                self._freeze_parameters(self.res_layers[i])
        if freeze_norm:
            freeze_batch_norm(self)

    @staticmethod
    def _freeze_parameters(module: nn.Module) -> None:
        for p in module.parameters():
            p.requires_grad_(False)

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """Args:
            x: images ``[B, 3, H, W]``.

        Returns:
            dict ``"res{i+2}" -> [B, C_i, ceil(H / 2**(i+2)), ceil(W / 2**(i+2))]`` for ``i`` in ``return_idx``.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"PResNet expects images of shape [B, 3, H, W], got {tuple(x.shape)}")
        x = F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)
        outs: Dict[str, Tensor] = {}
        for idx, stage in enumerate(self.res_layers):
            x = stage(x)
            if idx in self.return_idx:
                outs[f"res{idx + 2}"] = x
        return outs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """``{"res{i+2}": ShapeSpec(channels=C_i, stride=2**(i+2))}`` for ``i`` in ``return_idx``."""
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }
