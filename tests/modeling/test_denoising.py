"""Tests of the contrastive denoising group builder (CPU, small)."""

import pytest
import torch
import torch.nn as nn

from neo_rtdetr.modeling.decoder.denoising import get_contrastive_denoising_training_group
from neo_rtdetr.modeling.layers.box_ops import box_cxcywh_to_xyxy

NUM_CLASSES = 7
NUM_QUERIES = 11
DIM = 16


def _embed(dtype=torch.float32):
    torch.manual_seed(123)
    return nn.Embedding(NUM_CLASSES + 1, DIM, padding_idx=NUM_CLASSES).to(dtype)


def _targets(counts, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        cxcy = 0.25 + 0.5 * torch.rand(n, 2, generator=g)
        wh = 0.05 + 0.3 * torch.rand(n, 2, generator=g)
        out.append(
            {"labels": torch.randint(0, NUM_CLASSES, (n,), generator=g), "boxes": torch.cat([cxcy, wh], 1).to(dtype)}
        )
    return out


def _expected_mask(num_dn, group_size, num_queries):
    size = num_dn + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool)
    for i in range(size):
        for j in range(size):
            if i >= num_dn:
                mask[i, j] = j < num_dn
            elif j < num_dn:
                mask[i, j] = i // group_size != j // group_size
    return mask


def test_matches_hf_with_same_seed():
    """Same seed -> same groups as HF transformers (which follows the official code, draw for draw)."""
    from transformers.models.rt_detr.modeling_rt_detr import get_contrastive_denoising_training_group as hf_cdn

    emb = _embed()
    targets = _targets([3, 1, 0])
    hf_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    torch.manual_seed(7)
    content, ref, mask, meta = get_contrastive_denoising_training_group(targets, NUM_CLASSES, NUM_QUERIES, emb)
    after_ours = torch.rand(1)
    torch.manual_seed(7)
    hf_content, hf_ref, hf_mask, hf_meta = hf_cdn(hf_targets, NUM_CLASSES, NUM_QUERIES, emb)
    after_hf = torch.rand(1)

    assert torch.equal(after_ours, after_hf), "a different number of random draws was consumed"
    torch.testing.assert_close(content, hf_content, rtol=0, atol=0)
    torch.testing.assert_close(ref, hf_ref.to(ref.dtype), rtol=0, atol=1e-6)
    assert torch.equal(mask, torch.isinf(hf_mask))
    assert meta["dn_num_group"] == hf_meta["dn_num_group"] == 33
    assert list(meta["dn_num_split"]) == [int(x) for x in hf_meta["dn_num_split"]] == [198, NUM_QUERIES]
    assert len(meta["dn_positive_idx"]) == len(hf_meta["dn_positive_idx"]) == 3
    for a, b in zip(meta["dn_positive_idx"], hf_meta["dn_positive_idx"]):
        assert torch.equal(a, b.to(a.dtype))
    # the noise really is random: a different seed changes the boxes
    torch.manual_seed(8)
    _, ref2, _, _ = get_contrastive_denoising_training_group(targets, NUM_CLASSES, NUM_QUERIES, emb)
    assert not torch.allclose(ref, ref2)


def test_group_structure_and_noise_bounds():
    emb = _embed()
    targets = _targets([4, 2])
    torch.manual_seed(0)
    content, ref, mask, meta = get_contrastive_denoising_training_group(targets, NUM_CLASSES, NUM_QUERIES, emb)
    m, g = 4, 100 // 4
    num_dn = 2 * m * g
    assert content.shape == (2, num_dn, DIM) and ref.shape == (2, num_dn, 4)
    assert meta["dn_num_group"] == g and meta["dn_num_split"] == [num_dn, NUM_QUERIES]
    assert torch.equal(mask, _expected_mask(num_dn, 2 * m, NUM_QUERIES))
    for i, t in enumerate(targets):
        n = t["labels"].shape[0]
        expected = torch.tensor([grp * 2 * m + j for grp in range(g) for j in range(n)])
        assert torch.equal(meta["dn_positive_idx"][i], expected)

    boxes = torch.sigmoid(ref)
    checked = 0
    for i, t in enumerate(targets):
        n = t["labels"].shape[0]
        gt = box_cxcywh_to_xyxy(t["boxes"])
        half = torch.cat([t["boxes"][:, 2:], t["boxes"][:, 2:]], 1) * 0.5
        for grp in range(g):
            pos = box_cxcywh_to_xyxy(boxes[i, grp * 2 * m : grp * 2 * m + n])
            neg_cxcywh = boxes[i, grp * 2 * m + m : grp * 2 * m + m + n]
            neg = box_cxcywh_to_xyxy(neg_cxcywh)
            # positives move each corner by < half the box size; negatives by [1, 2) x that (unless clipped, or
            # the corners crossed: inverse_sigmoid clamps the negative size to 0, as in the official code)
            assert bool(((pos - gt).abs() <= half + 1e-5).all())
            d = (neg - gt).abs()
            clipped = (neg <= 1e-4) | (neg >= 1 - 1e-4)
            crossed = (neg_cxcywh[:, 2:] < 1e-4).repeat(1, 2)
            assert bool(((d >= half - 1e-5) | clipped | crossed).all())
            assert bool(((d <= 2 * half + 1e-5) | crossed).all())
            checked += int((~(clipped | crossed)).sum())
        # padded slots of the smaller image carry the padding label (zero embedding row)
        if n < m:
            assert torch.count_nonzero(content[i, n:m]) == 0
    assert checked > 100


def test_label_noise_flips_about_a_quarter():
    emb = _embed()
    targets = _targets([10, 10], seed=3)
    torch.manual_seed(0)
    content, _, _, _ = get_contrastive_denoising_training_group(
        targets, NUM_CLASSES, NUM_QUERIES, emb, label_noise_ratio=0.5, box_noise_scale=0.0
    )
    clean = torch.stack([emb(t["labels"]).tile(2 * 10, 1) for t in targets])
    changed = (content - clean).abs().sum(-1) > 0
    frac = changed.float().mean().item()
    # flip probability 0.25, and a flip to the same class is a no-op: expected ~0.25 * 6/7
    assert 0.12 < frac < 0.32


def test_no_noise_keeps_gt_and_still_returns_logits():
    emb = _embed()
    targets = _targets([2, 1])
    content, ref, _, meta = get_contrastive_denoising_training_group(
        targets, NUM_CLASSES, NUM_QUERIES, emb, label_noise_ratio=0.0, box_noise_scale=0.0
    )
    g = meta["dn_num_group"]
    assert g == 50
    torch.testing.assert_close(torch.sigmoid(ref[0, :2]), targets[0]["boxes"], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.sigmoid(ref[0, 2:4]), targets[0]["boxes"], rtol=0, atol=1e-5)
    torch.testing.assert_close(content[0, :2], emb(targets[0]["labels"]))


def test_all_empty_batch_gives_one_masked_dummy_group():
    emb = _embed()
    targets = _targets([0, 0, 0])
    torch.manual_seed(0)
    content, ref, mask, meta = get_contrastive_denoising_training_group(targets, NUM_CLASSES, NUM_QUERIES, emb)
    assert content.shape == (3, 2, DIM) and ref.shape == (3, 2, 4)
    assert meta["dn_num_group"] == 1 and meta["dn_num_split"] == [2, NUM_QUERIES]
    assert [p.numel() for p in meta["dn_positive_idx"]] == [0, 0, 0]
    assert all(p.dtype == torch.int64 for p in meta["dn_positive_idx"])
    assert torch.count_nonzero(content) == 0  # padding label only
    assert bool(torch.isfinite(ref).all())
    boxes = torch.sigmoid(ref)
    # dummy box: centre 0.5, size 0.1, noised by at most 2 x half its size
    assert bool(((boxes[..., :2] - 0.5).abs() <= 0.1 + 1e-6).all())
    assert mask.shape == (2 + NUM_QUERIES, 2 + NUM_QUERIES)
    assert bool(mask[2:, :2].all()) and not bool(mask[:2, :2].any()) and not bool(mask[:, 2:].any())
    # the padding row still receives a (zero) gradient: the embedding stays in the graph
    content.sum().backward()
    assert emb.weight.grad is not None and torch.count_nonzero(emb.weight.grad) == 0


def test_more_than_budget_boxes_gives_one_group():
    emb = _embed()
    targets = _targets([150, 3])
    torch.manual_seed(0)
    content, ref, mask, meta = get_contrastive_denoising_training_group(targets, NUM_CLASSES, NUM_QUERIES, emb)
    assert meta["dn_num_group"] == 1 and meta["dn_num_split"] == [300, NUM_QUERIES]
    assert content.shape == (2, 300, DIM) and mask.shape == (311, 311)
    assert torch.equal(meta["dn_positive_idx"][0], torch.arange(150))
    assert torch.equal(meta["dn_positive_idx"][1], torch.arange(3))
    assert not bool(mask[:300, :300].any())


def test_dtype_and_device_follow_the_embedding():
    emb = _embed(torch.float64)
    targets = _targets([2, 3])
    content, ref, mask, meta = get_contrastive_denoising_training_group(targets, NUM_CLASSES, NUM_QUERIES, emb)
    assert content.dtype == torch.float64 and ref.dtype == torch.float64 and mask.dtype == torch.bool
    assert content.device == ref.device == mask.device == emb.weight.device
    # same seed -> same groups whatever the model dtype (noise is drawn in float32)
    emb32 = _embed()
    torch.manual_seed(5)
    _, ref64, _, _ = get_contrastive_denoising_training_group(targets, NUM_CLASSES, NUM_QUERIES, emb)
    torch.manual_seed(5)
    _, ref32, _, _ = get_contrastive_denoising_training_group(targets, NUM_CLASSES, NUM_QUERIES, emb32)
    torch.testing.assert_close(ref64, ref32.double(), rtol=0, atol=0)


def test_rejects_bad_targets():
    emb = _embed()
    with pytest.raises(ValueError):
        get_contrastive_denoising_training_group(
            [{"labels": torch.zeros(2, dtype=torch.long), "boxes": torch.zeros(3, 4)}], NUM_CLASSES, NUM_QUERIES, emb
        )
    with pytest.raises(ValueError):
        get_contrastive_denoising_training_group(_targets([1]), NUM_CLASSES, NUM_QUERIES, emb, num_denoising=0)
