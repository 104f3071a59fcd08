"""Tests of the multi-scale deformable attention core and module (CPU, float64, tiny sizes)."""

import math

import pytest
import torch

from neo_rtdetr.modeling.decoder.ms_deform_attn import MSDeformableAttention, multi_scale_deformable_attention


def naive_msda(value, shapes, locations, weights):
    """Loop implementation: explicit bilinear interpolation (align_corners=False, zeros outside)."""
    value, locations, weights = value.detach(), locations.detach(), weights.detach()
    bs, _, num_heads, head_dim = value.shape
    _, num_query, _, num_levels, num_points, _ = locations.shape
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(bs, num_query, num_heads, head_dim, dtype=value.dtype)
    for b in range(bs):
        for q in range(num_query):
            for m in range(num_heads):
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(num_points):
                        x = float(locations[b, q, m, lvl, p, 0]) * w - 0.5
                        y = float(locations[b, q, m, lvl, p, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        for xx, yy in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                            if 0 <= xx < w and 0 <= yy < h:
                                bil = (1 - abs(x - xx)) * (1 - abs(y - yy))
                                idx = starts[lvl] + yy * w + xx
                                out[b, q, m] += weights[b, q, m, lvl, p] * bil * value[b, idx, m]
    return out.reshape(bs, num_query, num_heads * head_dim)


def _random_inputs(shapes, bs=2, num_query=3, num_heads=2, head_dim=3, num_points=2, lo=-0.2, hi=1.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    num_value = sum(h * w for h, w in shapes)
    value = torch.randn(bs, num_value, num_heads, head_dim, generator=g, dtype=torch.float64)
    loc_shape = (bs, num_query, num_heads, len(shapes), num_points, 2)
    loc = lo + (hi - lo) * torch.rand(loc_shape, generator=g, dtype=torch.float64)
    weights = torch.rand(bs, num_query, num_heads, len(shapes), num_points, generator=g, dtype=torch.float64)
    return value, loc, weights


@pytest.mark.parametrize("as_tensor", [False, True])
def test_core_matches_naive_bilinear(as_tensor):
    shapes = [(3, 4), (2, 3), (1, 2)]
    value, loc, weights = _random_inputs(shapes)
    ss = torch.tensor(shapes, dtype=torch.long) if as_tensor else shapes
    out = multi_scale_deformable_attention(value, ss, loc, weights)
    ref = naive_msda(value, shapes, loc, weights)
    assert out.shape == (2, 3, 2 * 3)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    # some samples fall outside the maps (zero padding is exercised)
    assert bool(((loc < 0) | (loc > 1)).any())


def test_core_head_layout_and_level_order():
    """A value that is nonzero only in head 1 of level 1 must appear only in output channels of head 1."""
    shapes = [(2, 2), (3, 3)]
    value, loc, weights = _random_inputs(shapes, lo=0.1, hi=0.9)
    value.zero_()
    value[:, 4:, 1] = 1.0  # level 1, head 1, all channels
    out = multi_scale_deformable_attention(value, shapes, loc, weights)
    head_dim = value.shape[-1]
    assert torch.count_nonzero(out[..., :head_dim]) == 0
    assert bool((out[..., head_dim:] > 0).all())


def test_core_gradcheck():
    shapes = [(2, 3), (3, 2)]
    value, loc, weights = _random_inputs(shapes, bs=1, num_query=2, num_heads=2, head_dim=2, num_points=2, seed=3)
    value.requires_grad_(True)
    loc.requires_grad_(True)
    weights.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, l, w: multi_scale_deformable_attention(v, shapes, l, w), (value, loc, weights), eps=1e-6, atol=1e-6
    )


def test_core_rejects_bad_shapes():
    shapes = [(2, 3), (3, 2)]
    value, loc, weights = _random_inputs(shapes)
    with pytest.raises(ValueError):
        multi_scale_deformable_attention(value, [(2, 3), (3, 3)], loc, weights)
    with pytest.raises(ValueError):
        multi_scale_deformable_attention(value, shapes, loc, weights[..., :1])


def test_module_official_init():
    m = MSDeformableAttention(embed_dim=32, num_heads=8, num_levels=3, num_points=4)
    bias = m.sampling_offsets.bias.detach().reshape(8, 3, 4, 2)
    assert torch.count_nonzero(m.sampling_offsets.weight) == 0
    # head 0 points along +x, head 2 along +y, head 1 diagonal (normalised by the max |component|)
    torch.testing.assert_close(bias[0, :, :, 0], torch.arange(1.0, 5.0).expand(3, 4))
    torch.testing.assert_close(bias[0, :, :, 1], torch.zeros(3, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[2, 1, :, 1], torch.arange(1.0, 5.0))
    torch.testing.assert_close(bias[1, 2, 3], torch.tensor([4.0, 4.0]))
    torch.testing.assert_close(bias[4, 0, 1], torch.tensor([-2.0, 0.0]), atol=1e-6, rtol=0)
    assert torch.count_nonzero(m.attention_weights.weight) == 0 and torch.count_nonzero(m.attention_weights.bias) == 0
    assert torch.count_nonzero(m.value_proj.bias) == 0 and torch.count_nonzero(m.output_proj.bias) == 0
    assert sorted(k for k, _ in m.named_parameters()) == sorted(
        f"{n}.{p}"
        for n in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
        for p in ("weight", "bias")
    )


def test_module_sampling_formula_and_joint_softmax():
    """The module must sample at ref_xy + off / P * ref_wh * 0.5 with a softmax over levels x points per head."""
    torch.manual_seed(0)
    shapes = [(4, 5), (2, 3)]
    c, nh, nl, npt = 16, 4, 2, 3
    m = MSDeformableAttention(embed_dim=c, num_heads=nh, num_levels=nl, num_points=npt).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    bs, nq = 2, 5
    query = torch.randn(bs, nq, c, dtype=torch.float64)
    ref = torch.cat([0.2 + 0.6 * torch.rand(bs, nq, 1, 2), 0.1 + 0.3 * torch.rand(bs, nq, 1, 2)], -1).double()
    value = torch.randn(bs, sum(h * w for h, w in shapes), c, dtype=torch.float64)

    captured = {}

    def recording_core(v, ss, loc, w):
        captured.update(value=v, loc=loc, w=w)
        return naive_msda(v, ss, loc, w)

    out_default = m(query, ref, value, shapes)
    m.ms_deformable_attn_core = recording_core
    out_naive = m(query, ref, value, shapes)
    torch.testing.assert_close(out_default, out_naive, rtol=0, atol=1e-12)

    off = (query @ m.sampling_offsets.weight.T + m.sampling_offsets.bias).reshape(bs, nq, nh, nl, npt, 2)
    expected_loc = ref[:, :, None, :, None, :2] + off / npt * ref[:, :, None, :, None, 2:] * 0.5
    logits = (query @ m.attention_weights.weight.T + m.attention_weights.bias).reshape(bs, nq, nh, nl * npt)
    expected_w = logits.softmax(-1).reshape(bs, nq, nh, nl, npt)
    torch.testing.assert_close(captured["loc"], expected_loc, rtol=0, atol=1e-12)
    torch.testing.assert_close(captured["w"], expected_w, rtol=0, atol=1e-12)
    torch.testing.assert_close(captured["w"].sum((-1, -2)), torch.ones(bs, nq, nh, dtype=torch.float64))
    expected_value = (value @ m.value_proj.weight.T + m.value_proj.bias).reshape(bs, -1, nh, c // nh)
    torch.testing.assert_close(captured["value"], expected_value, rtol=0, atol=1e-12)
    assert out_default.shape == (bs, nq, c)


def test_module_value_mask_zeroes_tokens():
    torch.manual_seed(1)
    shapes = [(3, 3), (2, 2)]
    m = MSDeformableAttention(embed_dim=8, num_heads=2, num_levels=2, num_points=2).double()
    query = torch.randn(1, 4, 8, dtype=torch.float64)
    ref = torch.tensor([[0.5, 0.5, 0.4, 0.4]], dtype=torch.float64).expand(1, 4, 1, 4)
    value = torch.randn(1, 13, 8, dtype=torch.float64)
    all_masked = m(query, ref, value, shapes, value_mask=torch.zeros(1, 13, dtype=torch.bool))
    # with every value token masked, only the (zero-initialised) biases remain
    torch.testing.assert_close(all_masked, m.output_proj.bias.expand(1, 4, 8))
    assert not torch.allclose(m(query, ref, value, shapes), all_masked)
