"""RT-DETRv2 deformable cross-attention: per-level sampling points and the discrete (nearest-cell) sampling.

What differs from the v1 :class:`~neo_rtdetr.modeling.decoder.ms_deform_attn.MSDeformableAttention`
(official ``rtdetrv2_pytorch/src/zoo/rtdetr/rtdetrv2_decoder.py::MSDeformableAttention``):

* ``num_points`` may differ per level (``[P_0, ..., P_{L-1}]``). The projections hold ``nH x sum_l P_l`` sampling
  points, level-major then point (for equal counts this is the v1 ``[nH, L, P]`` layout), and the offsets of a
  level-``l`` point are scaled by ``1 / P_l``, the persistent buffer ``num_points_scale`` [sum_l P_l] of the
  official v2 state dict: ``loc = ref_xy + offset * (1 / P_l) * ref_wh * offset_scale`` (``offset_scale`` 0.5; equal
  to v1 for ``P_l = P``).
* ``method="discrete"`` (the deployment fine-tunes without ``grid_sample``) reads the value of the nearest cell:
  ``x = clamp(floor(loc_x * W_l + 0.5), 0, W_l - 1)``, ``y = clamp(floor(loc_y * H_l + 0.5), 0, H_l - 1)``; the
  sampling offsets are frozen (they get no gradient through an integer index). The official code clamps **both**
  coordinates to ``H_l - 1`` ("FIX ME? for rectangle input"), which reads wrong cells on non-square maps; here x
  is clamped to ``W_l - 1``. (``floor(v + 0.5)`` equals the official ``int(v + 0.5)`` after the clamp.)

Sampling kernels: with equal points per level and ``method="default"`` the module calls
``self.ms_deformable_attn_core`` (the library's default core: the Triton kernels on CUDA, the PyTorch reference
:func:`multi_scale_deformable_attention` elsewhere; any function with the same signature can be swapped in) once with the v1 layout ``[B, Q, nH, L, P, 2]``. With ragged points it calls the
same core once per level (``L = 1``, ``P = P_l``) and sums the levels, so a swapped kernel serves that path too.
"""

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from neo_rtdetr.modeling.decoder.ms_deform_attn import SpatialShapes, check_attention_inputs, spatial_shapes_as_list
from neo_rtdetr.modeling.decoder.ms_deform_attn_triton import ms_deform_attn_core

__all__ = ["MSDeformableAttentionV2", "discrete_deformable_attention", "points_per_level", "SAMPLING_METHODS"]

SAMPLING_METHODS = ("default", "discrete")


def points_per_level(num_points: Union[int, Sequence[int]], num_levels: int) -> Tuple[int, ...]:
    """``num_points`` as one positive count per level.

    Args:
        num_points: one count for every level, or a sequence of ``num_levels`` counts.
        num_levels: L.

    Returns:
        A tuple of L positive ints.

    Raises:
        ValueError: wrong length or a count < 1.
    """
    if isinstance(num_points, int):
        points = (num_points,) * num_levels
    else:
        points = tuple(int(p) for p in num_points)
        if any(p != q for p, q in zip(points, num_points)):
            raise ValueError(f"num_points must be integers, got {list(num_points)}")
    if len(points) != num_levels or any(p < 1 for p in points):
        raise ValueError(f"num_points must be one count >= 1 per level ({num_levels} levels), got {num_points!r}")
    return points


def discrete_deformable_attention(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    num_points: Sequence[int],
) -> Tensor:
    """Deformable attention with nearest-cell sampling (official v2 ``method="discrete"``, x clamped to the width).

    Point ``p`` of level ``l`` reads cell ``(y, x) = (clamp(floor(loc_y * H_l + 0.5), 0, H_l - 1),
    clamp(floor(loc_x * W_l + 0.5), 0, W_l - 1))`` of the level-``l`` value map of its head; the reads are summed with
    the attention weights. No gradient reaches ``sampling_locations``.

    Args:
        value: [B, S, nH, Dh], the levels flattened H-major and concatenated (S = sum H_l * W_l).
        spatial_shapes: (H_l, W_l) per level (list of pairs or LongTensor [L, 2]).
        sampling_locations: [B, Q, nH, sum P_l, 2] normalised (x, y), level-major then point.
        attention_weights: [B, Q, nH, sum P_l].
        num_points: P_l per level.

    Returns:
        [B, Q, nH * Dh] (heads concatenated), in ``value``'s dtype.
    """
    shapes = spatial_shapes_as_list(spatial_shapes)
    points = tuple(int(p) for p in num_points)
    if value.dim() != 4:
        raise ValueError(f"value must be [B, S, nH, Dh], got {tuple(value.shape)}")
    bs, num_value, num_heads, head_dim = value.shape
    total = sum(points)
    if sampling_locations.dim() != 5 or sampling_locations.shape[0] != bs or sampling_locations.shape[2:] != (
        num_heads,
        total,
        2,
    ):
        raise ValueError(
            f"sampling_locations must be [B={bs}, Q, nH={num_heads}, {total}, 2], got {tuple(sampling_locations.shape)}"
        )
    num_query = sampling_locations.shape[1]
    if tuple(attention_weights.shape) != (bs, num_query, num_heads, total):
        raise ValueError(
            f"attention_weights must be {(bs, num_query, num_heads, total)}, got {tuple(attention_weights.shape)}"
        )
    if len(shapes) != len(points):
        raise ValueError(f"{len(shapes)} spatial shapes for {len(points)} levels of sampling points")
    if sum(h * w for h, w in shapes) != num_value:
        raise ValueError(f"spatial shapes {shapes} cover {sum(h * w for h, w in shapes)} values, value has {num_value}")

    compute_dtype = torch.promote_types(value.dtype, attention_weights.dtype)
    values = value.to(compute_dtype).permute(0, 2, 1, 3).split([h * w for h, w in shapes], dim=2)  # [B, nH, HW, Dh]
    locations = sampling_locations.detach().split(points, dim=3)
    weights = attention_weights.to(compute_dtype).permute(0, 2, 1, 3).split(points, dim=3)  # [B, nH, Q, P_l]
    output = None
    for level, (h, w) in enumerate(shapes):
        loc = locations[level]  # [B, Q, nH, P_l, 2]
        x = torch.floor(loc[..., 0] * w + 0.5).long().clamp_(0, w - 1)
        y = torch.floor(loc[..., 1] * h + 0.5).long().clamp_(0, h - 1)
        index = (y * w + x).permute(0, 2, 1, 3).reshape(bs, num_heads, -1)  # [B, nH, Q * P_l]
        sampled = values[level].gather(2, index.unsqueeze(-1).expand(-1, -1, -1, head_dim))  # [B, nH, Q*P_l, Dh]
        sampled = sampled.view(bs, num_heads, num_query, points[level], head_dim)
        contrib = (sampled * weights[level].unsqueeze(-1)).sum(3)  # [B, nH, Q, Dh]
        output = contrib if output is None else output + contrib
    return output.permute(0, 2, 1, 3).reshape(bs, num_query, num_heads * head_dim).to(value.dtype)


class MSDeformableAttentionV2(nn.Module):
    """Multi-scale deformable cross-attention of RT-DETRv2 (official v2 parameter and buffer names).

    State: ``sampling_offsets`` Linear(C, nH * sum P_l * 2), ``attention_weights`` Linear(C, nH * sum P_l),
    ``value_proj`` and ``output_proj`` Linear(C, C), buffer ``num_points_scale`` [sum P_l] (``1 / P_l`` per point).
    The attention weights are a softmax over all ``sum P_l`` points of a head (all levels jointly, as in v1).

    Args:
        embed_dim: C (divisible by ``num_heads``).
        num_heads: nH.
        num_levels: L.
        num_points: points per head and level, one int for all levels or one per level.
        method: ``"default"`` (bilinear ``grid_sample``) or ``"discrete"`` (nearest cell; sampling offsets frozen).
        offset_scale: offsets are multiplied by ``offset_scale * ref_wh / P_l`` (official 0.5).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 3,
        num_points: Union[int, Sequence[int]] = 4,
        *,
        method: str = "default",
        offset_scale: float = 0.5,
    ):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if method not in SAMPLING_METHODS:
            raise ValueError(f"method must be one of {SAMPLING_METHODS}, got {method!r}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = points_per_level(num_points, num_levels)
        self.head_dim = embed_dim // num_heads
        self.method = method
        self.offset_scale = float(offset_scale)
        self.total_points = num_heads * sum(self.num_points)

        scale = [1.0 / n for n in self.num_points for _ in range(n)]
        self.register_buffer("num_points_scale", torch.tensor(scale, dtype=torch.float32))
        # level of every sampling point (derived, not in the state dict)
        level_of_point = [lvl for lvl, n in enumerate(self.num_points) for _ in range(n)]
        self.register_buffer("_level_of_point", torch.tensor(level_of_point, dtype=torch.long), persistent=False)

        self.sampling_offsets = nn.Linear(embed_dim, self.total_points * 2)
        self.attention_weights = nn.Linear(embed_dim, self.total_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)

        # swappable bilinear core with the library's signature (a function, not a submodule: no state-dict entries);
        # the library default: the Triton kernels on CUDA, the PyTorch reference elsewhere
        self.ms_deformable_attn_core = ms_deform_attn_core
        self._reset_parameters()
        if method == "discrete":
            self.sampling_offsets.requires_grad_(False)

    @property
    def uniform_points(self) -> Optional[int]:
        """P when every level has P points, else None."""
        return self.num_points[0] if len(set(self.num_points)) == 1 else None

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_levels={self.num_levels}, "
            f"num_points={list(self.num_points)}, method={self.method!r}, offset_scale={self.offset_scale}"
        )

    def _reset_parameters(self) -> None:
        """Official v2 init: zero offset weights; offset bias = head direction x point index (1..P_l per level)."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # [nH, 2]
        grid = grid / grid.abs().max(-1, keepdim=True).values
        index = torch.cat([torch.arange(1, n + 1, dtype=torch.float32) for n in self.num_points])  # [sum P_l]
        grid = grid.reshape(self.num_heads, 1, 2) * index.reshape(1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def _check_inputs(self, query: Tensor, reference_points: Tensor, value: Tensor, spatial_shapes) -> List:
        check_attention_inputs(query, reference_points, value, embed_dim=self.embed_dim, num_levels=self.num_levels)
        shapes = spatial_shapes_as_list(spatial_shapes)
        if len(shapes) != self.num_levels:
            raise ValueError(f"{len(shapes)} spatial shapes for an attention over {self.num_levels} levels")
        return shapes

    def sampling_locations(self, offsets: Tensor, reference_points: Tensor, shapes: List[Tuple[int, int]]) -> Tensor:
        """Sampling locations from the raw offsets.

        Args:
            offsets: [B, Q, nH, sum P_l, 2], the ``sampling_offsets`` output.
            reference_points: [B, Q, 1 or L, 4] boxes (cx, cy, w, h) -> ``ref_xy + off * (1 / P_l) * ref_wh *
                offset_scale``; or [B, Q, 1 or L, 2] points -> ``ref + off / (W_l, H_l)`` (offsets in cells).
            shapes: (H_l, W_l) per level.

        Returns:
            [B, Q, nH, sum P_l, 2] normalised (x, y), in the wider of the offset / reference dtypes.
        """
        ref = reference_points
        if ref.shape[2] != 1:  # one reference per level: repeat it for the points of that level
            ref = ref.index_select(2, self._level_of_point)
        ref = ref.unsqueeze(2)  # [B, Q, 1, 1 or sum P_l, 2|4]
        dtype = torch.promote_types(offsets.dtype, reference_points.dtype)
        if reference_points.shape[-1] == 4:
            # official order of operations: offsets * num_points_scale * ref_wh * offset_scale
            offset = offsets * self.num_points_scale.to(dtype).unsqueeze(-1) * ref[..., 2:] * self.offset_scale
            return ref[..., :2] + offset
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=dtype, device=offsets.device)
        return ref + offsets / normalizer.index_select(0, self._level_of_point)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: SpatialShapes,
        value_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """Sample the value maps around each query's reference (same contract as the v1 module).

        Args:
            query: [B, Q, C] (content + positional embedding).
            reference_points: [B, Q, 1 or L, 4] boxes (cx, cy, w, h) in [0, 1], or [B, Q, 1 or L, 2] points.
            value: [B, S, C] flattened multi-level memory (level-major, H-major inside a level).
            spatial_shapes: (H_l, W_l) per level (list of pairs or LongTensor [L, 2]).
            value_mask: optional [B, S], True / 1 for valid tokens (invalid ones are zeroed after ``value_proj``).

        Returns:
            [B, Q, C].
        """
        shapes = self._check_inputs(query, reference_points, value, spatial_shapes)
        bs, num_query, _ = query.shape
        num_value = value.shape[1]
        if sum(h * w for h, w in shapes) != num_value:
            covered = sum(h * w for h, w in shapes)
            raise ValueError(f"spatial shapes {shapes} cover {covered} tokens, value has {num_value}")

        value = self.value_proj(value)
        if value_mask is not None:
            if tuple(value_mask.shape) != (bs, num_value):
                raise ValueError(f"value_mask must be [B, S] = {(bs, num_value)}, got {tuple(value_mask.shape)}")
            value = value * value_mask.to(value.dtype).unsqueeze(-1)
        value = value.reshape(bs, num_value, self.num_heads, self.head_dim)

        total = sum(self.num_points)
        offsets = self.sampling_offsets(query).reshape(bs, num_query, self.num_heads, total, 2)
        weights = F.softmax(self.attention_weights(query).reshape(bs, num_query, self.num_heads, total), dim=-1)
        locations = self.sampling_locations(offsets, reference_points, shapes)

        if self.method == "discrete":
            output = discrete_deformable_attention(value, shapes, locations, weights, self.num_points)
        elif self.uniform_points is not None:
            p = self.uniform_points
            output = self.ms_deformable_attn_core(
                value,
                spatial_shapes,
                locations.reshape(bs, num_query, self.num_heads, self.num_levels, p, 2),
                weights.reshape(bs, num_query, self.num_heads, self.num_levels, p),
            )
        else:  # ragged: the same core once per level (L = 1, P = P_l); the weighted sum is additive over levels
            values = value.split([h * w for h, w in shapes], dim=1)
            locs = locations.split(self.num_points, dim=3)
            ws = weights.split(self.num_points, dim=3)
            output = None
            for level, shape in enumerate(shapes):
                contrib = self.ms_deformable_attn_core(
                    values[level], [shape], locs[level].unsqueeze(3), ws[level].unsqueeze(3)
                )
                output = contrib if output is None else output + contrib
        return self.output_proj(output)
