"""RTDETR meta-architecture: Detectron2 contract, configs, official-bug fixes and seed-bug regressions."""

import copy

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances

from neo_rtdetr.modeling.meta_arch.rtdetr import RTDETR, TARGET_BOXES_FIELD

MODEL_CONFIGS = ["r18", "r34", "r50m", "r50", "r101"]


def tiny_model(num_classes=6, **decoder_overrides):
    cfg = LazyConfig.load("configs/common/models/rtdetr_tiny.py")
    cfg.model.num_classes = num_classes
    for k, v in decoder_overrides.items():
        setattr(cfg.model.decoder, k, v)
    return instantiate(cfg.model)


def make_inputs(sizes, boxes_per_image, num_classes=6, seed=0, normalized=True):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for (h, w), n in zip(sizes, boxes_per_image):
        inst = Instances((h, w))
        cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        boxes = torch.cat([cxcy, wh], 1)
        if not normalized:
            boxes = boxes * torch.tensor([w, h, w, h], dtype=torch.float32)
        inst.set(TARGET_BOXES_FIELD, boxes)
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        batch.append({"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), "instances": inst})
    return batch


def count_params_m(model):
    """Parameters in millions, frozen-BN affine weights counted as parameters (the official convention)."""
    n = sum(p.numel() for p in model.parameters())
    n += sum(b.numel() for name, b in model.named_buffers() if name.endswith((".weight", ".bias")))
    return n


# ------------------------------------------------------------------------------------ configs


def test_registered_in_meta_arch_registry():
    assert META_ARCH_REGISTRY.get("RTDETR") is RTDETR


@pytest.mark.parametrize(
    "name,expected",
    [("r18", 20.18), ("r34", 31.44), ("r50m", 36.65), ("r50", 42.94), ("r101", 76.66)],
)
def test_parameter_counts_equal_the_official_ones(name, expected):
    """20.18 / 31.44 / 36.65 / 42.9x / 76.66 M. R50: 42,944,620 = 42.94 M; the 42.95 quoted by the
    reference is the sum of its rounded parts (23.53 + 11.95 + 7.47). HF's r50vd has 42,891,372
    parameters without frozen-BN affine weights, which is checked exactly."""
    model = instantiate(LazyConfig.load(f"configs/common/models/rtdetr_{name}.py").model)
    assert round(count_params_m(model) / 1e6, 2) == expected
    if name == "r50":
        assert sum(p.numel() for p in model.parameters()) == 42_891_372


def test_config_values_are_numbers_not_config_nodes():
    """Seed bug: the whole config passed where numbers were expected. Interpolations resolve to numbers."""
    model = instantiate(LazyConfig.load("configs/common/models/rtdetr_r101.py").model)
    assert model.decoder.num_classes == model.criterion.num_classes == model.num_classes == 80
    assert isinstance(model.decoder.num_queries, int) and model.decoder.num_queries == 300
    assert list(model.decoder.feat_channels) == [384, 384, 384]
    assert all(type(c) is int for c in model.decoder.feat_channels)


def test_seed_bug_constructor_keyword_mismatch_is_an_error():
    """Every config key is a constructor keyword; a misspelt one raises instead of being dropped."""
    cfg = LazyConfig.load("configs/common/models/rtdetr_tiny.py")
    bad = copy.deepcopy(cfg)
    bad.model.decoder.num_layer = 3  # typo of num_layers
    with pytest.raises(TypeError, match="num_layer"):
        instantiate(bad.model)
    bad = copy.deepcopy(cfg)
    bad.model.bogus_option = 1
    with pytest.raises(TypeError, match="bogus_option"):
        instantiate(bad.model)


def test_num_classes_must_agree():
    cfg = LazyConfig.load("configs/common/models/rtdetr_tiny.py")
    cfg.model.decoder.num_classes = 5  # breaks the interpolation on purpose
    cfg.model.num_classes = 6
    with pytest.raises(ValueError, match="num_classes"):
        instantiate(cfg.model)


def test_state_dict_has_the_official_layout():
    model = tiny_model()
    keys = model.state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"backbone", "encoder", "decoder"}
    assert not any("pixel_mean" in k or "criterion" in k for k in keys)


# ------------------------------------------------------------------------------- inference


def test_inference_returns_instances_in_original_image_pixels():
    model = tiny_model().eval()
    batch = [
        {"image": torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8), "height": 480, "width": 640},
        {"image": torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8)},
    ]
    with torch.no_grad():
        out = model(batch)
    assert len(out) == 2
    inst = out[0]["instances"]
    assert inst.image_size == (480, 640) and len(inst) == model.num_top_queries
    assert isinstance(inst.pred_boxes, Boxes)
    b = inst.pred_boxes.tensor
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 640).all() and (b[:, 3] <= 480).all()
    assert (b[:, 2] >= b[:, 0]).all()
    assert inst.scores.shape == inst.pred_classes.shape == (model.num_top_queries,)
    assert ((inst.pred_classes >= 0) & (inst.pred_classes < 6)).all()
    assert (inst.scores[:-1] >= inst.scores[1:]).all()
    assert out[1]["instances"].image_size == (96, 96)
    assert model([]) == []


def test_any_eval_size_works_without_config_changes():
    """Official bug: eval_spatial_size baked in. Here every size works, including 1080x1920 (padded)."""
    model = tiny_model().eval()
    for h, w in [(64, 64), (96, 160), (1080, 1920), (100, 150)]:
        with torch.no_grad():
            out = model([{"image": torch.zeros(3, h, w, dtype=torch.uint8)}])
        assert out[0]["instances"].image_size == (h, w)


def test_sizes_not_multiple_of_32_are_padded_and_targets_rescaled():
    model = tiny_model()
    batch = make_inputs([(100, 150)], [1])
    batch[0]["instances"].set(TARGET_BOXES_FIELD, torch.tensor([[0.5, 0.5, 0.2, 0.2]]))
    images = model.preprocess_image(batch)
    assert images.tensor.shape[-2:] == (128, 160)
    assert images.image_sizes[0] == (100, 150)
    targets = model.prepare_targets(batch, images)
    expected = torch.tensor([[0.5 * 150 / 160, 0.5 * 100 / 128, 0.2 * 150 / 160, 0.2 * 100 / 128]])
    torch.testing.assert_close(targets[0]["boxes"], expected)


def test_batch_first_layout_outputs_do_not_depend_on_batch_composition():
    """Seed bug: a decoder guessing [N,B,C] vs [B,N,C] from sizes. Here B equals the number of queries'
    divisor-free cases too: each image's outputs are the same alone or in a batch of 5."""
    model = tiny_model(num_queries=5).eval()
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    with torch.no_grad():
        batch_out = model.forward_network(model.preprocess_image([{"image": im} for im in images]).tensor)
        single = model.forward_network(model.preprocess_image([{"image": images[3]}]).tensor)
    assert batch_out["pred_logits"].shape == (5, 5, 6)
    torch.testing.assert_close(batch_out["pred_logits"][3:4], single["pred_logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch_out["pred_boxes"][3:4], single["pred_boxes"], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------- training


def test_training_returns_a_flat_dict_of_weighted_fp32_losses():
    model = tiny_model().train()
    losses = model(make_inputs([(96, 96), (96, 128)], [2, 3]))
    L = 2
    assert len(losses) == 3 * (1 + (L - 1) + 1 + L)  # main, aux, encoder, denoising
    assert all(k.startswith("loss_") for k in losses)
    assert all(v.dtype == torch.float32 and v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_seed_bug_pixel_boxes_are_rejected():
    """Seed bug: pixel boxes compared with normalised predictions (loss ~19,000)."""
    model = tiny_model().train()
    with pytest.raises(ValueError, match="normalis"):
        model(make_inputs([(96, 96)], [2], normalized=False))
    batch = make_inputs([(96, 96)], [2])
    inst = batch[0]["instances"]
    only_pixels = Instances(inst.image_size, gt_classes=inst.gt_classes, gt_boxes=Boxes(torch.tensor([[1.0, 2, 30, 40]] * 2)))
    batch[0]["instances"] = only_pixels
    with pytest.raises(ValueError, match="RTDETRDatasetMapper"):
        model(batch)


def test_initial_r50_loss_is_in_the_tens_not_thousands():
    """Seed bug: 'VFL 130-220 per layer' was wrong; with the official normalisation the initial R50
    total loss (39 terms) is in the tens."""
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load("configs/common/models/rtdetr_r50.py").model).train()
    losses = model(make_inputs([(320, 320), (320, 320)], [4, 7], num_classes=80))
    assert len(losses) == 39
    total = sum(losses.values()).item()
    assert 5.0 < total < 100.0, total
    assert all(v.item() < 10.0 for v in losses.values())


def _grad_names(model, batch):
    model.zero_grad(set_to_none=True)
    sum(model(batch).values()).backward()
    return {n for n, p in model.named_parameters() if p.grad is not None}


def test_batches_without_boxes_train_with_the_same_graph():
    """Official bug (DDP hang): some or all images without boxes. Same parameters get gradients."""
    torch.manual_seed(0)
    model = tiny_model().train()
    normal = _grad_names(model, make_inputs([(64, 64), (64, 64)], [2, 3]))
    some_empty = _grad_names(model, make_inputs([(64, 64), (64, 64)], [0, 3]))
    all_empty = _grad_names(model, make_inputs([(64, 64), (64, 64)], [0, 0]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert normal == some_empty == all_empty == trainable
    losses = model(make_inputs([(64, 64), (64, 64)], [0, 0]))
    assert all(torch.isfinite(v) for v in losses.values())


def test_bf16_autocast_training_step_is_finite_and_losses_fp32():
    """Seed bug: fp16/fp32 index_put clash in VFL under AMP; fp16/bf16 overflow; masks cast."""
    torch.manual_seed(0)
    model = tiny_model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(make_inputs([(64, 64), (64, 96)], [3, 1]))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_seed_bug_background_class_labels():
    """Labels equal to num_classes - 1 train; num_classes itself (a 'background' id) is rejected."""
    model = tiny_model().train()
    batch = make_inputs([(64, 64)], [2])
    batch[0]["instances"].gt_classes = torch.tensor([5, 5])
    assert torch.isfinite(sum(model(batch).values()))
    batch[0]["instances"].gt_classes = torch.tensor([6, 0])
    with pytest.raises(ValueError, match="label"):
        model(batch)


def test_overfits_two_images():
    """A tiny model learns 2 images to near-perfect boxes in 150 CPU steps.

    (At lr 1e-3 the boxes pass from step 60 on for this seed and two others, with one miss at step 100 for one of
    them; 150 steps leave a margin. It was 300 steps at 3e-4, the suite's slowest test.)
    """
    torch.manual_seed(0)
    model = tiny_model(num_classes=3).train()
    batch = make_inputs([(64, 64), (64, 64)], [2, 1], num_classes=3, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(150):
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model([{"image": b["image"]} for b in batch])
    from detectron2.structures import pairwise_iou

    from neo_rtdetr.modeling.layers.box_ops import box_cxcywh_to_xyxy

    for b, o in zip(batch, out):
        gt = b["instances"]
        gt_xyxy = Boxes(box_cxcywh_to_xyxy(gt.get(TARGET_BOXES_FIELD)) * 64)
        inst = o["instances"]
        top = inst[: len(gt) + 2]
        iou = pairwise_iou(gt_xyxy, top.pred_boxes)
        for j in range(len(gt)):
            same_class = top.pred_classes == gt.gt_classes[j]
            assert (iou[j][same_class] > 0.8).any(), (iou, top.pred_classes, gt.gt_classes)


def test_convert_to_deploy_folds_every_batch_norm_and_keeps_the_outputs():
    """RepVgg fusion + conv/BN folding (frozen BNs of the backbone, BNs of the encoder and decoder projections)."""
    from detectron2.layers import FrozenBatchNorm2d

    from neo_rtdetr.modeling.layers.fuse_conv_bn import fold_batch_norms

    from .hf_oracle import randomize

    model = tiny_model().double()
    randomize(model, seed=3)  # non-trivial running statistics and affine parameters everywhere
    model.eval()
    norms = lambda m: [n for n, x in m.named_modules() if isinstance(x, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))]  # noqa: E731
    assert any(n.startswith("backbone") for n in norms(model)) and any(n.startswith("encoder") for n in norms(model))
    x = torch.rand(2, 3, 96, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.forward_network(x)
        deployed = copy.deepcopy(model).convert_to_deploy()
        got = deployed.forward_network(x)
    assert norms(deployed) == []
    assert ref["pred_logits"].std() > 0.1
    torch.testing.assert_close(got["pred_logits"], ref["pred_logits"], rtol=0, atol=1e-9)
    torch.testing.assert_close(got["pred_boxes"], ref["pred_boxes"], rtol=0, atol=1e-9)
    with pytest.raises(RuntimeError, match="eval"):
        fold_batch_norms(tiny_model().train())


def test_channels_last_model_computes_the_same_function():
    ref = tiny_model().eval()
    cfg = LazyConfig.load("configs/common/models/rtdetr_tiny.py")
    cfg.model.num_classes = 6
    cfg.model.channels_last = True
    fast = instantiate(cfg.model).eval()
    fast.load_state_dict(ref.state_dict())
    conv = fast.backbone.conv1[0].conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref.forward_network(x), fast.forward_network(x)
    torch.testing.assert_close(b["pred_logits"], a["pred_logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(b["pred_boxes"], a["pred_boxes"], rtol=0, atol=1e-4)
    # training works and the gradients keep the weights' layout
    fast.train()
    losses = fast(make_inputs([(96, 128)] * 2, [2, 1]))
    sum(losses.values()).backward()
    assert conv.grad is not None and conv.grad.is_contiguous(memory_format=torch.channels_last)


def test_batched_postprocess_equals_detectron2_detector_postprocess():
    """Scaling to the requested output size, clipping and dropping empty boxes, for a batch at once."""
    from detectron2.modeling.postprocessing import detector_postprocess

    g = torch.Generator().manual_seed(0)
    image_sizes = [(96, 128), (64, 64), (80, 50)]
    inputs = [{"height": 480, "width": 640}, {}, {"height": 33, "width": 77}]
    k = 40
    xy = torch.rand(3, k, 2, generator=g) * 180 - 40  # some boxes partly / fully outside the image
    boxes = torch.cat([xy, xy + torch.rand(3, k, 2, generator=g) * 60], -1)
    scores, labels = torch.rand(3, k, generator=g), torch.randint(0, 5, (3, k), generator=g)
    got = RTDETR.detections_to_instances(scores, labels, boxes, inputs, image_sizes)
    dropped = 0
    for i, ((h, w), x) in enumerate(zip(image_sizes, inputs)):
        ref = detector_postprocess(
            Instances((h, w), pred_boxes=Boxes(boxes[i].clone()), scores=scores[i], pred_classes=labels[i]),
            x.get("height", h), x.get("width", w),
        )
        out = got[i]["instances"]
        assert out.image_size == ref.image_size and len(out) == len(ref)
        assert torch.equal(out.pred_boxes.tensor, ref.pred_boxes.tensor)
        assert torch.equal(out.scores, ref.scores) and torch.equal(out.pred_classes, ref.pred_classes)
        dropped += k - len(ref)
    assert dropped > 0  # the filtering was exercised
