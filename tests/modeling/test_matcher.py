"""Tests of neo_rtdetr.modeling.criterion.matcher.HungarianMatcher (CPU, tiny inputs)."""

import itertools
import math
import warnings

import pytest
import torch

import numpy as np
from scipy.optimize import linear_sum_assignment

from neo_rtdetr.modeling.criterion.matcher import HungarianMatcher, PaddedTargets


def _target(labels, boxes, dtype=torch.float32):
    return {
        "labels": torch.as_tensor(labels, dtype=torch.int64),
        "boxes": torch.as_tensor(boxes, dtype=dtype).reshape(-1, 4),
    }


def _random_targets(gen, n, num_classes, dtype=torch.float64):
    cxcy = torch.rand(n, 2, generator=gen, dtype=dtype) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=gen, dtype=dtype) * 0.3 + 0.05
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    return {"labels": labels, "boxes": torch.cat([cxcy, wh], 1)}


# ---------------------------------------------------------------- independent reference (plain python)
def _ref_giou(a, b):
    """GIoU of two cxcywh boxes (python floats)."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def _ref_cost(logit_row, box, label, tbox, alpha=0.25, gamma=2.0, wc=2.0, wb=5.0, wg=2.0):
    p = 1.0 / (1.0 + math.exp(-logit_row[label]))
    pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
    neg = (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)
    l1 = sum(abs(x - y) for x, y in zip(box, tbox))
    return wb * l1 + wc * (pos - neg) - wg * _ref_giou(box, tbox)


def _brute_force(logits, boxes, labels, tboxes):
    """Minimum total cost over all injective assignments (python floats); returns (cost, set of pairs)."""
    q, n = len(logits), len(labels)
    cost = [[_ref_cost(logits[i], boxes[i], labels[j], tboxes[j]) for j in range(n)] for i in range(q)]
    best = (math.inf, None)
    if n <= q:
        for perm in itertools.permutations(range(q), n):  # perm[j] = query of target j
            c = sum(cost[perm[j]][j] for j in range(n))
            if c < best[0]:
                best = (c, {(perm[j], j) for j in range(n)})
    else:
        for perm in itertools.permutations(range(n), q):  # perm[i] = target of query i
            c = sum(cost[i][perm[i]] for i in range(q))
            if c < best[0]:
                best = (c, {(i, perm[i]) for i in range(q)})
    return best, cost


# ---------------------------------------------------------------- tests
def test_permuted_copies_recover_exact_permutation():
    torch.manual_seed(0)
    num_classes, n = 4, 5
    gen = torch.Generator().manual_seed(1)
    tgt = _random_targets(gen, n, num_classes, dtype=torch.float32)
    perm = torch.tensor([3, 0, 4, 1, 2])  # query perm[j] is a copy of target j
    q = 7
    boxes = torch.rand(1, q, 4) * 0.1 + 0.9  # extra queries: tiny boxes in a corner, far from all targets
    boxes[..., 2:] = 0.02
    logits = torch.full((1, q, num_classes), -6.0)
    for j in range(n):
        boxes[0, perm[j]] = tgt["boxes"][j]
        logits[0, perm[j], tgt["labels"][j]] = 6.0
    (src, dst), = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, [tgt])
    assert src.dtype == torch.int64 and dst.dtype == torch.int64
    assert torch.all(src[1:] > src[:-1])  # sorted by query
    got = {int(s): int(d) for s, d in zip(src, dst)}
    assert got == {int(perm[j]): j for j in range(n)}


@pytest.mark.parametrize("seed,q,n", [(0, 5, 3), (1, 4, 4), (2, 6, 2), (3, 3, 4), (4, 5, 1)])
def test_matches_brute_force(seed, q, n):
    gen = torch.Generator().manual_seed(seed)
    num_classes = 3
    logits = torch.randn(1, q, num_classes, generator=gen, dtype=torch.float64) * 2
    boxes = torch.cat(
        [torch.rand(1, q, 2, generator=gen, dtype=torch.float64), torch.rand(1, q, 2, generator=gen, dtype=torch.float64) * 0.5 + 0.05],
        -1,
    )
    tgt = _random_targets(gen, n, num_classes)
    (src, dst), = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, [tgt])
    (best_cost, best_pairs), cost = _brute_force(
        logits[0].tolist(), boxes[0].tolist(), tgt["labels"].tolist(), tgt["boxes"].tolist()
    )
    assert len(src) == min(q, n)
    got_cost = sum(cost[int(i)][int(j)] for i, j in zip(src, dst))
    assert got_cost == pytest.approx(best_cost, rel=1e-9, abs=1e-9)
    assert {(int(i), int(j)) for i, j in zip(src, dst)} == best_pairs


def test_cost_matrix_matches_reference_and_batch_layout():
    gen = torch.Generator().manual_seed(5)
    num_classes, q = 3, 4
    logits = torch.randn(2, q, num_classes, generator=gen, dtype=torch.float64)
    boxes = torch.rand(2, q, 4, generator=gen, dtype=torch.float64) * 0.5 + 0.1
    targets = [_random_targets(gen, 2, num_classes), _random_targets(gen, 3, num_classes)]
    m = HungarianMatcher(cost_class=1.5, cost_bbox=4.0, cost_giou=3.0, alpha=0.3, gamma=1.5)
    cost = m.compute_cost({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert cost.shape == (2, q, 5)
    all_labels = torch.cat([t["labels"] for t in targets]).tolist()
    all_boxes = torch.cat([t["boxes"] for t in targets]).tolist()
    for b in range(2):
        for i in range(q):
            for j in range(5):
                ref = _ref_cost(
                    logits[b, i].tolist(), boxes[b, i].tolist(), all_labels[j], all_boxes[j],
                    alpha=0.3, gamma=1.5, wc=1.5, wb=4.0, wg=3.0,
                )
                assert float(cost[b, i, j]) == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_batch_with_empty_targets():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 5, 2, generator=gen)
    boxes = torch.rand(3, 5, 4, generator=gen) * 0.5 + 0.1
    empty = _target([], [])
    targets = [empty, _random_targets(gen, 2, 2, dtype=torch.float32), empty]
    out = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert len(out) == 3
    for k in (0, 2):
        assert out[k][0].shape == (0,) and out[k][1].shape == (0,)
        assert out[k][0].dtype == torch.int64 and out[k][1].dtype == torch.int64
    assert sorted(out[1][1].tolist()) == [0, 1]
    # All images empty.
    out = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, [empty] * 3)
    assert all(s.numel() == 0 and d.numel() == 0 for s, d in out)


def test_bf16_inputs_fp32_cost_same_assignment():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 8, 3, generator=gen).bfloat16()
    boxes = (torch.rand(2, 8, 4, generator=gen) * 0.5 + 0.1).bfloat16()
    targets = [_random_targets(gen, 3, 3, dtype=torch.float32), _random_targets(gen, 4, 3, dtype=torch.float32)]
    m = HungarianMatcher()
    cost = m.compute_cost({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert cost.dtype == torch.float32
    got = m({"pred_logits": logits, "pred_boxes": boxes}, targets)
    ref = m({"pred_logits": logits.float(), "pred_boxes": boxes.float()}, targets)
    for (s, d), (rs, rd) in zip(got, ref):
        assert torch.equal(s, rs) and torch.equal(d, rd)


def test_nan_inf_costs_are_warning_free_and_avoided():
    num_classes = 2
    tgt = _target([0, 1], [[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    logits = torch.zeros(1, 4, num_classes)
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1]]])
    # Queries 0 and 1 are perfect but invalid (NaN box / NaN logit); queries 2 and 3 are valid.
    boxes[0, 0, 0] = float("nan")
    logits[0, 1, 1] = float("nan")
    cost = HungarianMatcher().compute_cost({"pred_logits": logits, "pred_boxes": boxes}, [tgt])
    assert not torch.isfinite(cost[0, 0]).any() and not torch.isfinite(cost[0, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (src, dst), = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, [tgt])
    assert sorted(src.tolist()) == [2, 3]
    # Only invalid queries available: still an assignment, no exception.
    (src, dst), = HungarianMatcher()({"pred_logits": logits[:, :2], "pred_boxes": boxes[:, :2]}, [tgt])
    assert sorted(src.tolist()) == [0, 1] and sorted(dst.tolist()) == [0, 1]


def test_bad_shapes_and_labels_raise():
    m = HungarianMatcher()
    tgt = _target([0], [[0.5, 0.5, 0.2, 0.2]])
    with pytest.raises(ValueError):
        m({"pred_logits": torch.zeros(1, 3, 2), "pred_boxes": torch.zeros(1, 3, 5)}, [tgt])
    with pytest.raises(ValueError):
        m({"pred_logits": torch.zeros(2, 3, 2), "pred_boxes": torch.zeros(2, 3, 4)}, [tgt])
    with pytest.raises(ValueError, match="labels"):
        m({"pred_logits": torch.zeros(1, 3, 2), "pred_boxes": torch.rand(1, 3, 4)}, [_target([2], [[0.5, 0.5, 0.2, 0.2]])])


def test_keyword_only_constructor():
    with pytest.raises(TypeError):
        HungarianMatcher(2.0, 5.0, 2.0)  # noqa
    with pytest.raises(TypeError):
        HungarianMatcher(cost_clas=2.0)  # misspelled
    with pytest.raises(ValueError):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)


def test_batched_matching_of_several_sets_equals_per_image_blocks_of_the_full_cost():
    """start_matching on M stacked sets (padded per-image costs) == LSA on the diagonal blocks of compute_cost."""
    gen = torch.Generator().manual_seed(12)
    num_sets, bs, q, num_classes = 3, 4, 7, 5
    sizes = [3, 0, 7, 1]  # an empty image, one with as many targets as queries
    targets = [_random_targets(gen, n, num_classes) for n in sizes]
    logits = torch.randn(num_sets, bs, q, num_classes, generator=gen, dtype=torch.float64)
    boxes = torch.rand(num_sets, bs, q, 4, generator=gen, dtype=torch.float64) * 0.5 + 0.1
    m = HungarianMatcher(cost_class=1.5, cost_bbox=4.0, cost_giou=3.0)
    padded = PaddedTargets.from_list(targets, torch.device("cpu"))
    assert padded.sizes == sizes and padded.labels.shape == (bs, 7) and (padded.labels[1] == -1).all()
    got = m.start_matching(logits, boxes, padded).result()
    assert len(got) == num_sets and all(len(per_image) == bs for per_image in got)
    offsets = np.cumsum([0] + sizes)
    for s in range(num_sets):
        full = m.compute_cost({"pred_logits": logits[s], "pred_boxes": boxes[s]}, targets)
        for b, n in enumerate(sizes):
            src, tgt = got[s][b]
            assert src.dtype == np.int64 and len(src) == len(tgt) == min(q, n)
            if n == 0:
                continue
            block = full[b, :, offsets[b]:offsets[b + 1]].numpy()
            rows, cols = linear_sum_assignment(block)
            assert np.array_equal(src, rows) and np.array_equal(tgt, cols)
            # and the single-set public API agrees
            (s1, t1) = m({"pred_logits": logits[s], "pred_boxes": boxes[s]}, targets)[b]
            assert np.array_equal(s1.numpy(), src) and np.array_equal(t1.numpy(), tgt)


def test_batched_matching_checks_labels_and_shapes():
    m = HungarianMatcher()
    padded = PaddedTargets.from_list([_target([4], [[0.5, 0.5, 0.2, 0.2]])], torch.device("cpu"))
    with pytest.raises(ValueError, match="labels"):
        m.start_matching(torch.zeros(2, 1, 3, 4), torch.rand(2, 1, 3, 4), padded)
    with pytest.raises(ValueError, match="M, B, Q"):
        m.start_matching(torch.zeros(1, 3, 4), torch.rand(1, 3, 4), padded)
    with pytest.raises(ValueError, match="targets for a batch"):
        m.start_matching(torch.zeros(1, 2, 3, 5), torch.rand(1, 2, 3, 4), padded)


@pytest.mark.parametrize("eps", [1e-10, -1e-10])
def test_float64_costs_are_solved_in_float64(eps):
    """fp64 costs that differ below fp32 resolution still give the exact optimum (no rounding to fp32)."""
    # L1 cost only, along x: queries at 0.3 and 0.7, targets at 0.5 + eps and 0.5 (equal in fp32). Matching
    # query 0 to target 0 costs 2 * eps more than the crossed assignment.
    m = HungarianMatcher(cost_class=0.0, cost_bbox=1.0, cost_giou=0.0)
    boxes = torch.tensor([[0.3, 0.5, 0.2, 0.2], [0.7, 0.5, 0.2, 0.2]], dtype=torch.float64)
    targets = [_target([0, 0], [[0.5 + eps, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]], dtype=torch.float64)]
    logits = torch.zeros(1, 1, 2, 1, dtype=torch.float64)
    pending = m.start_matching(logits, boxes[None, None], PaddedTargets.from_list(targets, torch.device("cpu")))
    assert pending._cost.dtype == torch.float64
    expected = [1, 0] if eps > 0 else [0, 1]
    (((src, tgt),),) = pending.result()
    assert src.tolist() == [0, 1] and tgt.tolist() == expected
    ((src, tgt),) = m({"pred_logits": logits[0], "pred_boxes": boxes[None]}, targets)
    assert src.tolist() == [0, 1] and tgt.tolist() == expected
