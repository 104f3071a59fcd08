"""Tests of the PResNet (ResNet-vd) backbone: structure, parameter counts, freezing, detectron2 contract.

The numerical check against Hugging Face's RT-DETR ResNet-vd is in test_hybrid_encoder.py (it compares
backbone features and encoder outputs together).
"""

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from torch import nn

from neo_rtdetr.modeling.backbone.presnet import PResNet
from neo_rtdetr.modeling.layers.avg_pool import AvgPool2x2
from neo_rtdetr.modeling.layers.conv_norm import ConvNormLayer, get_activation
from neo_rtdetr.modeling.layers.frozen_batch_norm import FrozenBatchNorm2d, bn_scale_shift


def count_with_frozen_affine(module: nn.Module) -> int:
    """Parameters plus the weight/bias of frozen BNs (the convention of the doc's parameter table)."""
    n = sum(p.numel() for p in module.parameters())
    n += sum(m.weight.numel() + m.bias.numel() for m in module.modules() if isinstance(m, FrozenBatchNorm2d))
    return n


@torch.no_grad()
def randomize_bn(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)


# official configs: R18/R34 freeze_at -1, freeze_norm False; R50/R101 freeze_at 0, freeze_norm True
@pytest.mark.parametrize(
    "depth,freeze_at,freeze_norm,expected_m",
    [(18, -1, False, 11.20), (34, -1, False, 21.31), (50, 0, True, 23.53), (101, 0, True, 42.52)],
)
def test_parameter_counts(depth, freeze_at, freeze_norm, expected_m):
    with torch.device("meta"):
        bb = PResNet(depth=depth, freeze_at=freeze_at, freeze_norm=freeze_norm)
    assert round(count_with_frozen_affine(bb) / 1e6, 2) == expected_m


def test_r50_parameter_count_equals_hf_exactly():
    # HF r50vd backbone (frozen BN): 23,474,016 parameters, frozen-BN buffers excluded (hf_and_peers.md §1.6)
    with torch.device("meta"):
        bb = PResNet(depth=50, freeze_at=0, freeze_norm=True)
    assert sum(p.numel() for p in bb.parameters()) == 23_474_016
    # with trainable BN the same modules hold 53,248 more parameters (the BN affines)
    with torch.device("meta"):
        bb2 = PResNet(depth=50, freeze_norm=False)
    assert sum(p.numel() for p in bb2.parameters()) == count_with_frozen_affine(bb) == 23_527_264


@pytest.mark.parametrize(
    "depth,channels",
    [(18, (128, 256, 512)), (34, (128, 256, 512)), (50, (512, 1024, 2048)), (101, (512, 1024, 2048))],
)
def test_output_shape_contract(depth, channels):
    with torch.device("meta"):
        bb = PResNet(depth=depth)
    assert isinstance(bb, Backbone)
    assert bb.size_divisibility == 32
    shapes = bb.output_shape()
    assert list(shapes) == ["res3", "res4", "res5"]
    for (name, spec), c, s in zip(shapes.items(), channels, (8, 16, 32)):
        assert isinstance(spec, ShapeSpec)
        assert (spec.channels, spec.stride) == (c, s), name


def test_return_idx_all_stages():
    with torch.device("meta"):
        bb = PResNet(depth=50, return_idx=(0, 1, 2, 3))
    assert {k: (v.channels, v.stride) for k, v in bb.output_shape().items()} == {
        "res2": (256, 4),
        "res3": (512, 8),
        "res4": (1024, 16),
        "res5": (2048, 32),
    }
    with pytest.raises(ValueError):
        PResNet(depth=50, num_stages=3, return_idx=(1, 2, 3))
    with pytest.raises(ValueError):
        PResNet(depth=42)


def test_forward_shapes_and_input_check():
    torch.manual_seed(0)
    bb = PResNet(depth=18, freeze_norm=False, return_idx=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        out = bb(torch.rand(2, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 64, 16, 24),
        "res3": (2, 128, 8, 12),
        "res4": (2, 256, 4, 6),
        "res5": (2, 512, 2, 3),
    }
    with pytest.raises(ValueError):
        bb(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError):
        bb(torch.rand(3, 64, 64))


def test_module_names_match_official_layout():
    with torch.device("meta"):
        r18 = PResNet(depth=18, freeze_norm=False)
        r50 = PResNet(depth=50, freeze_norm=True)
    k18, k50 = set(r18.state_dict()), set(r50.state_dict())
    for k in [
        "conv1.conv1_1.conv.weight",
        "conv1.conv1_2.norm.running_var",
        "conv1.conv1_3.norm.num_batches_tracked",
        "res_layers.0.blocks.0.short.conv.weight",  # stage 0: plain 1x1 projection, even for 64 -> 64
        "res_layers.1.blocks.0.short.conv.conv.weight",  # variant d: pool + conv
        "res_layers.3.blocks.1.branch2b.norm.bias",
    ]:
        assert k in k18, k
    assert "res_layers.0.blocks.1.short.conv.weight" not in k18  # identity shortcut
    assert not any("branch2c" in k for k in k18)
    for k in [
        "conv1.conv1_1.norm.running_mean",
        "res_layers.0.blocks.0.short.conv.weight",
        "res_layers.2.blocks.0.short.conv.norm.weight",
        "res_layers.2.blocks.5.branch2c.conv.weight",
    ]:
        assert k in k50, k
    assert not any("num_batches_tracked" in k for k in k50)  # frozen BN
    # vd shortcut and stride placement
    short = r50.res_layers[1].blocks[0].short
    assert isinstance(short.pool, AvgPool2x2)  # = nn.AvgPool2d(2, 2, 0, ceil_mode=True), see test_avg_pool.py
    assert short.conv.conv.stride == (1, 1)
    assert r50.res_layers[1].blocks[0].branch2a.conv.stride == (1, 1)
    assert r50.res_layers[1].blocks[0].branch2b.conv.stride == (2, 2)
    assert r50.res_layers[0].blocks[0].branch2b.conv.stride == (1, 1)
    assert r50.conv1.conv1_1.conv.stride == (2, 2) and r50.conv1.conv1_1.conv.out_channels == 32
    assert r50.conv1.conv1_3.conv.out_channels == 64
    with torch.device("meta"):
        r101 = PResNet(depth=101, freeze_norm=False)
    assert len(r50.res_layers[2].blocks) == 6 and len(r101.res_layers[2].blocks) == 23


def test_freeze_at_official_semantics():
    with torch.device("meta"):
        bb = PResNet(depth=18, freeze_at=0, freeze_norm=False)
    assert all(not p.requires_grad for p in bb.conv1.parameters())
    assert all(p.requires_grad for p in bb.res_layers.parameters())
    with torch.device("meta"):
        bb = PResNet(depth=18, freeze_at=2, freeze_norm=False)
    assert all(not p.requires_grad for p in bb.conv1.parameters())
    assert all(not p.requires_grad for p in bb.res_layers[:2].parameters())
    assert all(p.requires_grad for p in bb.res_layers[2:].parameters())
    with torch.device("meta"):
        bb = PResNet(depth=18, freeze_at=-1, freeze_norm=False)
    assert all(p.requires_grad for p in bb.parameters())


def test_freeze_norm_replaces_all_bn():
    with torch.device("meta"):
        bb = PResNet(depth=50, freeze_at=-1, freeze_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    n_frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    assert n_frozen == sum(isinstance(m, ConvNormLayer) for m in bb.modules()) == 55
    for m in bb.modules():
        if isinstance(m, FrozenBatchNorm2d):
            assert list(m.parameters()) == []
    # only conv kernels remain trainable
    assert all(p.dim() == 4 and p.requires_grad for p in bb.parameters())


def test_frozen_bn_is_frozen_in_train_mode():
    torch.manual_seed(0)
    bb = PResNet(depth=18, freeze_norm=True)
    randomize_bn(bb)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    bb.train()
    x = torch.rand(1, 3, 32, 32)
    out_train = bb(x)
    bb.eval()
    with torch.no_grad():
        out_eval = bb(x)
    for k, v in bb.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k in out_eval:
        torch.testing.assert_close(out_train[k], out_eval[k], rtol=1e-5, atol=1e-5)


def test_trainable_bn_checkpoint_loads_into_frozen_backbone():
    """A state dict with num_batches_tracked (trainable-BN R18, official r18 layout) loads strictly into a
    frozen-BN backbone, which then computes the same features as the BN model in eval mode."""
    torch.manual_seed(0)
    src = PResNet(depth=18, freeze_norm=False)
    randomize_bn(src)
    src = src.double().eval()
    sd = src.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in sd)
    dst = PResNet(depth=18, freeze_norm=True).double().eval()
    dst.load_state_dict(sd, strict=True)
    x = torch.rand(1, 3, 32, 64, dtype=torch.float64)
    with torch.no_grad():
        a, b = src(x), dst(x)
    for k in a:
        assert a[k].abs().max() > 0.1
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-10)
    # and a frozen checkpoint (no num_batches_tracked) loads back into a frozen backbone strictly
    dst2 = PResNet(depth=18, freeze_norm=True).double()
    dst2.load_state_dict(dst.state_dict(), strict=True)
    assert torch.equal(dst2.conv1.conv1_1.norm.running_var, src.conv1.conv1_1.norm.running_var)


def test_get_activation():
    assert isinstance(get_activation("relu"), nn.ReLU)
    assert isinstance(get_activation("SiLU"), nn.SiLU)
    assert isinstance(get_activation("gelu"), nn.GELU)
    assert isinstance(get_activation(None), nn.Identity)
    with pytest.raises(ValueError):
        get_activation("swishy")
    layer = ConvNormLayer(3, 8, 3, 2, act="silu")
    assert layer.conv.bias is None and layer.conv.padding == (1, 1) and isinstance(layer.norm, nn.BatchNorm2d)
    assert isinstance(layer.act, nn.SiLU)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_frozen_bn_equals_the_formula_with_and_without_gradients(dtype):
    """With gradients and without (F.batch_norm): y = (x - mean) / sqrt(var + eps) * w + b."""
    g = torch.Generator().manual_seed(0)
    bn = FrozenBatchNorm2d(3).to(torch.float64)
    bn.weight.copy_(torch.rand(3, generator=g, dtype=torch.float64) + 0.5)
    bn.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    bn.running_mean.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    bn.running_var.copy_(torch.rand(3, generator=g, dtype=torch.float64) + 0.5)
    x64 = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    shape = (1, 3, 1, 1)
    ref = (x64 - bn.running_mean.view(shape)) / (bn.running_var.view(shape) + bn.eps).sqrt() * bn.weight.view(shape) \
        + bn.bias.view(shape)
    x = x64.to(dtype).requires_grad_()
    y = bn(x)
    assert y.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 3e-2
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)
    y.sum().backward()
    expected_grad = (bn.weight / (bn.running_var + bn.eps).sqrt()).view(shape).expand_as(x64)
    torch.testing.assert_close(x.grad.double(), expected_grad, rtol=tol, atol=tol)
    with torch.no_grad():  # (F.batch_norm wants float32 statistics with a bf16 input)
        bn_eval = bn.to(torch.float32) if dtype == torch.bfloat16 else bn
        torch.testing.assert_close(bn_eval(x64.to(dtype)).double(), ref, rtol=tol, atol=tol)


def test_conv_norm_layer_folds_a_frozen_bn_with_the_same_values_and_gradients():
    from neo_rtdetr.modeling.layers.conv_norm import ConvNormLayer

    g = torch.Generator().manual_seed(1)
    layer = ConvNormLayer(3, 4, 3, 2, act="relu").double()
    layer.norm = FrozenBatchNorm2d(4).double()
    for t in (layer.norm.weight, layer.norm.bias, layer.norm.running_mean):
        t.copy_(torch.randn(4, generator=g, dtype=torch.float64))
    layer.norm.running_var.copy_(torch.rand(4, generator=g, dtype=torch.float64) + 0.5)
    x = torch.randn(2, 3, 9, 7, generator=g, dtype=torch.float64, requires_grad=True)
    folded = layer(x)  # grad enabled: folded path
    reference = torch.relu(layer.norm(layer.conv(x)))  # unfolded: conv, then the frozen BN on the activation
    torch.testing.assert_close(folded, reference, rtol=1e-12, atol=1e-12)
    gx, gw = torch.autograd.grad(folded.sum(), (x, layer.conv.weight))
    rx, rw = torch.autograd.grad(reference.sum(), (x, layer.conv.weight))
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # no-grad path: detectron2's F.batch_norm
        torch.testing.assert_close(layer(x), reference.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("frozen", [False, True])
def test_bn_scale_shift_is_the_inference_batch_norm(frozen):
    g = torch.Generator().manual_seed(2)
    bn = nn.BatchNorm2d(5).double().eval()
    for t in (bn.weight, bn.bias, bn.running_mean):
        t.data.copy_(torch.randn(5, generator=g, dtype=torch.float64))
    bn.running_var.copy_(torch.rand(5, generator=g, dtype=torch.float64) + 0.5)
    if frozen:
        bn = FrozenBatchNorm2d.convert_frozen_batchnorm(bn)
    x = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    scale, shift = bn_scale_shift(bn)
    assert scale.shape == shift.shape == (5,)
    with torch.no_grad():
        folded = x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        torch.testing.assert_close(folded, bn(x), rtol=1e-12, atol=1e-12)


def test_frozen_bns_of_the_backbone_only_run_without_gradients():
    """Every frozen BN of PResNet sits in a ConvNormLayer, which folds it when gradients are enabled: the frozen
    BN's own forward (detectron2's, F.batch_norm without gradients) is never called with gradients."""
    bb = PResNet(depth=18, freeze_at=-1, freeze_norm=True)
    frozen = [m for m in bb.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen
    calls = []
    for m in frozen:
        m.register_forward_hook(lambda mod, inp, out: calls.append(torch.is_grad_enabled()))
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    sum(f.sum() for f in bb(x).values()).backward()
    assert calls == []
    with torch.no_grad():
        bb(x)
    assert len(calls) == len(frozen) and not any(calls)
