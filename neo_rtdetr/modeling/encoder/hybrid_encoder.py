"""RT-DETR HybridEncoder: input projection, AIFI on the top level, CCFM (top-down FPN + bottom-up PAN).

Module names equal the official rtdetr_pytorch v1 ``HybridEncoder`` (``input_proj.{i}.{0,1}``,
``encoder.{i}.layers.{l}``, ``lateral_convs``, ``fpn_blocks``, ``downsample_convs``, ``pan_blocks``).

Differences from the official code (outputs are unchanged where the official code is correct):
  * no ``eval_spatial_size``: the AIFI position embedding is built (and cached) for the actual
    feature size in training and eval, so any input size works;
  * the position embedding is row-major, hence correct on non-square maps (official: scrambled
    positions for H != W; identical on square maps), see ``position_embedding.py``.
"""

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.conv_norm import ConvNormLayer
from .aifi import TransformerEncoder, TransformerEncoderLayer
from .csp_rep import CSPRepLayer, RepVggBlock
from .position_embedding import build_2d_sincos_position_embedding

__all__ = ["HybridEncoder"]


class HybridEncoder(nn.Module):
    """AIFI + CCFM encoder of RT-DETR.

    Args:
        in_channels: channels of the L input maps (fine to coarse), e.g. (512, 1024, 2048) for R50.
        feat_strides: strides of the input maps; consecutive strides must double.
        hidden_dim: channels C of every output map (and AIFI token size).
        nhead: AIFI attention heads.
        dim_feedforward: AIFI FFN hidden size.
        dropout: AIFI dropout.
        enc_act: AIFI FFN activation.
        use_encoder_idx: levels (indices into the inputs) that get an AIFI encoder.
        num_encoder_layers: AIFI layers per encoded level (0 disables AIFI).
        pe_temperature: temperature of the AIFI sin-cos position embedding.
        expansion: hidden-channel expansion of the CSPRepLayers.
        depth_mult: RepVGG blocks per CSPRepLayer = ``round(3 * depth_mult)``.
        act: activation of the CCFM convolutions.

    Forward:
        ``feats``: list of L tensors ``[B, in_channels[l], H_l, W_l]`` with ``H_l = 2 * H_{l+1}``,
        ``W_l = 2 * W_{l+1}`` (true when the image size is a multiple of the largest stride)
        -> list of L tensors ``[B, hidden_dim, H_l, W_l]``.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int] = (512, 1024, 2048),
        feat_strides: Sequence[int] = (8, 16, 32),
        hidden_dim: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        enc_act: str = "gelu",
        use_encoder_idx: Sequence[int] = (2,),
        num_encoder_layers: int = 1,
        pe_temperature: float = 10000,
        expansion: float = 1.0,
        depth_mult: float = 1.0,
        act: str = "silu",
    ):
        super().__init__()
        self.in_channels = tuple(int(c) for c in in_channels)
        self.feat_strides = tuple(int(s) for s in feat_strides)
        if len(self.in_channels) < 2 or len(self.feat_strides) != len(self.in_channels):
            raise ValueError(
                f"need >= 2 levels and one stride per level, got in_channels={self.in_channels}, "
                f"feat_strides={self.feat_strides}"
            )
        if any(b != 2 * a for a, b in zip(self.feat_strides[:-1], self.feat_strides[1:])):
            raise ValueError(f"consecutive feat_strides must double (x2 CCFM), got {self.feat_strides}")
        self.use_encoder_idx = tuple(int(i) for i in use_encoder_idx)
        if any(not 0 <= i < len(self.in_channels) for i in self.use_encoder_idx):
            raise ValueError(f"use_encoder_idx {self.use_encoder_idx} out of range for {len(self.in_channels)} levels")
        if hidden_dim % 4 != 0:
            raise ValueError(f"hidden_dim must be divisible by 4 (2D sin-cos embedding), got {hidden_dim}")
        self.hidden_dim = hidden_dim
        self.num_encoder_layers = num_encoder_layers
        self.pe_temperature = pe_temperature
        self.out_channels = [hidden_dim for _ in self.in_channels]
        self.out_strides = list(self.feat_strides)
        num_levels = len(self.in_channels)

        # channel projection (v1 names: Sequential -> ".0" conv, ".1" BN)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, kernel_size=1, bias=False), nn.BatchNorm2d(hidden_dim))
            for c in self.in_channels
        )

        # AIFI
        encoder_layer = TransformerEncoderLayer(
            hidden_dim, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout, activation=enc_act
        )
        self.encoder = nn.ModuleList(
            TransformerEncoder(encoder_layer, num_encoder_layers) for _ in range(len(self.use_encoder_idx))
        )

        num_blocks = round(3 * depth_mult)
        # top-down FPN (index k = 0 is the coarsest step)
        self.lateral_convs = nn.ModuleList()
        self.fpn_blocks = nn.ModuleList()
        for _ in range(num_levels - 1):
            self.lateral_convs.append(ConvNormLayer(hidden_dim, hidden_dim, 1, 1, act=act))
            self.fpn_blocks.append(CSPRepLayer(hidden_dim * 2, hidden_dim, num_blocks, expansion=expansion, act=act))

        # bottom-up PAN
        self.downsample_convs = nn.ModuleList()
        self.pan_blocks = nn.ModuleList()
        for _ in range(num_levels - 1):
            self.downsample_convs.append(ConvNormLayer(hidden_dim, hidden_dim, 3, 2, act=act))
            self.pan_blocks.append(CSPRepLayer(hidden_dim * 2, hidden_dim, num_blocks, expansion=expansion, act=act))

    def _check_inputs(self, feats: Sequence[Tensor]) -> None:
        if not isinstance(feats, (list, tuple)) or len(feats) != len(self.in_channels):
            raise ValueError(
                f"HybridEncoder expects a list of {len(self.in_channels)} feature maps, got "
                f"{type(feats).__name__} of length {len(feats) if isinstance(feats, (list, tuple)) else '?'}"
            )
        shapes = [tuple(f.shape) for f in feats]
        for l, (f, c) in enumerate(zip(feats, self.in_channels)):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f"feature map {l} must be [B, {c}, H, W]; got shapes {shapes}")
            if f.shape[0] != feats[0].shape[0]:
                raise ValueError(f"feature maps have different batch sizes: {shapes}")
        for l in range(len(feats) - 1):
            (h0, w0), (h1, w1) = feats[l].shape[-2:], feats[l + 1].shape[-2:]
            if h0 != 2 * h1 or w0 != 2 * w1:
                s = self.feat_strides[-1]
                raise ValueError(
                    f"feature maps {[sh[-2:] for sh in shapes]} (strides {self.feat_strides}) do not form an exact x2 "
                    f"pyramid: the input image height and width must be multiples of {s} "
                    f"(pad or resize, e.g. 1080 -> 1088)"
                )

    def forward(self, feats: Sequence[Tensor]) -> List[Tensor]:
        """Args:
            feats: L maps ``[B, in_channels[l], H_l, W_l]``, fine to coarse, ``H_l = 2 * H_{l+1}``.

        Returns:
            L maps ``[B, hidden_dim, H_l, W_l]``, fine to coarse.
        """
        self._check_inputs(feats)
        proj_feats = [proj(f) for proj, f in zip(self.input_proj, feats)]

        # AIFI on the selected levels
        if self.num_encoder_layers > 0:
            for i, enc_ind in enumerate(self.use_encoder_idx):
                x = proj_feats[enc_ind]
                b, c, h, w = x.shape
                src_flatten = x.flatten(2).permute(0, 2, 1)  # [B, H*W, C], row-major tokens
                pos_embed = build_2d_sincos_position_embedding(
                    h, w, self.hidden_dim, self.pe_temperature, device=x.device, dtype=x.dtype
                )
                memory = self.encoder[i](src_flatten, pos_embed=pos_embed)
                proj_feats[enc_ind] = memory.permute(0, 2, 1).reshape(b, c, h, w).contiguous()

        n = len(self.in_channels)
        # top-down: inner_outs[0] is the current coarsest map; it is replaced by its lateral-conv'd
        # version, which is what the PAN later concatenates.
        inner_outs = [proj_feats[-1]]
        for idx in range(n - 1, 0, -1):
            k = n - 1 - idx
            feat_high = self.lateral_convs[k](inner_outs[0])
            inner_outs[0] = feat_high
            upsample_feat = F.interpolate(feat_high, scale_factor=2.0, mode="nearest")
            inner_outs.insert(0, self.fpn_blocks[k](torch.cat([upsample_feat, proj_feats[idx - 1]], dim=1)))

        # bottom-up
        outs = [inner_outs[0]]
        for idx in range(n - 1):
            downsample_feat = self.downsample_convs[idx](outs[-1])
            outs.append(self.pan_blocks[idx](torch.cat([downsample_feat, inner_outs[idx + 1]], dim=1)))
        return outs

    def convert_to_deploy(self) -> "HybridEncoder":
        """Fuse every RepVGG block (see :meth:`RepVggBlock.convert_to_deploy`); returns ``self``."""
        for m in list(self.modules()):
            if isinstance(m, RepVggBlock):
                m.convert_to_deploy()
        return self
