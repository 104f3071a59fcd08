"""AvgPool2x2 = nn.AvgPool2d(2, 2, 0, ceil_mode=True): values and gradients, even and odd sizes, both memory formats."""

import pytest
import torch
from torch import nn

from neo_rtdetr.modeling.layers.avg_pool import AvgPool2x2


@pytest.mark.parametrize("size", [(8, 12), (7, 12), (8, 9), (5, 3), (1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_torch_avg_pool_forward_and_backward(size, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 3, (size[0] + 1) // 2, (size[1] + 1) // 2, generator=g, dtype=torch.float64)
    ours_in = x.clone().requires_grad_()
    ref_in = x.clone().requires_grad_()
    ours = AvgPool2x2()(ours_in)
    ref = nn.AvgPool2d(2, 2, 0, ceil_mode=True)(ref_in)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-14)
    ours.backward(grad_out)
    ref.backward(grad_out)
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=0, atol=1e-14)


def _layout(t):
    return t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("size", [(8, 12), (4, 4), (7, 12), (5, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_output_memory_format_matches_torch_avg_pool(size, channels_last):
    """A channels-last input gives a channels-last output (no layout conversion before the next 1x1 conv)."""
    x = torch.randn(2, 8, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours_in = x.clone(memory_format=torch.preserve_format).requires_grad_()
    ref_in = x.clone(memory_format=torch.preserve_format).requires_grad_()
    ours = AvgPool2x2()(ours_in)
    ref = nn.AvgPool2d(2, 2, 0, ceil_mode=True)(ref_in)
    assert _layout(ours) == _layout(ref)
    assert _layout(ours) == (not channels_last, channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grad_out = torch.randn(ref.shape).contiguous(memory_format=fmt)
    ours.backward(grad_out)
    ref.backward(grad_out)
    assert _layout(ours_in.grad) == _layout(ref_in.grad)


def test_rejects_non_4d_input():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        AvgPool2x2()(torch.zeros(3, 4, 4))
