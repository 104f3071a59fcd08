"""Multi-scale deformable attention (Deformable DETR), as used by the RT-DETR decoder.

``multi_scale_deformable_attention`` is the pure-PyTorch reference core (``F.grid_sample``). The module's default
core, ``ms_deform_attn_triton.ms_deform_attn_core``, runs fused Triton kernels on CUDA inputs and this reference
elsewhere; any function with the same signature can be set as ``MSDeformableAttention.ms_deformable_attn_core``.
"""

import math
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "multi_scale_deformable_attention", "MSDeformableAttention", "spatial_shapes_as_list", "check_attention_inputs"
]

SpatialShapes = Union[Sequence[Tuple[int, int]], Sequence[Sequence[int]], Tensor]


def spatial_shapes_as_list(spatial_shapes: SpatialShapes) -> List[Tuple[int, int]]:
    """Normalise spatial shapes (a list of (H, W) or a LongTensor [L, 2]) to a list of int tuples.

    A tensor on an accelerator is copied to the host (one synchronisation).
    """
    if isinstance(spatial_shapes, Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError(f"spatial_shapes tensor must be [L, 2], got {tuple(spatial_shapes.shape)}")
        spatial_shapes = spatial_shapes.tolist()
    out = []
    for hw in spatial_shapes:
        h, w = hw
        out.append((int(h), int(w)))
    return out


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Reference multi-scale deformable attention core (bilinear sampling + weighted sum).

    For every query q, head h, level l and point p, the value map of level l (head h) is sampled bilinearly at
    ``sampling_locations[b, q, h, l, p]`` (x, y in [0, 1] of the map, 0 = left/top edge, 1 = right/bottom edge;
    ``grid_sample(2 * loc - 1, align_corners=False, padding_mode="zeros")``, so samples outside the map read
    zeros) and the samples are summed with ``attention_weights[b, q, h, l, p]``.

    Args:
        value: [B, S, nH, Dh], the projected values of all levels, flattened H-major per level and concatenated
            in level order (S = sum of H_l * W_l).
        spatial_shapes: (H_l, W_l) per level, a list of pairs or a LongTensor [L, 2].
        sampling_locations: [B, Q, nH, L, P, 2], normalised (x, y).
        attention_weights: [B, Q, nH, L, P] (normally softmax-normalised over L x P per head).

    Returns:
        [B, Q, nH * Dh], heads concatenated (head-major), in ``value``'s dtype (the sampling runs in the wider
        of the value and location dtypes).
    """
    shapes = spatial_shapes_as_list(spatial_shapes)
    if value.dim() != 4:
        raise ValueError(f"value must be [B, S, nH, Dh], got {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be [B, Q, nH, L, P, 2], got {tuple(sampling_locations.shape)}")
    bs, num_value, num_heads, head_dim = value.shape
    _, num_query, _, num_levels, num_points, _ = sampling_locations.shape
    if sampling_locations.shape[0] != bs or sampling_locations.shape[2] != num_heads:
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} does not match value {tuple(value.shape)}"
        )
    if tuple(attention_weights.shape) != (bs, num_query, num_heads, num_levels, num_points):
        raise ValueError(
            f"attention_weights must be {(bs, num_query, num_heads, num_levels, num_points)}, "
            f"got {tuple(attention_weights.shape)}"
        )
    if len(shapes) != num_levels:
        raise ValueError(f"{len(shapes)} spatial shapes for {num_levels} sampling levels")
    if sum(h * w for h, w in shapes) != num_value:
        raise ValueError(f"spatial shapes {shapes} cover {sum(h * w for h, w in shapes)} values, value has {num_value}")

    # sample in the wider of the value / location dtypes (e.g. fp32 boxes with a bf16 model), return value's
    compute_dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    value_per_level = value.to(compute_dtype).split([h * w for h, w in shapes], dim=1)
    # [B, Q, nH, L, P, 2] -> per level [B*nH, Q, P, 2], grid in [-1, 1]
    grids = (2 * sampling_locations.to(compute_dtype) - 1).permute(0, 2, 3, 1, 4, 5)  # [B, nH, L, Q, P, 2]
    weights = attention_weights.permute(0, 2, 3, 1, 4)  # [B, nH, L, Q, P]
    output = None
    for level, (h, w) in enumerate(shapes):
        # [B, H*W, nH, Dh] -> [B, nH, Dh, H*W] -> [B*nH, Dh, H, W]
        value_l = value_per_level[level].permute(0, 2, 3, 1).reshape(bs * num_heads, head_dim, h, w)
        grid_l = grids[:, :, level].reshape(bs * num_heads, num_query, num_points, 2)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        # sampled [B*nH, Dh, Q, P] x weights [B*nH, 1, Q, P] -> [B*nH, Dh, Q]
        weight_l = weights[:, :, level].reshape(bs * num_heads, 1, num_query, num_points)
        contrib = (sampled * weight_l).sum(-1)
        output = contrib if output is None else output + contrib
    # [B*nH, Dh, Q] -> [B, nH*Dh, Q] -> [B, Q, nH*Dh]
    return output.reshape(bs, num_heads * head_dim, num_query).transpose(1, 2).contiguous().to(value.dtype)


def check_attention_inputs(query: Tensor, reference_points: Tensor, value: Tensor, *, embed_dim: int, num_levels: int) -> None:
    """Shape contract of a deformable cross-attention module's inputs (see :meth:`MSDeformableAttention.forward`).

    Raises:
        ValueError: naming the input whose shape is wrong and the expected shape.
    """
    if query.dim() != 3 or query.shape[-1] != embed_dim:
        raise ValueError(f"query must be [B, Q, {embed_dim}], got {tuple(query.shape)}")
    if value.dim() != 3 or value.shape[-1] != embed_dim or value.shape[0] != query.shape[0]:
        raise ValueError(f"value must be [B={query.shape[0]}, S, {embed_dim}], got {tuple(value.shape)}")
    bs, num_query, _ = query.shape
    if (
        reference_points.dim() != 4
        or reference_points.shape[:2] != (bs, num_query)
        or reference_points.shape[2] not in (1, num_levels)
        or reference_points.shape[3] not in (2, 4)
    ):
        raise ValueError(
            f"reference_points must be [B={bs}, Q={num_query}, 1 or {num_levels}, 2 or 4], "
            f"got {tuple(reference_points.shape)}"
        )


class MSDeformableAttention(nn.Module):
    """Multi-scale deformable cross-attention with box reference points (official RT-DETR v1 layout).

    Parameters (official names): ``sampling_offsets`` Linear(C, nH*L*P*2), ``attention_weights`` Linear(C, nH*L*P),
    ``value_proj`` and ``output_proj`` Linear(C, C).

    Args:
        embed_dim: C, the query/value width.
        num_heads: nH (C must be divisible by it).
        num_levels: L, feature levels sampled.
        num_points: P, points per head and level.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.head_dim = embed_dim // num_heads
        self.total_points = num_heads * num_levels * num_points

        self.sampling_offsets = nn.Linear(embed_dim, self.total_points * 2)
        self.attention_weights = nn.Linear(embed_dim, self.total_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)

        # swappable core (a function, not a submodule: no state-dict entries); the default dispatches to the Triton
        # kernels on CUDA and to the PyTorch reference elsewhere
        from .ms_deform_attn_triton import ms_deform_attn_core

        self.ms_deformable_attn_core = ms_deform_attn_core
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Official init: zero offset weights; offset bias = head directions scaled by point index."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # [nH, 2]
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.reshape(self.num_heads, 1, 1, 2).tile([1, self.num_levels, self.num_points, 1])
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).reshape(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: SpatialShapes,
        value_mask: Tensor = None,
    ) -> Tensor:
        """Sample the value maps around each query's reference box.

        Args:
            query: [B, Q, C] (content + positional embedding).
            reference_points: [B, Q, 1 or L, 4] boxes (cx, cy, w, h) in [0, 1]: the points are
                ``ref_xy + offset / P * ref_wh * 0.5``; or [B, Q, 1 or L, 2] points (cx, cy), with offsets in
                pixels of each level (``ref_xy + offset / (W_l, H_l)``).
            value: [B, S, C] flattened multi-level memory (S = sum H_l * W_l, level-major, H-major inside).
            spatial_shapes: (H_l, W_l) per level (list of pairs or LongTensor [L, 2]).
            value_mask: optional [B, S], True / 1 for valid tokens (invalid tokens are zeroed after value_proj).

        Returns:
            [B, Q, C].
        """
        check_attention_inputs(query, reference_points, value, embed_dim=self.embed_dim, num_levels=self.num_levels)
        bs, num_query, _ = query.shape
        num_value = value.shape[1]

        value = self.value_proj(value)
        if value_mask is not None:
            if tuple(value_mask.shape) != (bs, num_value):
                raise ValueError(f"value_mask must be [B, S] = {(bs, num_value)}, got {tuple(value_mask.shape)}")
            value = value * value_mask.to(value.dtype).unsqueeze(-1)
        value = value.reshape(bs, num_value, self.num_heads, self.head_dim)

        offsets = self.sampling_offsets(query).reshape(
            bs, num_query, self.num_heads, self.num_levels, self.num_points, 2
        )
        weights = self.attention_weights(query).reshape(
            bs, num_query, self.num_heads, self.num_levels * self.num_points
        )
        weights = F.softmax(weights, dim=-1).reshape(bs, num_query, self.num_heads, self.num_levels, self.num_points)

        ref = reference_points[:, :, None, :, None, :]  # [B, Q, 1, 1|L, 1, 2|4]
        if reference_points.shape[-1] == 4:
            locations = ref[..., :2] + offsets / self.num_points * ref[..., 2:] * 0.5
        else:
            shapes = spatial_shapes_as_list(spatial_shapes)
            normalizer = torch.tensor(
                [[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device
            ).reshape(1, 1, 1, self.num_levels, 1, 2)
            locations = ref + offsets / normalizer

        output = self.ms_deformable_attn_core(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
