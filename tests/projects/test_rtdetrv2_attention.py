"""RT-DETRv2 cross-attention: per-level points, discrete sampling, the v1 kernel contract (CPU, float64, tiny sizes)."""

import math

import pytest
import torch

from neo_rtdetr.modeling.decoder import ms_deform_attn
from neo_rtdetr.modeling.decoder.ms_deform_attn import MSDeformableAttention
from projects.RTDETRv2.modeling import MSDeformableAttentionV2, discrete_deformable_attention, points_per_level

from ..modeling.test_ms_deform_attn import naive_msda

SHAPES = [(3, 5), (2, 3), (1, 2)]  # non-square maps, W > H


def _attn(points, method="default", seed=0, embed_dim=8, heads=2):
    torch.manual_seed(seed)
    attn = MSDeformableAttentionV2(embed_dim, heads, len(SHAPES), points, method=method).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random projections, offsets of a few cells (init values would hide layout errors)
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.8 if p.dim() == 1 else 0.5))
    return attn


def _inputs(bs=2, num_query=3, embed_dim=8, seed=0, ref_levels=1):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(bs, num_query, embed_dim, generator=g, dtype=torch.float64)
    value = torch.randn(bs, sum(h * w for h, w in SHAPES), embed_dim, generator=g, dtype=torch.float64)
    cxcy = torch.rand(bs, num_query, ref_levels, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1
    wh = torch.rand(bs, num_query, ref_levels, 2, generator=g, dtype=torch.float64) * 0.5 + 0.2
    return query, torch.cat([cxcy, wh], -1), value


def _reference_locations(attn, query, ref, shapes):
    """Sampling locations written out per (level, point): ref_xy + offset * (1 / P_l) * ref_wh * 0.5 (boxes; 1 / P_l
    is the official float32 buffer value) or ref_xy + offset / (W_l, H_l) (points); per level [B, Q, nH, P_l, 2]."""
    bs, nq, _ = query.shape
    nh = attn.num_heads
    offsets = attn.sampling_offsets(query).reshape(bs, nq, nh, -1, 2)
    out, start = [], 0
    for lvl, n in enumerate(attn.num_points):
        off = offsets[:, :, :, start:start + n]
        r = ref[:, :, lvl if ref.shape[2] > 1 else 0][:, :, None, None, :]
        if ref.shape[-1] == 4:
            inv_n = float(torch.tensor(1.0 / n, dtype=torch.float32))
            out.append(r[..., :2] + off * inv_n * r[..., 2:] * 0.5)
        else:
            h, w = shapes[lvl]
            out.append(r + off / torch.tensor([w, h], dtype=off.dtype))
        start += n
    return out


def _naive_ragged(attn, query, ref, value, shapes):
    """Per-level bilinear sampling with the (v1-tested) loop reference, then summed over the levels."""
    bs, nq, _ = query.shape
    nh, dh = attn.num_heads, attn.head_dim
    v = attn.value_proj(value).reshape(bs, -1, nh, dh)
    weights = torch.softmax(attn.attention_weights(query).reshape(bs, nq, nh, -1), -1)
    locs = _reference_locations(attn, query, ref, shapes)
    out, start, vstart = 0, 0, 0
    for lvl, ((h, w), n) in enumerate(zip(shapes, attn.num_points)):
        w_l = weights[..., start:start + n].unsqueeze(3)
        out = out + naive_msda(v[:, vstart:vstart + h * w], [(h, w)], locs[lvl].unsqueeze(3), w_l)
        start += n
        vstart += h * w
    return attn.output_proj(out)


@pytest.mark.parametrize("ref_levels,ref_dim", [(1, 4), (3, 4), (3, 2)])
def test_per_level_points_match_a_loop_reference(ref_levels, ref_dim):
    attn = _attn([1, 3, 2])
    assert attn.sampling_offsets.out_features == 2 * 2 * 6 and attn.attention_weights.out_features == 2 * 6
    scale = torch.tensor([1, 1 / 3, 1 / 3, 1 / 3, 0.5, 0.5], dtype=torch.float32)
    torch.testing.assert_close(attn.num_points_scale.float(), scale, rtol=0, atol=0)
    query, ref, value = _inputs(ref_levels=ref_levels)
    ref = ref[..., :ref_dim]
    with torch.no_grad():
        out = attn(query, ref, value, SHAPES)
        expected = _naive_ragged(attn, query, ref, value, SHAPES)
    assert out.shape == (2, 3, 8)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    # the offsets reach outside the maps (zero padding exercised) and differ per level
    locs = torch.cat([loc.flatten() for loc in _reference_locations(attn, query, ref, SHAPES)])
    assert bool(((locs < 0) | (locs > 1)).any())


def test_equal_points_are_the_v1_module_and_call_its_kernel_with_the_v1_layout(monkeypatch):
    """[4, 4, 4] computes exactly what the v1 module computes with the same weights, through the same swappable
    core, called once with locations [B, Q, nH, L, P, 2]; ragged points call it once per level (L = 1)."""
    v2 = _attn([4, 4, 4])
    v1 = MSDeformableAttention(8, 2, 3, 4).double()
    v1.load_state_dict({k: v for k, v in v2.state_dict().items() if k != "num_points_scale"}, strict=True)
    query, ref, value = _inputs()
    calls = []

    def spy(value_, shapes, locations, weights):
        calls.append((tuple(locations.shape), tuple(weights.shape), len(shapes)))
        return ms_deform_attn.multi_scale_deformable_attention(value_, shapes, locations, weights)

    v2.ms_deformable_attn_core = spy
    with torch.no_grad():
        out = v2(query, ref, value, SHAPES)
        torch.testing.assert_close(out, v1(query, ref, value, SHAPES), rtol=0, atol=1e-12)
    assert calls == [((2, 3, 2, 3, 4, 2), (2, 3, 2, 3, 4), 3)]

    ragged = _attn([2, 3, 1])
    ragged.ms_deformable_attn_core = spy
    calls.clear()
    with torch.no_grad():
        ragged(query, ref, value, SHAPES)
    assert calls == [
        ((2, 3, 2, 1, 2, 2), (2, 3, 2, 1, 2), 1),
        ((2, 3, 2, 1, 3, 2), (2, 3, 2, 1, 3), 1),
        ((2, 3, 2, 1, 1, 2), (2, 3, 2, 1, 1), 1),
    ]


def test_official_v2_initialisation_scales_the_offsets_per_level():
    attn = MSDeformableAttentionV2(16, 4, 3, [2, 1, 3])
    bias = attn.sampling_offsets.bias.detach().reshape(4, 6, 2)
    # head h points at angle 2*pi*h/4, normalised to max |.| = 1, times the point index within its level
    direction = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    index = torch.tensor([1, 2, 1, 1, 2, 3], dtype=torch.float32)
    torch.testing.assert_close(bias, direction[:, None, :] * index[None, :, None], atol=1e-6, rtol=0)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    # equal points: identical to the v1 initialisation
    v1 = MSDeformableAttention(16, 4, 3, 4)
    v2 = MSDeformableAttentionV2(16, 4, 3, 4)
    torch.testing.assert_close(v2.sampling_offsets.bias, v1.sampling_offsets.bias, rtol=0, atol=0)


def _naive_discrete(value, shapes, locations, weights, points, official_clamp=False):
    """Nearest cell by explicit rounding: x = clamp(floor(loc_x * W + 0.5), 0, W-1), y likewise with H
    (``official_clamp``: x clamped to H-1, the official code's bug)."""
    bs, _, nh, dh = value.shape
    nq = locations.shape[1]
    out = torch.zeros(bs, nq, nh, dh, dtype=value.dtype)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    for b in range(bs):
        for q in range(nq):
            for m in range(nh):
                p_global = 0
                for lvl, ((h, w), n) in enumerate(zip(shapes, points)):
                    for _ in range(n):
                        x_max = h - 1 if official_clamp else w - 1
                        x = min(max(math.floor(float(locations[b, q, m, p_global, 0]) * w + 0.5), 0), x_max)
                        y = min(max(math.floor(float(locations[b, q, m, p_global, 1]) * h + 0.5), 0), h - 1)
                        out[b, q, m] += weights[b, q, m, p_global] * value[b, starts[lvl] + y * w + x, m]
                        p_global += 1
    return out.reshape(bs, nq, nh * dh)


def test_discrete_sampling_on_non_square_maps_clamps_x_to_the_width():
    shapes = [(2, 6), (3, 4)]  # W > H on level 0: the official clamp of x to H - 1 would read column 1, not 5
    points = [3, 2]
    g = torch.Generator().manual_seed(0)
    value = torch.randn(2, 2 * 6 + 3 * 4, 2, 3, generator=g, dtype=torch.float64)
    loc = torch.rand(2, 4, 2, 5, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3  # inside and outside the maps
    loc[0, 0, 0, 0] = torch.tensor([0.99, 0.1], dtype=torch.float64)  # right edge of level 0: x -> 5 (W-1), not 1
    weights = torch.rand(2, 4, 2, 5, generator=g, dtype=torch.float64)
    out = discrete_deformable_attention(value, shapes, loc, weights, points)
    torch.testing.assert_close(out, _naive_discrete(value, shapes, loc, weights, points), rtol=0, atol=1e-12)
    # the official clamp (both axes to H - 1) reads other cells on this input
    official = _naive_discrete(value, shapes, loc, weights, points, official_clamp=True)
    assert (out - official).abs().max() > 1e-3


def test_discrete_module_freezes_offsets_and_still_trains_the_rest():
    attn = _attn([2, 3, 1], method="discrete")
    assert not attn.sampling_offsets.weight.requires_grad and not attn.sampling_offsets.bias.requires_grad
    query, ref, value = _inputs()
    query.requires_grad_(True)
    attn(query, ref, value, SHAPES).sum().backward()
    for name in ("attention_weights", "value_proj", "output_proj"):
        assert getattr(attn, name).weight.grad is not None and getattr(attn, name).weight.grad.abs().sum() > 0, name
    assert attn.sampling_offsets.weight.grad is None
    # and it is the discrete computation of the module's own locations
    with torch.no_grad():
        bs, nq, _ = query.shape
        locs = torch.cat(_reference_locations(attn, query, ref, SHAPES), dim=3)
        weights = torch.softmax(attn.attention_weights(query).reshape(bs, nq, 2, -1), -1)
        v = attn.value_proj(value).reshape(bs, -1, 2, 4)
        expected = attn.output_proj(_naive_discrete(v, SHAPES, locs, weights, attn.num_points))
        torch.testing.assert_close(attn(query, ref, value, SHAPES), expected, rtol=0, atol=1e-10)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="one count >= 1 per level"):
        points_per_level([4, 4], 3)
    with pytest.raises(ValueError, match="one count >= 1 per level"):
        points_per_level([4, 0, 4], 3)
    with pytest.raises(ValueError, match="method must be one of"):
        MSDeformableAttentionV2(8, 2, 3, 4, method="nearest")
    attn = _attn([1, 2, 3])
    query, ref, value = _inputs()
    with pytest.raises(ValueError, match="reference_points must be"):
        attn(query, ref[:, :, :, :3], value, SHAPES)
    with pytest.raises(ValueError, match="spatial shapes"):
        attn(query, ref, value[:, :-1], SHAPES)
    with pytest.raises(ValueError, match="3 levels"):
        attn(query, ref, value, SHAPES[:2])
    with pytest.raises(ValueError, match="sampling_locations must be"):
        discrete_deformable_attention(
            value.reshape(2, -1, 2, 4), SHAPES, torch.zeros(2, 3, 2, 5, 2), torch.zeros(2, 3, 2, 5), [1, 2, 3]
        )


def test_default_core_is_the_library_dispatcher():
    """v2 uses the library's default core (Triton kernels on CUDA), like the v1 module."""
    from neo_rtdetr.modeling.decoder.ms_deform_attn_triton import ms_deform_attn_core

    assert _attn([4, 4, 4]).ms_deformable_attn_core is ms_deform_attn_core
    assert MSDeformableAttention(8, 2, 3, 4).ms_deformable_attn_core is ms_deform_attn_core
