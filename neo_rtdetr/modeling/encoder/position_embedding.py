"""2D sine-cosine position embedding of RT-DETR's AIFI encoder layer (row-major, any H x W).

The official ``HybridEncoder.build_2d_sincos_position_embedding(w, h)`` builds its grid with
``meshgrid(arange(w), arange(h), indexing='ij')`` flattened, i.e. column-major, while the tokens
are the row-major ``flatten(2)`` of a ``[B, C, H, W]`` map. On square maps this is a consistent
transpose: the first half of the channels encodes the row (y), the second half the column (x).
On non-square maps the official positions are scrambled (rtdetr_official.md §14.1).

This implementation is row-major and correct for any H x W, and bit-identical to the official
one on square maps: same float32 arithmetic (computed in float32 as the official code does, then
cast to the requested dtype), same channel layout.
"""

import functools
from typing import Union

import torch
from torch import Tensor

from ..layers.tracing import is_graph_capture

__all__ = ["build_2d_sincos_position_embedding"]


def _compute(height: int, width: int, dim: int, temperature: float, device=None) -> Tensor:
    """The float32 embedding ``[1, H*W, dim]`` (no caching), computed on ``device`` (default CPU)."""
    pos_dim = dim // 4
    omega = torch.arange(pos_dim, dtype=torch.float32, device=device) / pos_dim
    omega = 1.0 / (temperature**omega)  # [dim/4]
    grid_y, grid_x = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )  # [H, W] each; token t = r * W + c has y = r, x = c
    out_y = grid_y.flatten()[:, None] * omega[None]  # [H*W, dim/4]
    out_x = grid_x.flatten()[:, None] * omega[None]
    return torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)[None]


@functools.lru_cache(maxsize=64)
def _cached(height: int, width: int, dim: int, temperature: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    # Built outside inference mode / grad mode so that the cached tensor is an ordinary constant
    # usable both in training graphs and under torch.inference_mode().
    with torch.inference_mode(False), torch.no_grad():
        return _compute(height, width, dim, temperature).to(device=device, dtype=dtype)


def build_2d_sincos_position_embedding(
    height: int,
    width: int,
    dim: int = 256,
    temperature: float = 10000.0,
    *,
    device: Union[torch.device, str, None] = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Row-major 2D sin-cos position embedding for an ``H x W`` token grid.

    Token ``t = r * W + c`` (the order of ``x.flatten(2)`` for ``x [B, C, H, W]``) gets
    ``[sin(r*w), cos(r*w), sin(c*w), cos(c*w)]`` with ``w = 1 / T**(arange(dim/4) / (dim/4))``.

    The result is cached per ``(H, W, dim, T, device, dtype)``: do not modify it in place. While a graph is
    captured (ONNX export, ``torch.export``, ``torch.jit.trace``) it is built in the graph and not cached.

    Args:
        height: H, number of rows.
        width: W, number of columns.
        dim: embedding size, a multiple of 4.
        temperature: T.
        device: device of the result (default CPU).
        dtype: dtype of the result (values are computed in float32, as in the official code).

    Returns:
        ``[1, H*W, dim]``.
    """
    if dim % 4 != 0:
        raise ValueError(f"embedding dim must be divisible by 4 for a 2D sin-cos embedding, got {dim}")
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    device = torch.device("cpu") if device is None else torch.device(device)
    if torch.compiler.is_compiling():
        # torch.compile does not trace through the cache: build the constant on the device inside the compiled
        # graph (a host tensor would be copied to the device at every call, and cannot be inside a CUDA graph)
        return _compute(int(height), int(width), int(dim), float(temperature), device).to(dtype=dtype)
    if is_graph_capture():
        # ONNX / torch.export tracing: build it in the graph (the exporters fold it into a constant) and keep
        # traced or fake tensors out of the cache; same computation, same values
        return _compute(int(height), int(width), int(dim), float(temperature)).to(device=device, dtype=dtype)
    return _cached(int(height), int(width), int(dim), float(temperature), device, dtype)
