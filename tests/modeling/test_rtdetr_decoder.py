"""Tests of the RT-DETR decoder (``RTDETRTransformer``), with HF transformers as an oracle (CPU, float64)."""

import math

import pytest
import torch

from neo_rtdetr.modeling.decoder.rtdetr_decoder import RTDETRTransformer

HF_LAYERS = 3


def _randomize_(module, seed):
    """Perturb every parameter and BN statistic so that no test passes by accident of the init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(p.shape[1]))
            elif name.endswith("weight"):  # norm scales
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    return module


def _small_decoder(seed=0, **kw):
    cfg = dict(
        num_classes=5,
        hidden_dim=32,
        num_queries=20,
        feat_channels=(16, 24, 32),
        nhead=4,
        num_layers=3,
        dim_feedforward=64,
        num_denoising=20,
    )
    cfg.update(kw)
    torch.manual_seed(seed)
    return _randomize_(RTDETRTransformer(**cfg), seed).double()


def _small_feats(bs=2, sizes=((16, 16), (8, 8), (4, 4)), channels=(16, 24, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, c, h, w, generator=g, dtype=torch.float64) for c, (h, w) in zip(channels, sizes)]


def _targets(counts, seed=0, num_classes=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        cxcy = 0.2 + 0.6 * torch.rand(n, 2, generator=g, dtype=dtype)
        wh = 0.05 + 0.3 * torch.rand(n, 2, generator=g, dtype=dtype)
        out.append({"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": torch.cat([cxcy, wh], 1)})
    return out


def _all_output_tensors(out):
    ts = [out["pred_logits"], out["pred_boxes"]]
    for o in out.get("aux_outputs", []) + out.get("dn_outputs", []):
        ts += [o["pred_logits"], o["pred_boxes"]]
    if "enc_outputs" in out:
        ts += [out["enc_outputs"]["pred_logits"], out["enc_outputs"]["pred_boxes"]]
    return ts


# ----------------------------------------------------------------------------------------------- HF oracle
@pytest.fixture(scope="module")
def hf_pair():
    """An HF RTDetrForObjectDetection (r18-like decoder: 3 layers, d=256, 300 queries, 80 classes) with random
    weights, and our decoder loaded from it through the HF key map; both float64."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig

    from neo_rtdetr.checkpoint.hf_rtdetr_keys import convert_hf_rtdetr_state_dict

    tiny_backbone = RTDetrResNetConfig(
        hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], layer_type="basic", embedding_size=8, out_indices=[2, 3, 4]
    )
    config = RTDetrConfig(
        num_labels=80,
        backbone_config=tiny_backbone,
        encoder_in_channels=[8, 8, 8],
        hidden_expansion=0.5,
        decoder_layers=HF_LAYERS,
    )
    config._attn_implementation = "eager"  # SDPA with a float32 mask on float64 is wrong in torch (CPU)
    torch.manual_seed(0)
    hf = _randomize_(RTDetrForObjectDetection(config), seed=1).double()

    ours = RTDETRTransformer(num_classes=80, num_layers=HF_LAYERS).double()
    converted = convert_hf_rtdetr_state_dict(hf.state_dict())
    dec_state = {k[len("decoder."):]: v for k, v in converted.items() if k.startswith("decoder.")}
    result = ours.load_state_dict(dec_state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return hf, ours


def _hf_run(hf, feats, labels=None, full=False):
    kwargs = dict(pixel_values=None, inputs_embeds=feats[0], encoder_outputs=(feats,), labels=labels)
    return hf.model(**kwargs) if full else hf(**kwargs)


def _feats_256(bs, image_hw, seed):
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    return [torch.randn(bs, 256, h // s, w // s, generator=g, dtype=torch.float64) for s in (8, 16, 32)]


@pytest.mark.parametrize("image_hw", [(256, 256), (128, 512)])
def test_eval_matches_hf(hf_pair, image_hw):
    hf, ours = hf_pair
    hf.eval()
    ours.eval()
    feats = _feats_256(1, image_hw, seed=image_hw[1])
    with torch.no_grad():
        ref = _hf_run(hf, feats)
        out = ours(feats)
    assert set(out) == {"pred_logits", "pred_boxes"}
    assert out["pred_logits"].shape == (1, 300, 80) and out["pred_boxes"].shape == (1, 300, 4)
    assert (out["pred_logits"] - ref.logits).abs().max() <= 1e-5
    assert (out["pred_boxes"] - ref.pred_boxes).abs().max() <= 1e-5
    # non-trivial: the boxes spread over the image and differ between queries
    assert out["pred_boxes"].std() > 0.05
    if image_hw == (128, 512):
        # the 16x64 stride-8 map has invalid border anchors (centre x 0.5/64 < eps)
        _, valid = ours._generate_anchors([(16, 64), (8, 32), (4, 16)], dtype=torch.float64)
        assert not bool(valid.all())


def test_train_forward_matches_hf_with_same_seed(hf_pair):
    """Training forward values (CDN groups, mask, all layers) equal HF's for the same seed."""
    hf, ours = hf_pair
    hf_state = {k: v.clone() for k, v in hf.state_dict().items()}
    our_state = {k: v.clone() for k, v in ours.state_dict().items()}
    try:
        hf.train()
        ours.train()
        feats = _feats_256(2, (256, 256), seed=5)
        targets = _targets([3, 1], seed=2, num_classes=80)
        labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
        with torch.no_grad():
            torch.manual_seed(11)
            ref = _hf_run(hf, feats, labels=labels, full=True)
            torch.manual_seed(11)
            out = ours(feats, targets)
        meta, hf_meta = out["dn_meta"], ref.denoising_meta_values
        assert meta["dn_num_group"] == hf_meta["dn_num_group"] == 33
        assert list(meta["dn_num_split"]) == [int(x) for x in hf_meta["dn_num_split"]] == [198, 300]
        for a, b in zip(meta["dn_positive_idx"], hf_meta["dn_positive_idx"]):
            assert torch.equal(a, b.to(a.dtype))
        num_dn = 198
        logits, boxes = ref.intermediate_logits, ref.intermediate_reference_points  # [B, L, Ndn+Q, *]
        assert logits.shape == (2, HF_LAYERS, num_dn + 300, 80)
        ours_layers = out["aux_outputs"] + [{"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}]
        assert len(out["aux_outputs"]) == HF_LAYERS - 1 and len(out["dn_outputs"]) == HF_LAYERS
        for lvl in range(HF_LAYERS):
            for key, hf_t in (("pred_logits", logits), ("pred_boxes", boxes)):
                assert (ours_layers[lvl][key] - hf_t[:, lvl, num_dn:]).abs().max() <= 1e-5, (lvl, key)
                assert (out["dn_outputs"][lvl][key] - hf_t[:, lvl, :num_dn]).abs().max() <= 1e-5, (lvl, key)
        assert (out["enc_outputs"]["pred_logits"] - ref.enc_topk_logits).abs().max() <= 1e-5
        assert (out["enc_outputs"]["pred_boxes"] - ref.enc_topk_bboxes).abs().max() <= 1e-5
    finally:
        hf.load_state_dict(hf_state)
        ours.load_state_dict(our_state)


# ------------------------------------------------------------------------------------ gradient path / eval_idx
def test_look_forward_twice_gradient_path():
    dec = _small_decoder(num_denoising=0)
    dec.train()
    out = dec(_small_feats())
    # layer-1 boxes only: dec_bbox_head[0] is reached only through the undetached layer-0 boxes
    out["aux_outputs"][1]["pred_boxes"].sum().backward()
    grads0 = [p.grad for p in dec.dec_bbox_head[0].parameters()]
    assert all(g is not None for g in grads0)
    assert sum(float(g.abs().sum()) for g in grads0) > 1e-6
    # layer 2 is not upstream of the layer-1 boxes (stacking gives it an all-zero gradient at most)
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in dec.dec_bbox_head[2].parameters())
    # the reference fed to the next layer is detached: the layer-1 *logits* do not reach dec_bbox_head[0]
    dec.zero_grad(set_to_none=True)
    out = dec(_small_feats())
    out["aux_outputs"][1]["pred_logits"].sum().backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in dec.dec_bbox_head[0].parameters())


def test_eval_idx_returns_that_layer():
    dec = _small_decoder(num_layers=6, eval_idx=2, num_denoising=0)
    feats = _small_feats()
    dec.train()
    for proj in dec.input_proj:  # same BN statistics in both modes
        proj.eval()
    with torch.no_grad():
        train_out = dec(feats)
        dec.eval()
        eval_out = dec(feats)
    assert dec.eval_idx == 2
    torch.testing.assert_close(eval_out["pred_logits"], train_out["aux_outputs"][2]["pred_logits"], rtol=0, atol=1e-10)
    torch.testing.assert_close(eval_out["pred_boxes"], train_out["aux_outputs"][2]["pred_boxes"], rtol=0, atol=1e-10)
    assert not torch.allclose(eval_out["pred_logits"], train_out["pred_logits"])  # not the last layer

    dec_last = _small_decoder(num_layers=6, num_denoising=0)
    dec_last.eval()
    with torch.no_grad():
        last = dec_last(feats)
        dec_last.train()
        for proj in dec_last.input_proj:
            proj.eval()
        last_train = dec_last(feats)
    torch.testing.assert_close(last["pred_boxes"], last_train["pred_boxes"], rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------- denoising edge cases
def _params_with_grad(dec, feats, targets):
    dec.zero_grad(set_to_none=True)
    out = dec(feats, targets)
    sum(t.sum() for t in _all_output_tensors(out)).backward()
    return out, {n for n, p in dec.named_parameters() if p.grad is not None}


def test_empty_targets_keep_the_same_graph():
    dec = _small_decoder()
    dec.train()
    feats = _small_feats()
    all_params = {n for n, _ in dec.named_parameters()}

    out, normal = _params_with_grad(dec, feats, _targets([3, 2]))
    assert normal == all_params
    assert out["dn_meta"]["dn_num_group"] == 20 // 3

    out, one_empty = _params_with_grad(dec, feats, _targets([2, 0]))
    assert one_empty == normal
    assert out["dn_meta"]["dn_positive_idx"][1].numel() == 0
    assert out["dn_meta"]["dn_positive_idx"][0].numel() == 2 * 10

    out, all_empty = _params_with_grad(dec, feats, _targets([0, 0]))
    assert all_empty == normal
    assert isinstance(out["dn_meta"], dict) and out["dn_meta"]["dn_num_split"] == [2, 20]
    assert out["dn_outputs"][0]["pred_logits"].shape == (2, 2, 5)
    assert all(bool(torch.isfinite(t).all()) for t in _all_output_tensors(out))
    # the main queries never see the dummy denoising queries
    dec.zero_grad(set_to_none=True)
    with torch.no_grad():
        torch.manual_seed(0)
        with_dn = dec(feats, _targets([0, 0]))
        dec.num_denoising = 0
        without_dn = dec(feats)
        dec.num_denoising = 20
    torch.testing.assert_close(with_dn["pred_logits"], without_dn["pred_logits"], rtol=0, atol=1e-10)


def test_more_boxes_than_denoising_budget():
    dec = _small_decoder(num_denoising=100)
    dec.train()
    out = dec(_small_feats(), _targets([150, 4]))
    assert out["dn_meta"]["dn_num_group"] == 1 and out["dn_meta"]["dn_num_split"] == [300, 20]
    assert out["dn_outputs"][-1]["pred_boxes"].shape == (2, 300, 4)
    assert out["pred_logits"].shape == (2, 20, 5)


def test_shapes_batch_first_with_unequal_boxes():
    dec = _small_decoder(num_queries=20)
    dec.train()
    feats = _small_feats(bs=3, sizes=((12, 20), (6, 10), (3, 5)))  # 315 memory tokens != 20 queries
    out = dec(feats, _targets([2, 0, 5]))
    num_dn = 2 * 5 * (20 // 5)
    assert out["pred_logits"].shape == (3, 20, 5) and out["pred_boxes"].shape == (3, 20, 4)
    assert len(out["aux_outputs"]) == 2 and len(out["dn_outputs"]) == 3
    for o in out["aux_outputs"]:
        assert o["pred_logits"].shape == (3, 20, 5) and o["pred_boxes"].shape == (3, 20, 4)
    for o in out["dn_outputs"]:
        assert o["pred_logits"].shape == (3, num_dn, 5) and o["pred_boxes"].shape == (3, num_dn, 4)
    assert out["enc_outputs"]["pred_logits"].shape == (3, 20, 5)
    assert out["enc_outputs"]["pred_boxes"].shape == (3, 20, 4)
    assert [p.numel() for p in out["dn_meta"]["dn_positive_idx"]] == [2 * 4, 0, 5 * 4]
    boxes = out["pred_boxes"]
    assert bool(((boxes >= 0) & (boxes <= 1)).all())
    # batch independence in eval: image 1 alone gives the same result as in the batch
    dec.eval()
    with torch.no_grad():
        full = dec(feats)
        single = dec([f[1:2] for f in feats])
    torch.testing.assert_close(single["pred_logits"], full["pred_logits"][1:2], rtol=0, atol=1e-10)
    with pytest.raises(ValueError):
        dec([f.transpose(1, 0) for f in feats])  # channel-first layout is asserted, never guessed


def test_training_needs_targets_for_denoising():
    dec = _small_decoder()
    dec.train()
    with pytest.raises(ValueError):
        dec(_small_feats())


def test_anchor_cache_handles_new_sizes_in_eval():
    dec = _small_decoder(num_denoising=0)
    dec.eval()
    with torch.no_grad():
        out_a = dec(_small_feats(bs=1))
        out_b = dec(_small_feats(bs=1, sizes=((10, 64), (5, 32), (3, 16))))
    assert out_a["pred_boxes"].shape == out_b["pred_boxes"].shape == (1, 20, 4)
    keys = [k[0] for k in dec._anchor_cache]
    assert ((16, 16), (8, 8), (4, 4)) in keys and ((10, 64), (5, 32), (3, 16)) in keys
    anchors, valid = dec._generate_anchors([(10, 64), (5, 32), (3, 16)], dtype=torch.float64)
    assert anchors.shape == (1, 640 + 160 + 48, 4) and valid.shape == (1, 848, 1)
    expected_first = torch.tensor([0.5 / 64, 0.5 / 10, 0.05, 0.05], dtype=torch.float64)
    # level 0, cell (0, 0): centre x 0.5/64 < eps -> invalid (+inf); cell (0, 1) is valid
    assert not bool(valid[0, 0, 0]) and bool(torch.isinf(anchors[0, 0]).all())
    second = torch.tensor([1.5 / 64, 0.5 / 10, 0.05, 0.05], dtype=torch.float64)
    assert bool(valid[0, 1, 0])
    torch.testing.assert_close(anchors[0, 1], torch.log(second / (1 - second)))
    # level 2 starts at 800, size 0.2, x centre 0.5 / 16
    lvl2 = torch.tensor([0.5 / 16, 0.5 / 3, 0.2, 0.2], dtype=torch.float64)
    torch.testing.assert_close(anchors[0, 800], torch.log(lvl2 / (1 - lvl2)))
    assert expected_first[0] < dec.eps
    assert bool(torch.isfinite(out_b["pred_boxes"]).all())
    # the cache is reused (same objects), and is not part of the state dict
    assert dec._generate_anchors([(10, 64), (5, 32), (3, 16)], dtype=torch.float64)[0] is anchors
    assert not any("anchor" in k for k in dec.state_dict())


@pytest.mark.parametrize("size", [(9, 13), (1, 1), (16, 5)])
def test_extra_levels_of_odd_sizes_get_their_anchors(size):
    """num_levels > input maps: the extra stride-2 levels' sizes are derived before the body runs (for the anchors);
    a wrong size would give anchors for another token count, which the body refuses."""
    dec = _small_decoder(num_denoising=0, feat_channels=(16, 24), feat_strides=(8, 16), num_levels=4, num_queries=4)
    dec.eval()
    h, w = size
    feats = _small_feats(bs=1, sizes=((h, w), ((h + 1) // 2, (w + 1) // 2)), channels=(16, 24))
    with torch.no_grad():
        out = dec(feats)
        proj = dec._get_encoder_input(feats)[1]
    assert dec._memory_spatial_shapes(feats) == proj
    assert out["pred_boxes"].shape == (1, 4, 4) and bool(torch.isfinite(out["pred_boxes"]).all())


def test_official_init_and_key_names():
    torch.manual_seed(0)
    dec = RTDETRTransformer(num_classes=80, num_layers=2, num_queries=30)
    bias = -math.log((1 - 0.01) / 0.01)
    torch.testing.assert_close(dec.enc_score_head.bias, torch.full((80,), bias))
    for i in range(2):
        torch.testing.assert_close(dec.dec_score_head[i].bias, torch.full((80,), bias))
        assert torch.count_nonzero(dec.dec_bbox_head[i].layers[-1].weight) == 0
        assert torch.count_nonzero(dec.dec_bbox_head[i].layers[-1].bias) == 0
    assert torch.count_nonzero(dec.enc_bbox_head.layers[-1].weight) == 0
    assert dec.denoising_class_embed.weight.shape == (81, 256) and dec.denoising_class_embed.padding_idx == 80
    assert torch.count_nonzero(dec.denoising_class_embed.weight[80]) == 0
    keys = set(dec.state_dict())
    for k in (
        "input_proj.0.conv.weight",
        "input_proj.2.norm.running_var",
        "decoder.layers.1.self_attn.in_proj_weight",
        "decoder.layers.1.self_attn.out_proj.bias",
        "decoder.layers.0.cross_attn.sampling_offsets.weight",
        "decoder.layers.0.norm3.bias",
        "decoder.layers.0.linear2.weight",
        "query_pos_head.layers.1.weight",
        "enc_output.0.weight",
        "enc_output.1.bias",
        "enc_bbox_head.layers.2.bias",
        "dec_bbox_head.1.layers.2.weight",
        "dec_score_head.1.bias",
    ):
        assert k in keys, k
    assert dec.query_pos_head.layers[0].weight.shape == (512, 4)
