"""AIFI: the transformer encoder layer applied to the top feature map in RT-DETR's HybridEncoder.

Names follow the official ``TransformerEncoderLayer`` / ``TransformerEncoder`` (``self_attn``,
``linear1``, ``linear2``, ``norm1``, ``norm2``; ``layers.{i}``).
"""

import copy
from typing import Optional

from torch import Tensor, nn

from ..layers.conv_norm import get_activation

__all__ = ["TransformerEncoderLayer", "TransformerEncoder"]


class TransformerEncoderLayer(nn.Module):
    """Transformer encoder layer, post-norm by default.

    ``q = k = src + pos``, ``v = src``; ``src = norm1(src + MHA(q, k, v))``;
    ``src = norm2(src + linear2(dropout(act(linear1(src)))))``.
    With ``normalize_before=True`` the norms are applied to the branch inputs instead (pre-norm).

    Args:
        d_model: token size C.
        nhead: attention heads.
        dim_feedforward: FFN hidden size.
        dropout: dropout on attention weights, FFN hidden and both residual branches.
        activation: FFN activation name.
        normalize_before: pre-norm instead of post-norm.

    Shapes: ``src [B, N, C]``, ``pos_embed [1 or B, N, C]`` -> ``[B, N, C]``.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ):
        super().__init__()
        self.normalize_before = normalize_before
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = get_activation(activation)

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None, pos_embed: Optional[Tensor] = None) -> Tensor:
        """Args:
            src: tokens ``[B, N, C]``.
            src_mask: optional attention mask ``[N, N]`` / ``[B*nhead, N, N]`` (bool: True = blocked;
                a float mask is cast to ``src``'s dtype).
            pos_embed: position embedding ``[1 or B, N, C]`` added to queries and keys.

        Returns:
            ``[B, N, C]``.
        """
        if src_mask is not None and src_mask.is_floating_point():
            src_mask = src_mask.to(src.dtype)
        residual = src
        if self.normalize_before:
            src = self.norm1(src)
        q = k = src if pos_embed is None else src + pos_embed
        src, _ = self.self_attn(q, k, value=src, attn_mask=src_mask, need_weights=False)
        src = residual + self.dropout1(src)
        if not self.normalize_before:
            src = self.norm1(src)

        residual = src
        if self.normalize_before:
            src = self.norm2(src)
        src = self.linear2(self.dropout(self.activation(self.linear1(src))))
        src = residual + self.dropout2(src)
        if not self.normalize_before:
            src = self.norm2(src)
        return src


class TransformerEncoder(nn.Module):
    """A stack of ``num_layers`` deep copies of ``encoder_layer`` (``self.layers``), optional final norm.

    Shapes: ``src [B, N, C]`` -> ``[B, N, C]``.
    """

    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None, pos_embed: Optional[Tensor] = None) -> Tensor:
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=src_mask, pos_embed=pos_embed)
        if self.norm is not None:
            output = self.norm(output)
        return output
