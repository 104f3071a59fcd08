"""Tests of the HybridEncoder (AIFI + CCFM), RepVGG fusion, and backbone+encoder vs Hugging Face RT-DETR.

The HF oracle: transformers' RTDetrModel built offline with random weights (HF equals the official
rtdetr_pytorch up to ~1e-7 in float64, hf_and_peers.md §0), all backbone/encoder parameters and BN
statistics randomised, converted with convert_hf_rtdetr_state_dict and loaded strictly into ours.
"""

import pytest
import torch
from torch import nn

from neo_rtdetr.checkpoint.hf_rtdetr_keys import convert_hf_rtdetr_state_dict
from neo_rtdetr.modeling.backbone.presnet import PResNet
from neo_rtdetr.modeling.encoder import hybrid_encoder as hybrid_encoder_mod
from neo_rtdetr.modeling.encoder.csp_rep import CSPRepLayer, RepVggBlock
from neo_rtdetr.modeling.encoder.hybrid_encoder import HybridEncoder
from neo_rtdetr.modeling.layers.frozen_batch_norm import FrozenBatchNorm2d

from .hf_oracle import randomize

TOL = 1e-5


def count_with_frozen_affine(module: nn.Module) -> int:
    n = sum(p.numel() for p in module.parameters())
    n += sum(m.weight.numel() + m.bias.numel() for m in module.modules() if isinstance(m, FrozenBatchNorm2d))
    return n


# ------------------------------------------------------------------------------------------------
# parameter counts and names


@pytest.mark.parametrize(
    "kwargs,expected_m",
    [
        (dict(in_channels=(128, 256, 512), expansion=0.5), 4.97),  # R18 / R34
        (dict(expansion=0.5), 5.65),  # R50-m
        (dict(), 11.95),  # R50
        (dict(hidden_dim=384, dim_feedforward=2048), 26.58),  # R101
    ],
)
def test_parameter_counts(kwargs, expected_m):
    with torch.device("meta"):
        enc = HybridEncoder(**kwargs)
    assert round(count_with_frozen_affine(enc) / 1e6, 2) == expected_m


def test_module_names_match_official_layout():
    with torch.device("meta"):
        keys = set(HybridEncoder(expansion=0.5).state_dict())
        keys_e1 = set(HybridEncoder().state_dict())
    for k in [
        "input_proj.0.0.weight",
        "input_proj.2.1.running_mean",
        "encoder.0.layers.0.self_attn.in_proj_weight",
        "encoder.0.layers.0.self_attn.out_proj.bias",
        "encoder.0.layers.0.linear1.weight",
        "encoder.0.layers.0.norm2.bias",
        "lateral_convs.1.conv.weight",
        "fpn_blocks.0.conv1.norm.weight",
        "fpn_blocks.1.bottlenecks.2.conv1.conv.weight",
        "fpn_blocks.1.bottlenecks.2.conv2.norm.running_var",
        "fpn_blocks.0.conv3.conv.weight",
        "downsample_convs.0.conv.weight",
        "pan_blocks.1.conv2.norm.bias",
    ]:
        assert k in keys, k
    assert not any(k.startswith("encoder.1.") or ".layers.1." in k for k in keys)
    assert not any(".conv3." in k for k in keys_e1)  # expansion 1: conv3 is Identity
    assert not any("pos_embed" in k for k in keys)  # nothing size-dependent is stored


# ------------------------------------------------------------------------------------------------
# shapes, input checks, any eval size


def small_encoder(**kw):
    args = dict(in_channels=(16, 32, 64), hidden_dim=32, nhead=4, dim_feedforward=64, expansion=0.5)
    args.update(kw)
    return HybridEncoder(**args)


def pyramid(b, h5, w5, channels=(16, 32, 64), dtype=torch.float32):
    return [torch.randn(b, c, h5 * 2 ** (2 - l), w5 * 2 ** (2 - l), dtype=dtype) for l, c in enumerate(channels)]


@pytest.mark.parametrize("h5,w5", [(2, 2), (3, 5), (4, 3)])
def test_output_shapes_any_size_in_eval(h5, w5):
    torch.manual_seed(0)
    enc = small_encoder().eval()
    with torch.no_grad():
        outs = enc(pyramid(2, h5, w5))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 4 * h5, 4 * w5), (2, 32, 2 * h5, 2 * w5), (2, 32, h5, w5)]
    assert enc.out_channels == [32, 32, 32] and enc.out_strides == [8, 16, 32]


def test_train_mode_backward():
    torch.manual_seed(0)
    enc = small_encoder().train()
    outs = enc(pyramid(2, 2, 3))
    sum(o.square().mean() for o in outs).backward()
    assert enc.encoder[0].layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0
    assert enc.input_proj[0][0].weight.grad.abs().sum() > 0


def test_input_checks():
    enc = small_encoder().eval()
    feats = pyramid(1, 2, 2)
    with pytest.raises(ValueError, match="3 feature maps"):
        enc(feats[:2])
    with pytest.raises(ValueError, match=r"\[B, 32, H, W\]"):
        enc([feats[0], torch.randn(1, 31, 4, 4), feats[2]])
    # what PResNet gives for a 100x100 image: ceil-divided 13, 7, 4 -> not a x2 pyramid
    bad = [torch.randn(1, c, s, s) for c, s in zip((16, 32, 64), (13, 7, 4))]
    with pytest.raises(ValueError, match="multiples of 32"):
        enc(bad)


def test_backbone_non_multiple_of_32_gives_clear_error():
    torch.manual_seed(0)
    bb = PResNet(depth=18, freeze_norm=False).eval()
    enc = HybridEncoder(in_channels=(128, 256, 512), hidden_dim=32, nhead=4, dim_feedforward=64, expansion=0.5).eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match="multiples of 32"):
            enc(list(bb(torch.rand(1, 3, 100, 100)).values()))
        outs = enc(list(bb(torch.rand(1, 3, 96, 128)).values()))
    assert [o.shape[-2:] for o in outs] == [(12, 16), (6, 8), (3, 4)]


def test_constructor_checks_and_no_aifi():
    with pytest.raises(ValueError):
        HybridEncoder(feat_strides=(8, 16, 64))
    with pytest.raises(ValueError):
        HybridEncoder(use_encoder_idx=(3,))
    enc = small_encoder(num_encoder_layers=0).eval()
    with torch.no_grad():
        outs = enc(pyramid(1, 2, 2))
    assert len(outs) == 3


# ------------------------------------------------------------------------------------------------
# RepVGG fusion


def test_repvgg_fusion_equals_training_form():
    torch.manual_seed(0)
    blk = RepVggBlock(8, 8, act="silu")
    randomize(blk, seed=3)
    blk = blk.double().eval()
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = blk(x)
        blk.convert_to_deploy()
        out = blk(x)
    assert blk.deployed and not hasattr(blk, "conv1") and blk.conv.bias is not None and blk.conv.kernel_size == (3, 3)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    blk.convert_to_deploy()  # idempotent
    with torch.no_grad():
        torch.testing.assert_close(blk(x), ref, rtol=0, atol=1e-10)


def test_csp_rep_layer_structure():
    layer = CSPRepLayer(64, 32, num_blocks=3, expansion=0.5)
    assert layer.conv1.conv.out_channels == 16 and len(layer.bottlenecks) == 3
    assert layer.conv3.conv.in_channels == 16 and layer.conv3.conv.out_channels == 32
    assert isinstance(CSPRepLayer(64, 32, expansion=1.0).conv3, nn.Identity)


def test_encoder_convert_to_deploy_same_output():
    torch.manual_seed(0)
    enc = small_encoder()
    randomize(enc, seed=1)
    enc = enc.double().eval()
    feats = pyramid(1, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        ref = enc([f.clone() for f in feats])
        enc.convert_to_deploy()
        out = enc(feats)
    blocks = [m for m in enc.modules() if isinstance(m, RepVggBlock)]
    assert len(blocks) == 12 and all(b.deployed for b in blocks)
    assert not any(".bottlenecks.0.conv1." in k for k in enc.state_dict())
    for a, b in zip(out, ref):
        assert b.abs().max() > 0.1
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# oracle: Hugging Face transformers RT-DETR (backbone + encoder_input_proj + encoder)


def _build_pair(variant: str):
    transformers = pytest.importorskip("transformers")
    from transformers.models.rt_detr.configuration_rt_detr_resnet import RTDetrResNetConfig

    if variant == "r18vd":  # official r18: trainable BN (freeze_norm False)
        cfg = transformers.RTDetrConfig(
            num_labels=80,
            backbone_config=RTDetrResNetConfig(
                hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic", out_indices=[2, 3, 4]
            ),
            encoder_in_channels=[128, 256, 512],
            hidden_expansion=0.5,
            decoder_layers=1,  # unused here; keeps the build cheap
            freeze_backbone_batch_norms=False,
        )
        with torch.device("meta"):  # every tensor is assigned from the HF state dict below
            ours_bb = PResNet(depth=18, freeze_at=-1, freeze_norm=False)
            ours_enc = HybridEncoder(in_channels=(128, 256, 512), expansion=0.5)
    else:  # r50vd: RTDetrConfig(num_labels=80) defaults, frozen BN
        cfg = transformers.RTDetrConfig(num_labels=80, decoder_layers=1)
        with torch.device("meta"):
            ours_bb = PResNet(depth=50, freeze_at=0, freeze_norm=True)
            ours_enc = HybridEncoder()
    cfg._attn_implementation = "eager"  # float64 + SDPA pitfalls (hf_and_peers.md §1.7)
    torch.manual_seed(0)
    hf = transformers.RTDetrModel(cfg)
    hf.config._attn_implementation = "eager"
    for sub in (hf.backbone, hf.encoder_input_proj, hf.encoder):
        randomize(sub, seed=7)
    hf = hf.double().eval()

    sd = convert_hf_rtdetr_state_dict(hf.state_dict())
    ours_bb.load_state_dict(
        {k[len("backbone."):]: v.clone() for k, v in sd.items() if k.startswith("backbone.")}, strict=True, assign=True
    )
    ours_enc.load_state_dict(
        {k[len("encoder."):]: v.clone() for k, v in sd.items() if k.startswith("encoder.")}, strict=True, assign=True
    )
    for m in (ours_bb, ours_enc):
        assert not any(t.is_meta for t in list(m.parameters()) + list(m.buffers()))
    return hf, ours_bb.eval(), ours_enc.eval()


@torch.no_grad()
def _hf_forward(hf, x):
    feats = [f for f, _ in hf.backbone(x, torch.ones(x.shape[0], *x.shape[-2:], dtype=torch.long))]
    proj = [p(f) for p, f in zip(hf.encoder_input_proj, feats)]
    return feats, list(hf.encoder(proj).last_hidden_state)


def _compare(hf, bb, enc, h, w, seed=1):
    x = torch.rand(1, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    hf_feats, hf_outs = _hf_forward(hf, x)
    with torch.no_grad():
        feats = bb(x)
        outs = enc(list(feats.values()))
    assert list(feats) == ["res3", "res4", "res5"]
    for a, b in zip(hf_feats, feats.values()):
        assert a.shape == b.shape and a.std() > 0.05
        assert (a - b).abs().max().item() <= TOL
    assert len(outs) == 3
    for a, b in zip(hf_outs, outs):
        assert a.shape == b.shape and a.std() > 0.05
        assert (a - b).abs().max().item() <= TOL
    return feats, hf_outs


@pytest.fixture(scope="module")
def r18_pair():
    return _build_pair("r18vd")


def test_oracle_hf_r18vd_square(r18_pair):
    _compare(*r18_pair, 128, 128)


def test_oracle_hf_r18vd_non_square(r18_pair, monkeypatch):
    # HF >= 5.0 uses a row-major position embedding like ours, so outputs match on H != W too
    hf, bb, enc = r18_pair
    feats, hf_outs = _compare(hf, bb, enc, 128, 192)

    # ... and the test can tell: the official (W-major 'ij') embedding gives different outputs here
    def official_ij(h, w, dim, temperature, *, device, dtype):
        ar = lambda n: torch.arange(n, dtype=torch.float32)  # noqa: E731
        gw, gh = torch.meshgrid(ar(w), ar(h), indexing="ij")
        omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
        ow, oh = gw.flatten()[:, None] * omega, gh.flatten()[:, None] * omega
        return torch.cat([ow.sin(), ow.cos(), oh.sin(), oh.cos()], 1)[None].to(device=device, dtype=dtype)

    monkeypatch.setattr(hybrid_encoder_mod, "build_2d_sincos_position_embedding", official_ij)
    with torch.no_grad():
        scrambled = enc(list(feats.values()))
    assert (scrambled[2] - hf_outs[2]).abs().max().item() > 1e-3


def test_oracle_hf_r50vd_square():
    hf, bb, enc = _build_pair("r50vd")
    # exact backbone size vs HF (frozen-BN buffers excluded on both sides)
    assert sum(p.numel() for p in hf.backbone.parameters()) == sum(p.numel() for p in bb.parameters()) == 23_474_016
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    _compare(hf, bb, enc, 96, 96)
