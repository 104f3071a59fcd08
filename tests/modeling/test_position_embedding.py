"""Tests of the AIFI 2D sin-cos position embedding (row-major, official parity on square maps)."""

import pytest
import torch

from neo_rtdetr.modeling.encoder.position_embedding import build_2d_sincos_position_embedding


def official_2d_sincos(w, h, embed_dim=256, temperature=10000.0):
    """The official rtdetr_pytorch formula (HybridEncoder.build_2d_sincos_position_embedding), as reference."""
    grid_w = torch.arange(int(w), dtype=torch.float32)
    grid_h = torch.arange(int(h), dtype=torch.float32)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
    pos_dim = embed_dim // 4
    omega = torch.arange(pos_dim, dtype=torch.float32) / pos_dim
    omega = 1.0 / (temperature**omega)
    out_w = grid_w.flatten()[..., None] @ omega[None]
    out_h = grid_h.flatten()[..., None] @ omega[None]
    return torch.concat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None, :, :]


@pytest.mark.parametrize("size", [1, 7, 10, 20, 25])
@pytest.mark.parametrize("dim,temperature", [(256, 10000), (384, 10000.0), (64, 100)])
def test_square_bit_identical_to_official(size, dim, temperature):
    ours = build_2d_sincos_position_embedding(size, size, dim, temperature, device="cpu", dtype=torch.float32)
    ref = official_2d_sincos(size, size, dim, temperature)
    assert ours.shape == (1, size * size, dim)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, ref)


def test_square_float64_equals_official_promoted():
    # The official code builds float32 and adds it to the (float64) tokens: same values as ours.
    ours = build_2d_sincos_position_embedding(10, 10, 256, 10000, device="cpu", dtype=torch.float64)
    assert ours.dtype == torch.float64
    assert torch.equal(ours, official_2d_sincos(10, 10, 256, 10000).double())


def test_non_square_is_row_major():
    h, w, dim, t = 3, 5, 32, 10000.0
    pos = build_2d_sincos_position_embedding(h, w, dim, t, device="cpu", dtype=torch.float64)
    assert pos.shape == (1, h * w, dim)
    q = dim // 4
    omega = 1.0 / (t ** (torch.arange(q, dtype=torch.float64) / q))
    for r, c in [(0, 0), (0, 4), (1, 0), (2, 3), (2, 4)]:
        tok = pos[0, r * w + c]
        y, x = float(r), float(c)
        expected = torch.cat([(y * omega).sin(), (y * omega).cos(), (x * omega).sin(), (x * omega).cos()])
        torch.testing.assert_close(tok, expected, atol=1e-6, rtol=0)


def test_non_square_matches_x_flatten_order():
    # Embed the (row, col) of every token of a real [1, 2, H, W] "coordinate map" flattened like the encoder does.
    h, w, dim = 4, 6, 16
    pos = build_2d_sincos_position_embedding(h, w, dim, 10000, device="cpu", dtype=torch.float64)
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"))[None].double()  # [1,2,H,W]
    tokens = coords.flatten(2).permute(0, 2, 1)[0]  # [H*W, 2] = (y, x) per token
    q = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(q, dtype=torch.float64) / q))
    # sin(y * omega_0) = sin(0) = 0 is uninformative; omega_0 = 1 -> cos(y) identifies y for small ints
    torch.testing.assert_close(pos[0, :, q], torch.cos(tokens[:, 0] * omega[0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(pos[0, :, 3 * q], torch.cos(tokens[:, 1] * omega[0]), atol=1e-6, rtol=0)


def test_non_square_differs_from_official():
    # The official W-major grid scrambles non-square maps: token (0, 2) of a 2x3 map gets (y, x) = (1, 0),
    # which is what our (correct) embedding gives to token (1, 0).
    ours = build_2d_sincos_position_embedding(2, 3, 16, 10000, device="cpu")
    ref = official_2d_sincos(3, 2, 16, 10000)  # official call signature is (w, h)
    assert not torch.allclose(ours, ref)
    assert torch.equal(ref[0, 0 * 3 + 2], ours[0, 1 * 3 + 0])
    assert not torch.allclose(ref[0, 0 * 3 + 2], ours[0, 0 * 3 + 2])


def test_matches_hf_v5_row_major():
    hf = pytest.importorskip("transformers.models.rt_detr.modeling_rt_detr")
    ref = hf.build_2d_sinusoidal_position_embedding(6, 9, 256, 10000.0, dtype=torch.float64)  # HF: float64 math
    ours = build_2d_sincos_position_embedding(6, 9, 256, 10000, device="cpu", dtype=torch.float64)
    torch.testing.assert_close(ours[0], ref, atol=2e-6, rtol=0)


def test_cache_and_dtype():
    a = build_2d_sincos_position_embedding(4, 8, 32, 10000, device="cpu", dtype=torch.float32)
    b = build_2d_sincos_position_embedding(4, 8, 32, 10000, device=torch.device("cpu"), dtype=torch.float32)
    c = build_2d_sincos_position_embedding(4, 8, 32, 10000, device="cpu", dtype=torch.float64)
    d = build_2d_sincos_position_embedding(8, 4, 32, 10000, device="cpu", dtype=torch.float32)
    assert a is b
    assert c.dtype == torch.float64 and c is not a
    assert d.shape == a.shape and not torch.equal(a, d)
    with pytest.raises(ValueError):
        build_2d_sincos_position_embedding(4, 4, 30, 10000, device="cpu")


def test_built_in_inference_mode_is_usable_for_autograd():
    with torch.inference_mode():
        pos = build_2d_sincos_position_embedding(3, 7, 8, 123.0, device="cpu", dtype=torch.float32)
    assert not pos.is_inference()
    x = torch.randn(1, 21, 8, requires_grad=True)
    (x * build_2d_sincos_position_embedding(3, 7, 8, 123.0, device="cpu")).sum().backward()  # saves pos for backward
    assert torch.equal(x.grad, pos.expand_as(x))


def test_under_torch_compile_the_embedding_is_built_in_the_graph_with_the_same_values():
    """torch.compile does not trace the cache: the constant is computed inside the compiled graph, on the
    requested device (a host constant would be copied every call and breaks CUDA-graph capture)."""
    import torch

    from neo_rtdetr.modeling.encoder.position_embedding import build_2d_sincos_position_embedding as pe

    fn = torch.compile(lambda: pe(3, 5, 16, device="cpu"), backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(), pe(3, 5, 16, device="cpu"), rtol=0, atol=0)
