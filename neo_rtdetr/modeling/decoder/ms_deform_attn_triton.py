"""Fused multi-scale deformable attention in Triton (forward and backward), for CUDA devices.

Same function and interface as the PyTorch reference
:func:`~neo_rtdetr.modeling.decoder.ms_deform_attn.multi_scale_deformable_attention` (bilinear
``grid_sample(align_corners=False, padding_mode="zeros")`` of every level at every point, weighted sum), but one
kernel for all levels and points instead of a ``grid_sample`` per level, no ``[B*nH, Dh, Q, P]`` intermediates,
reads of 16-byte head-channel vectors from the ``[B, S, nH, Dh]`` value layout, and a backward that accumulates the
value gradient with atomics in float32.

Arithmetic is float32 whatever the input dtypes (the reference samples in the wider of the value and location
dtypes, i.e. float32 under autocast); the output has the value's dtype, each gradient its input's dtype.

The op is registered as ``neo_rtdetr::ms_deform_attn`` (``torch.library.custom_op``) with an autograd formula and
a fake implementation, so ``torch.compile`` treats it as one opaque node and CUDA graphs can capture it.

Limits (the dispatcher :func:`ms_deform_attn_core` falls back to the reference outside them): up to 4 levels, a
power-of-two head dim between 2 and 256, float inputs on one CUDA device. Triton's interpreter
(``TRITON_INTERPRET=1``) runs the same kernels on the CPU; the tests use it to compare them with the reference.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..layers.tracing import is_graph_capture
from .ms_deform_attn import SpatialShapes, multi_scale_deformable_attention, spatial_shapes_as_list

__all__ = ["triton_available", "ms_deform_attn_triton", "ms_deform_attn_core", "MAX_LEVELS"]

MAX_LEVELS = 4

try:  # Triton ships with CUDA builds of PyTorch; CPU-only installs may lack it
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the installation
    _HAVE_TRITON = False


def triton_available() -> bool:
    """Whether the Triton kernels can be used (Triton importable)."""
    return _HAVE_TRITON


if _HAVE_TRITON:
    # Sizes are run-time arguments that change with every input size (multi-scale training) and, for the query
    # count, with every batch (denoising groups): without this, Triton would compile a variant per combination of
    # "divisible by 16" / "equal to 1" among them, i.e. recompile again and again during training.
    _RUNTIME_INTS = ["num_values", "num_queries", "h0", "w0", "s0", "h1", "w1", "s1", "h2", "w2", "s2", "h3", "w3", "s3"]

    @triton.jit
    def _level_params(l: tl.constexpr, h0, w0, s0, h1, w1, s1, h2, w2, s2, h3, w3, s3):
        if l == 0:
            return h0, w0, s0
        elif l == 1:
            return h1, w1, s1
        elif l == 2:
            return h2, w2, s2
        else:
            return h3, w3, s3

    @triton.jit
    def _sample_point(loc_ptr, attw_ptr, idx, mask, wf, hf):
        """Load point ``idx`` (location x, y and attention weight) and return its bilinear cell: the integer
        top-left corner (x0, y0), the fractions (fx, fy) and the weight. Pixel coordinates are those of
        grid_sample(align_corners=False); they are clamped so that the int conversion is safe (points that far
        outside read only zeros either way)."""
        x = tl.load(loc_ptr + 2 * idx, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(loc_ptr + 2 * idx + 1, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(attw_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        xp = tl.minimum(tl.maximum(x * wf - 0.5, -2.0), wf + 1.0)
        yp = tl.minimum(tl.maximum(y * hf - 0.5, -2.0), hf + 1.0)
        x0f = tl.floor(xp)
        y0f = tl.floor(yp)
        return x0f.to(tl.int32), y0f.to(tl.int32), xp - x0f, yp - y0f, w

    @triton.jit
    def _query_block(num_queries, NUM_HEADS: tl.constexpr, BLOCK_Q: tl.constexpr):
        """This program's batch image ``b``, head ``h``, query mask [BLOCK_Q] and flat (b, q, h) row index [BLOCK_Q]
        into the ``[B, Q, nH, ...]`` tensors (grid: query blocks x (B * nH))."""
        bh = tl.program_id(1)
        b = bh // NUM_HEADS
        h = bh % NUM_HEADS
        q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        q_mask = q < num_queries
        qh = ((b * num_queries + q) * NUM_HEADS + h).to(tl.int64)
        return b, h, q_mask, qh

    @triton.jit
    def _corner(x0, y0, fx, fy, dx: tl.constexpr, dy: tl.constexpr, q_mask, b, h, num_values, start, height, width,
                NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr):
        """Corner (x0 + dx, y0 + dy) of a bilinear cell (dx, dy in {0, 1}, compile-time): its x and y weights
        [BLOCK_Q], whether it lies inside the level's map [BLOCK_Q], and the offsets of its head-channel vector in
        the ``[B, S, nH, Dh]`` value layout [BLOCK_Q, Dh]."""
        xi = x0 + dx
        yi = y0 + dy
        wx = fx * dx + (1.0 - fx) * (1 - dx)
        wy = fy * dy + (1.0 - fy) * (1 - dy)
        ok = q_mask & (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        token = (b * num_values + start + yi * width + xi).to(tl.int64)
        offs = (token * NUM_HEADS + h)[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
        return wx, wy, ok, offs

    @triton.jit(do_not_specialize=_RUNTIME_INTS)
    def _msda_fwd_kernel(
        value_ptr, loc_ptr, attw_ptr, out_ptr,
        num_values, num_queries,
        h0, w0, s0, h1, w1, s1, h2, w2, s2, h3, w3, s3,
        NUM_HEADS: tl.constexpr, NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr,
    ):
        b, h, q_mask, qh = _query_block(num_queries, NUM_HEADS, BLOCK_Q)
        d = tl.arange(0, HEAD_DIM)
        acc = tl.zeros([BLOCK_Q, HEAD_DIM], dtype=tl.float32)
        # [B, Q, nH, L, P] flattened; the location of (b, q, h, l, p) is at 2 * that index
        for l in tl.static_range(NUM_LEVELS):
            height, width, start = _level_params(l, h0, w0, s0, h1, w1, s1, h2, w2, s2, h3, w3, s3)
            wf = width * 1.0  # (not .to(): a size of 1 arrives as a compile-time constant)
            hf = height * 1.0
            for p in tl.static_range(NUM_POINTS):
                idx = (qh * NUM_LEVELS + l) * NUM_POINTS + p
                x0, y0, fx, fy, w = _sample_point(loc_ptr, attw_ptr, idx, q_mask, wf, hf)
                for corner in tl.static_range(4):  # dx = corner % 2: 0 left, 1 right column; dy: top/bottom row
                    wx, wy, ok, offs = _corner(x0, y0, fx, fy, corner % 2, corner // 2, q_mask, b, h, num_values,
                                               start, height, width, NUM_HEADS, HEAD_DIM)
                    v = tl.load(value_ptr + offs, mask=ok[:, None], other=0.0).to(tl.float32)
                    acc += (wx * wy * w)[:, None] * v
        out_ptrs = out_ptr + qh[:, None] * HEAD_DIM + d[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None])

    @triton.jit(do_not_specialize=_RUNTIME_INTS)
    def _msda_bwd_kernel(
        value_ptr, loc_ptr, attw_ptr, grad_out_ptr,
        grad_value_ptr, grad_loc_ptr, grad_attw_ptr,
        num_values, num_queries,
        h0, w0, s0, h1, w1, s1, h2, w2, s2, h3, w3, s3,
        NUM_HEADS: tl.constexpr, NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr,
    ):
        b, h, q_mask, qh = _query_block(num_queries, NUM_HEADS, BLOCK_Q)
        d = tl.arange(0, HEAD_DIM)
        g = tl.load(grad_out_ptr + qh[:, None] * HEAD_DIM + d[None, :], mask=q_mask[:, None], other=0.0)
        g = g.to(tl.float32)  # [BLOCK_Q, Dh]
        for l in tl.static_range(NUM_LEVELS):
            height, width, start = _level_params(l, h0, w0, s0, h1, w1, s1, h2, w2, s2, h3, w3, s3)
            wf = width * 1.0  # (not .to(): a size of 1 arrives as a compile-time constant)
            hf = height * 1.0
            for p in tl.static_range(NUM_POINTS):
                idx = (qh * NUM_LEVELS + l) * NUM_POINTS + p
                x0, y0, fx, fy, w = _sample_point(loc_ptr, attw_ptr, idx, q_mask, wf, hf)
                grad_w = tl.zeros([BLOCK_Q], dtype=tl.float32)
                grad_fx = tl.zeros([BLOCK_Q], dtype=tl.float32)
                grad_fy = tl.zeros([BLOCK_Q], dtype=tl.float32)
                for corner in tl.static_range(4):
                    dx = corner % 2
                    dy = corner // 2
                    wx, wy, ok, offs = _corner(x0, y0, fx, fy, dx, dy, q_mask, b, h, num_values, start, height, width,
                                               NUM_HEADS, HEAD_DIM)
                    v = tl.load(value_ptr + offs, mask=ok[:, None], other=0.0).to(tl.float32)
                    gv = tl.sum(g * v, axis=1)  # d out / d (sample) . grad_out, per query
                    grad_w += wx * wy * gv
                    # d(wx)/d(fx) = +1 for the right column, -1 for the left; same for y
                    grad_fx += (2 * dx - 1) * wy * gv
                    grad_fy += (2 * dy - 1) * wx * gv
                    tl.atomic_add(grad_value_ptr + offs, (wx * wy * w)[:, None] * g, mask=ok[:, None])
                # xp = x * W - 0.5: d/dx = W (the clamp is inactive wherever a corner is inside the map)
                tl.store(grad_loc_ptr + 2 * idx, (w * grad_fx * wf).to(grad_loc_ptr.dtype.element_ty), mask=q_mask)
                tl.store(grad_loc_ptr + 2 * idx + 1, (w * grad_fy * hf).to(grad_loc_ptr.dtype.element_ty), mask=q_mask)
                tl.store(grad_attw_ptr + idx, grad_w.to(grad_attw_ptr.dtype.element_ty), mask=q_mask)


def _level_args(shapes: Sequence[int]) -> List[int]:
    """[H0, W0, H1, W1, ...] -> [H0, W0, start0, H1, W1, start1, ...] padded to MAX_LEVELS levels."""
    args, start = [], 0
    for i in range(0, len(shapes), 2):
        h, w = int(shapes[i]), int(shapes[i + 1])
        args += [h, w, start]
        start += h * w
    args += [1, 1, 0] * (MAX_LEVELS - len(shapes) // 2)
    return args


def launch_meta(head_dim: int) -> Tuple[int, int]:
    """(BLOCK_Q, num_warps) of both kernels for a head dim (also read by tools/triton_kernel_report.py)."""
    return (32, 4) if head_dim <= 64 else (16, 8)


def _launch(kernel, value: Tensor, shapes: List[int], sampling_locations: Tensor, *tensors: Tensor) -> None:
    """Run ``kernel`` (forward or backward) over query blocks x (batch x heads); ``tensors`` are its pointer
    arguments after the value (contiguous), then come the sizes and the compile-time constants."""
    bs, num_values, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    block_q, num_warps = launch_meta(head_dim)
    grid = (triton.cdiv(num_queries, block_q), bs * num_heads)
    kernel[grid](
        value, *tensors, num_values, num_queries, *_level_args(shapes),
        NUM_HEADS=num_heads, NUM_LEVELS=num_levels, NUM_POINTS=num_points, HEAD_DIM=head_dim,
        BLOCK_Q=block_q, num_warps=num_warps,
    )


@torch.library.custom_op("neo_rtdetr::ms_deform_attn", mutates_args=())
def _msda_op(value: Tensor, shapes: List[int], sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    bs, _, num_heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    value = value.contiguous()
    out = torch.empty((bs, num_queries, num_heads, head_dim), dtype=value.dtype, device=value.device)
    _launch(_msda_fwd_kernel, value, shapes, sampling_locations,
            sampling_locations.contiguous(), attention_weights.contiguous(), out)
    return out.view(bs, num_queries, num_heads * head_dim)


@_msda_op.register_fake
def _(value, shapes, sampling_locations, attention_weights):
    bs, _, num_heads, head_dim = value.shape
    return value.new_empty((bs, sampling_locations.shape[1], num_heads * head_dim))


@torch.library.custom_op("neo_rtdetr::ms_deform_attn_backward", mutates_args=())
def _msda_backward_op(
    grad_output: Tensor, value: Tensor, shapes: List[int], sampling_locations: Tensor, attention_weights: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    value = value.contiguous()
    loc = sampling_locations.contiguous()
    attw = attention_weights.contiguous()
    grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
    grad_loc = torch.empty_like(loc)
    grad_attw = torch.empty_like(attw)
    _launch(_msda_bwd_kernel, value, shapes, sampling_locations,
            loc, attw, grad_output.contiguous(), grad_value, grad_loc, grad_attw)
    return grad_value.to(value.dtype), grad_loc, grad_attw


@_msda_backward_op.register_fake
def _(grad_output, value, shapes, sampling_locations, attention_weights):
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


def _setup_context(ctx, inputs, output):
    value, shapes, sampling_locations, attention_weights = inputs
    ctx.shapes = list(shapes)
    ctx.save_for_backward(value, sampling_locations, attention_weights)


def _backward(ctx, grad_output):
    value, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_loc, grad_attw = _msda_backward_op(
        grad_output, value, ctx.shapes, sampling_locations, attention_weights
    )
    return grad_value, None, grad_loc, grad_attw


_msda_op.register_autograd(_backward, setup_context=_setup_context)


def _unsupported_reason(value: Tensor, shapes: List[Tuple[int, int]], sampling_locations: Tensor) -> Optional[str]:
    if not _HAVE_TRITON:
        return "Triton is not installed"
    if len(shapes) > MAX_LEVELS:
        return f"{len(shapes)} levels (at most {MAX_LEVELS})"
    head_dim = value.shape[-1]
    if head_dim < 2 or head_dim > 256 or head_dim & (head_dim - 1):
        return f"head dim {head_dim} (a power of two in [2, 256] is needed)"
    if not (value.is_floating_point() and sampling_locations.is_floating_point()):
        return "non-float inputs"
    if value.dtype == torch.float64 or sampling_locations.dtype == torch.float64:
        return "float64 inputs (the kernels compute in float32)"
    return None


def ms_deform_attn_triton(
    value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """The Triton kernels, with the reference's arguments, shape checks and result.

    Args:
        value: [B, S, nH, Dh]; spatial_shapes: (H_l, W_l) per level; sampling_locations: [B, Q, nH, L, P, 2]
            normalised (x, y); attention_weights: [B, Q, nH, L, P].

    Returns:
        [B, Q, nH * Dh] in ``value``'s dtype.

    Raises:
        ValueError: on inconsistent shapes or inputs the kernels do not support.
    """
    shapes = spatial_shapes_as_list(spatial_shapes)
    reason = _unsupported_reason(value, shapes, sampling_locations)
    if reason is not None:
        raise ValueError(f"ms_deform_attn_triton: unsupported input: {reason}")
    _check_shapes(value, shapes, sampling_locations, attention_weights)
    return _msda_op(value, [v for hw in shapes for v in hw], sampling_locations, attention_weights)


def _check_shapes(value: Tensor, shapes: List[Tuple[int, int]], loc: Tensor, attw: Tensor) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be [B, S, nH, Dh], got {tuple(value.shape)}")
    bs, num_values, num_heads, _ = value.shape
    if loc.dim() != 6 or loc.shape[-1] != 2 or loc.shape[0] != bs or loc.shape[2] != num_heads:
        raise ValueError(f"sampling_locations must be [B={bs}, Q, nH={num_heads}, L, P, 2], got {tuple(loc.shape)}")
    if tuple(attw.shape) != tuple(loc.shape[:-1]):
        raise ValueError(f"attention_weights must be {tuple(loc.shape[:-1])}, got {tuple(attw.shape)}")
    if len(shapes) != loc.shape[3]:
        raise ValueError(f"{len(shapes)} spatial shapes for {loc.shape[3]} sampling levels")
    if sum(h * w for h, w in shapes) != num_values:
        raise ValueError(f"spatial shapes {shapes} cover {sum(h * w for h, w in shapes)} values, value has {num_values}")


def ms_deform_attn_core(
    value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Multi-scale deformable attention: the Triton kernels on CUDA inputs they support, else the reference.

    Same arguments and result as
    :func:`~neo_rtdetr.modeling.decoder.ms_deform_attn.multi_scale_deformable_attention`. While a graph is captured
    for export (ONNX, ``torch.export``) the reference is used, so exported graphs hold standard operators only.
    Inside ``torch.compile`` the reference is traced as well (inductor generates its sampling kernel): that is the
    compiled path measured and checked on the GPU (docs/performance.md). It was so by accident before: torch 2.11's
    dynamo folds ``torch.compiler.is_exporting()`` to True, so :func:`is_graph_capture` is True under
    ``torch.compile`` there, while later versions read the flag; the choice is now explicit and the same everywhere.
    """
    if _triton_path_reason(value, sampling_locations) is None:
        shapes = spatial_shapes_as_list(spatial_shapes)  # (a tensor is read back once, here)
        if _unsupported_reason(value, shapes, sampling_locations) is None:
            return ms_deform_attn_triton(value, shapes, sampling_locations, attention_weights)
    return multi_scale_deformable_attention(value, spatial_shapes, sampling_locations, attention_weights)


def _triton_path_reason(value: Tensor, sampling_locations: Tensor) -> Optional[str]:
    """Why :func:`ms_deform_attn_core` takes the reference whatever the shapes, or None."""
    if torch.compiler.is_compiling():
        return "traced by torch.compile (the reference is the compiled path)"
    if is_graph_capture():
        return "captured for export"
    if not (value.is_cuda and sampling_locations.is_cuda):
        return "not on CUDA"
    return None
