"""RTDETR on edge-case inputs: empty batch, NaN pixels, images smaller than the stride, crowded
images (more boxes than the denoising budget, more boxes than queries)."""

import pytest
import torch

from neo_rtdetr.modeling.decoder.denoising import get_contrastive_denoising_training_group
from tests.modeling.test_rtdetr import make_inputs, tiny_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model(num_classes=6)


def test_empty_batch_returns_an_empty_list(model):
    model.eval()
    assert model([]) == []


def test_nan_or_inf_pixels_are_an_error_naming_the_image(model):
    model.eval()
    good = torch.rand(3, 64, 64)
    bad = good.clone()
    bad[1, 5, 7] = float("nan")
    with pytest.raises(ValueError, match=r"batched_inputs\[1\]\['image'\] \(image_id=42\) has NaN or inf"):
        model([{"image": good}, {"image": bad, "image_id": 42}])
    bad[1, 5, 7] = float("inf")
    with pytest.raises(ValueError, match=r"batched_inputs\[0\]"):
        model([{"image": bad}])
    assert len(model([{"image": good * 255}])) == 1  # finite float images are fine


def test_finiteness_is_checked_once_per_batch(model, monkeypatch):
    """One reduction (and on an accelerator one read-back) for the whole batch, not one per image."""
    calls = []
    real_isfinite = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: calls.append(tuple(t.shape)) or real_isfinite(t))
    bad = torch.rand(3, 32, 48)
    bad[0, 31, 47] = float("nan")  # the last pixel of the last image, smaller than the padded batch
    batch = [{"image": torch.rand(3, 64, 64)}, {"image": torch.rand(3, 40, 64)}, {"image": bad, "image_id": 7}]
    with pytest.raises(ValueError, match=r"batched_inputs\[2\]\['image'\] \(image_id=7\) has NaN or inf"):
        model.preprocess_image(batch)
    assert calls == [(3, 3, 64, 64)]
    calls.clear()
    model.preprocess_image(batch[:2])
    model.preprocess_image([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8)}])  # integer images: no check
    assert calls == [(2, 3, 64, 64)]


def test_padding_is_zero_after_normalisation_for_each_image_size():
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load("configs/common/models/rtdetr_tiny.py")
    cfg.model.pixel_mean = [123.675, 116.28, 103.53]  # a nonzero mean: the padding has to be masked
    cfg.model.pixel_std = [58.395, 57.12, 57.375]
    model = instantiate(cfg.model)
    gen = torch.Generator().manual_seed(3)
    sizes = [(64, 40), (50, 64), (64, 64)]
    batch = [{"image": torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)} for h, w in sizes]
    images = model.preprocess_image(batch)
    assert images.image_sizes == sizes and images.tensor.shape == (3, 3, 64, 64)
    for b, (h, w) in enumerate(sizes):
        expected = (batch[b]["image"].float() - model.pixel_mean) / model.pixel_std
        torch.testing.assert_close(images.tensor[b, :, :h, :w], expected, rtol=0, atol=0)
        assert not images.tensor[b, :, h:].any() and not images.tensor[b, :, :, w:].any()


# tiny model: 50 queries, strides 8/16/32. 7x10 -> 32x32 (21 tokens) -> 64x32 (42) -> 64x64 (84 >= 50);
# 31x100 -> 32x128 already has 64 + 16 + 4 = 84 tokens.
@pytest.mark.parametrize("h, w, padded", [(7, 10, (64, 64)), (20, 20, (64, 64)), (31, 100, (32, 128))])
def test_images_smaller_than_the_stride_are_padded_to_enough_tokens(model, h, w, padded):
    model.eval()
    images = model.preprocess_image([{"image": torch.zeros(3, h, w, dtype=torch.uint8)}])
    assert tuple(images.tensor.shape[-2:]) == padded and images.image_sizes == [(h, w)]
    out = model([{"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8)}])[0]["instances"]
    assert out.image_size == (h, w) and torch.isfinite(out.pred_boxes.tensor).all()


def test_padding_for_tokens_leaves_large_images_alone(model):
    images = model.preprocess_image([{"image": torch.zeros(3, 64, 96, dtype=torch.uint8)}])
    assert tuple(images.tensor.shape[-2:]) == (64, 96)


def _targets(counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        cxcy = torch.rand(n, 2, generator=g) * 0.8 + 0.1
        wh = torch.rand(n, 2, generator=g) * 0.1 + 0.01
        out.append({"labels": torch.randint(0, 6, (n,), generator=g), "boxes": torch.cat([cxcy, wh], 1)})
    return out


@pytest.mark.parametrize("max_gt, groups", [(10, 10), (50, 2), (99, 1), (100, 1), (101, 1), (350, 1)])
def test_denoising_groups_shrink_with_the_number_of_boxes(max_gt, groups):
    embed = torch.nn.Embedding(7, 8, padding_idx=6)
    content, ref, mask, meta = get_contrastive_denoising_training_group(
        _targets([max_gt, 3]), num_classes=6, num_queries=300, class_embed=embed, num_denoising=100)
    num_dn = 2 * max_gt * groups
    assert meta["dn_num_group"] == groups == max(1, 100 // max_gt)
    assert meta["dn_num_split"] == [num_dn, 300]
    assert num_dn <= 2 * max(100, max_gt)  # bounded: the 100-query budget, or one group when the image has more boxes
    assert content.shape == (2, num_dn, 8) and ref.shape == (2, num_dn, 4) and mask.shape == (num_dn + 300,) * 2
    # each image's positives: its boxes in every group; the second image's 3 boxes are padded to max_gt slots
    assert [len(p) for p in meta["dn_positive_idx"]] == [max_gt * groups, 3 * groups]
    assert meta["dn_positive_idx"][1].tolist() == [g * 2 * max_gt + i for g in range(groups) for i in range(3)]
    # groups do not see each other; matching queries do not see denoising ones
    assert mask[num_dn:, :num_dn].all() and not mask[num_dn:, num_dn:].any()
    if groups > 1:
        assert mask[0, 2 * max_gt] and not mask[0, 2 * max_gt - 1]


@pytest.mark.parametrize("num_boxes", [120, 350])
def test_training_on_more_boxes_than_denoising_budget_and_queries(num_boxes):
    """120 boxes: more than num_denoising (100) -> one denoising group. 350: more than the 300
    queries as well -> the matcher assigns 300 of them; losses stay finite, gradients flow."""
    torch.manual_seed(0)
    model = tiny_model(num_classes=6, num_queries=300, num_denoising=100).train()
    batch = make_inputs([(128, 128), (96, 128)], [num_boxes, 2])
    losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(torch.isfinite(v) for k, v in losses.items() if "_dn_" in k)
    # the Hungarian matching assigns min(queries, boxes) pairs
    outputs = {"pred_logits": torch.randn(1, 300, 6), "pred_boxes": torch.rand(1, 300, 4) * 0.5 + 0.25}
    target = {"labels": batch[0]["instances"].gt_classes, "boxes": batch[0]["instances"].gt_boxes_cxcywh}
    src, tgt = model.criterion.matcher(outputs, [target])[0]
    assert len(src) == len(tgt) == min(300, num_boxes) and len(set(tgt.tolist())) == len(tgt)
