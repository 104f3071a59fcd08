"""Tests of neo_rtdetr.modeling.criterion.rtdetr_criterion.RTDETRCriterion (CPU, tiny inputs).

The HF transformers RT-DETR loss (transformers.loss.loss_rt_detr.RTDetrLoss) is used as an oracle; everything else
is checked against values computed by hand in the test.
"""

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from neo_rtdetr.modeling.criterion import HungarianMatcher, RTDETRCriterion

L = 3  # decoder layers in the synthetic outputs

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")


# ---------------------------------------------------------------- builders
def _criterion(num_classes, **kw):
    return RTDETRCriterion(num_classes=num_classes, matcher=HungarianMatcher(), **kw)


def _targets(gen, sizes, num_classes, dtype=torch.float32, label=None):
    out = []
    for n in sizes:
        cxcy = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
        labels = torch.randint(0, num_classes, (n,), generator=gen) if label is None else torch.full((n,), label)
        out.append({"labels": labels.long(), "boxes": torch.cat([cxcy, wh], 1).to(dtype)})
    return out


def _pred(gen, bs, q, num_classes, targets, dtype):
    """Leaf tensors (requires_grad); some queries are jittered copies of the targets so IoUs are non-trivial."""
    logits = torch.randn(bs, q, num_classes, generator=gen) * 2
    boxes = torch.cat([torch.rand(bs, q, 2, generator=gen), torch.rand(bs, q, 2, generator=gen) * 0.4 + 0.05], -1)
    for b, t in enumerate(targets):
        n = min(len(t["labels"]), q // 2)
        if n:
            boxes[b, :n] = (t["boxes"][:n].float() + 0.03 * torch.randn(n, 4, generator=gen)).clamp(0.02, 0.98)
    return {
        "pred_logits": logits.to(dtype).requires_grad_(),
        "pred_boxes": boxes.to(dtype).requires_grad_(),
    }


def _outputs(gen, targets, num_classes, q=8, dtype=torch.float32, layers=L, dn=True):
    """Training-style outputs: main + aux (L-1) + enc + dn (L) + dn_meta, CDN layout of the official code."""
    bs = len(targets)
    out = _pred(gen, bs, q, num_classes, targets, dtype)
    out["aux_outputs"] = [_pred(gen, bs, q, num_classes, targets, dtype) for _ in range(layers - 1)]
    out["enc_outputs"] = _pred(gen, bs, q, num_classes, targets, dtype)
    if dn:
        sizes = [len(t["labels"]) for t in targets]
        max_gt = max(sizes)
        if max_gt == 0:  # v2-style dummy group for a GT-empty batch
            group, num_dn = 1, 1
        else:
            group = max(1, 6 // max_gt)
            num_dn = 2 * max_gt * group
        pos = [
            torch.cat([g * 2 * max_gt + torch.arange(n) for g in range(group)]) if n else torch.zeros(0, dtype=torch.long)
            for n in sizes
        ]
        out["dn_outputs"] = [_pred(gen, bs, num_dn, num_classes, [{"labels": []}] * bs, dtype) for _ in range(layers)]
        # Make the positive dn queries jittered copies of their GT (like real dn queries).
        for o in out["dn_outputs"]:
            with torch.no_grad():
                for b, t in enumerate(targets):
                    if len(pos[b]):
                        gt = t["boxes"].float().tile(group, 1)
                        o["pred_boxes"][b, pos[b]] = (gt + 0.03 * torch.randn(gt.shape, generator=gen)).clamp(0.02, 0.98).to(dtype)
        out["dn_meta"] = {"dn_positive_idx": pos, "dn_num_group": group, "dn_num_split": [num_dn, q]}
    return out


def _all_outputs(out):
    yield out
    yield from out.get("aux_outputs", [])
    if "enc_outputs" in out:
        yield out["enc_outputs"]
    yield from out.get("dn_outputs", [])


def _detached(outputs, dtype=None):
    """Copy of the outputs with detached (optionally re-typed) prediction tensors."""

    def conv(o):
        return {k: (o[k].detach() if dtype is None else o[k].detach().to(dtype)) for k in ("pred_logits", "pred_boxes")}

    d = conv(outputs)
    for key in ("aux_outputs", "dn_outputs"):
        if key in outputs:
            d[key] = [conv(o) for o in outputs[key]]
    if "enc_outputs" in outputs:
        d["enc_outputs"] = conv(outputs["enc_outputs"])
    if "dn_meta" in outputs:
        d["dn_meta"] = outputs["dn_meta"]
    return d


def _hf_losses(outputs, targets, num_classes):
    """HF transformers RTDetrLoss on the same tensors, names mapped to ours (HF's _aux_{L-1} is our _enc_0)."""
    from transformers import RTDetrConfig
    from transformers.loss.loss_rt_detr import RTDetrLoss

    def conv(o):
        return {"logits": o["pred_logits"].detach(), "pred_boxes": o["pred_boxes"].detach()}

    hf_out = conv(outputs)
    aux = [conv(o) for o in outputs.get("aux_outputs", [])]
    n_aux = len(aux)
    if "enc_outputs" in outputs:
        aux.append(conv(outputs["enc_outputs"]))
    if aux:
        hf_out["auxiliary_outputs"] = aux
    if "dn_outputs" in outputs:
        hf_out["dn_auxiliary_outputs"] = [conv(o) for o in outputs["dn_outputs"]]
        hf_out["denoising_meta_values"] = outputs["dn_meta"]
    hf_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    hf = RTDetrLoss(RTDetrConfig(num_labels=num_classes))
    res = hf(hf_out, hf_targets)
    renamed = {}
    for k, v in res.items():
        if "enc_outputs" in outputs and k.endswith(f"_aux_{n_aux}"):
            k = k[: -len(f"_aux_{n_aux}")] + "_enc_0"
        renamed[k] = v
    return renamed


def _expected_keys(layers=L, dn=True, enc=True):
    keys = {"loss_vfl", "loss_bbox", "loss_giou"}
    for t in ("vfl", "bbox", "giou"):
        keys |= {f"loss_{t}_aux_{i}" for i in range(layers - 1)}
        if enc:
            keys.add(f"loss_{t}_enc_0")
        if dn:
            keys |= {f"loss_{t}_dn_{i}" for i in range(layers)}
    return keys


def _assert_match_hf(ours, hf, rtol):
    assert set(ours) == set(hf)
    for k in hf:
        a, b = ours[k].item(), hf[k].item()
        assert a == pytest.approx(b, rel=rtol, abs=1e-12), k


# ---------------------------------------------------------------- oracle comparison
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_matches_hf_oracle(dtype, rtol):
    gen = torch.Generator().manual_seed(0)
    num_classes = 5
    targets = _targets(gen, [3, 0, 2], num_classes, dtype=dtype)
    outputs = _outputs(gen, targets, num_classes, dtype=dtype)
    ours = _criterion(num_classes)(outputs, targets)
    assert set(ours) == _expected_keys() and len(ours) == 21
    for k, v in ours.items():
        assert k.startswith("loss_") and v.dim() == 0 and torch.isfinite(v)
    hf = _hf_losses(outputs, targets, num_classes)
    _assert_match_hf(ours, hf, rtol)
    # The synthetic data must exercise non-trivial terms.
    assert float(ours["loss_vfl"]) > 0 and float(ours["loss_giou_dn_0"]) > 0 and float(ours["loss_bbox_enc_0"]) > 0


def test_plain_matcher_module_gives_the_same_losses():
    """A matcher without the batched API (called once per set) gives the same terms as the batched path."""

    class PlainMatcher(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = HungarianMatcher()
            self.calls = 0

        def forward(self, outputs, targets):
            self.calls += 1
            return self.inner(outputs, targets)

    gen = torch.Generator().manual_seed(3)
    targets = _targets(gen, [3, 0, 2], 4, dtype=torch.float64)
    outputs = _outputs(gen, targets, 4, dtype=torch.float64)
    plain = PlainMatcher()
    got = RTDETRCriterion(num_classes=4, matcher=plain)(outputs, targets)
    ref = _criterion(4)(outputs, targets)
    assert plain.calls == 1 + (L - 1) + 1 and list(got) == list(ref)
    for k in ref:
        assert float(got[k]) == pytest.approx(float(ref[k]), rel=1e-12, abs=1e-15), k


def test_check_targets_false_skips_value_validation_only():
    gen = torch.Generator().manual_seed(4)
    targets = _targets(gen, [2], 3)
    outputs = _pred(gen, 1, 5, 3, targets, torch.float32)
    crit = _criterion(3)
    pixel = [{"labels": targets[0]["labels"], "boxes": targets[0]["boxes"] * 640}]
    with pytest.raises(ValueError, match="normalised"):
        crit(outputs, pixel)
    crit(outputs, pixel, check_targets=False)  # the caller vouched for them: no host-side value check
    with pytest.raises(ValueError, match="targets for a batch"):
        crit(outputs, targets + targets, check_targets=False)


def test_eval_outputs_only_main_terms_match_hf():
    gen = torch.Generator().manual_seed(1)
    targets = _targets(gen, [2, 4], 3, dtype=torch.float64)
    outputs = _pred(gen, 2, 6, 3, targets, torch.float64)
    ours = _criterion(3)(outputs, targets)
    assert set(ours) == {"loss_vfl", "loss_bbox", "loss_giou"}
    _assert_match_hf(ours, _hf_losses(outputs, targets, 3), 1e-9)


def test_custom_weights_and_alpha_gamma():
    gen = torch.Generator().manual_seed(2)
    targets = _targets(gen, [2, 1], 4, dtype=torch.float64)
    outputs = _outputs(gen, targets, 4, dtype=torch.float64)
    base = _criterion(4, weight_dict={"loss_vfl": 1.0, "loss_bbox": 1.0, "loss_giou": 1.0})(outputs, targets)
    w = {"loss_vfl": 3.0, "loss_bbox": 0.5, "loss_giou": 0.0}
    weighted = _criterion(4, weight_dict=w)(outputs, targets)
    for k, v in weighted.items():
        kind = "loss_" + k.split("_")[1]
        assert float(v) == pytest.approx(w[kind] * float(base[k]), rel=1e-12, abs=1e-15), k
    # alpha/gamma reach the VFL negatives: alpha 0 leaves only the positive part, which is smaller.
    a0 = _criterion(4, alpha=0.0)(outputs, targets)
    default = _criterion(4)(outputs, targets)
    assert float(a0["loss_vfl"]) < float(default["loss_vfl"])
    assert float(a0["loss_bbox"]) == float(default["loss_bbox"])


# ---------------------------------------------------------------- hand-computed values
def _hand_case(dtype=torch.float64):
    """1 image, Q=2, C=2, one GT of class 1 (= C-1). Query 0 overlaps the GT with IoU 0.5."""
    logits = torch.tensor([[[-2.0, 1.0], [0.5, -1.0]]], dtype=dtype, requires_grad=True)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.1], [0.1, 0.1, 0.05, 0.05]]], dtype=dtype, requires_grad=True)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=dtype)}]
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


def test_vfl_l1_giou_hand_computed():
    outputs, targets = _hand_case()
    losses = _criterion(2)(outputs, targets)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    x = [[-2.0, 1.0], [0.5, -1.0]]
    iou = 0.5  # pred (0.4,0.45,0.6,0.55) vs gt (0.4,0.4,0.6,0.6): inter 0.02, union 0.04
    expected = 0.0
    for q in range(2):
        for c in range(2):
            t = iou if (q, c) == (0, 1) else 0.0
            w = t if (q, c) == (0, 1) else 0.75 * sig(x[q][c]) ** 2
            bce = -(t * math.log(sig(x[q][c])) + (1 - t) * math.log(1 - sig(x[q][c])))
            expected += w * bce
    expected /= 1.0  # num_boxes = 1 (mean over Q times Q = sum)
    assert float(losses["loss_vfl"]) == pytest.approx(expected, rel=1e-12)
    assert float(losses["loss_bbox"]) == pytest.approx(5.0 * 0.1, rel=1e-12)  # |0.1 - 0.2| on h only
    assert float(losses["loss_giou"]) == pytest.approx(2.0 * (1 - 0.5), rel=1e-12)  # hull == union -> GIoU = IoU


def test_positive_weight_is_iou_not_one():
    outputs, targets = _hand_case()
    losses = _criterion(2)(outputs, targets)
    losses["loss_vfl"].backward()
    g = outputs["pred_logits"].grad[0]
    sig = torch.sigmoid(outputs["pred_logits"].detach()[0])
    iou = 0.5
    # d/dx [w * BCE(x, t)] = w * (sigmoid(x) - t) with w = t = IoU for the positive entry (weight detached).
    assert float(g[0, 1]) == pytest.approx(iou * (float(sig[0, 1]) - iou), rel=1e-12)
    assert float(g[0, 1]) != pytest.approx(1.0 * (float(sig[0, 1]) - iou), rel=1e-3)
    # Negative entries: w = 0.75 * sigmoid^2 (detached), target 0.
    assert float(g[1, 0]) == pytest.approx(0.75 * float(sig[1, 0]) ** 3, rel=1e-12)
    assert float(g[0, 0]) == pytest.approx(0.75 * float(sig[0, 0]) ** 3, rel=1e-12)
    # IoU target is detached: VFL gives no gradient to the boxes.
    assert outputs["pred_boxes"].grad is None or torch.all(outputs["pred_boxes"].grad == 0)


# ---------------------------------------------------------------- dtype / AMP
@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float16])
def test_losses_fp32_under_autocast(in_dtype):
    gen = torch.Generator().manual_seed(3)
    targets = _targets(gen, [2, 3], 4)
    outputs = _outputs(gen, targets, 4, dtype=in_dtype)
    crit = _criterion(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = crit(outputs, targets)
    assert set(losses) == _expected_keys()
    for k, v in losses.items():
        assert v.dtype == torch.float32, k
        assert torch.isfinite(v), k
    # Same numbers as an fp32 computation on the up-cast values outside autocast.
    ref = crit(_detached(outputs, torch.float32), targets)
    for k in ref:
        assert float(losses[k]) == pytest.approx(float(ref[k]), rel=1e-6), k
    sum(losses.values()).backward()
    for o in _all_outputs(outputs):
        assert o["pred_logits"].grad is not None and o["pred_logits"].grad.dtype == in_dtype
        assert o["pred_boxes"].grad is not None and torch.isfinite(o["pred_boxes"].grad.float()).all()


def test_autocast_disabled_inside_forward():
    """The whole criterion (matcher included) runs with autocast off, as the official det_engine does."""
    states = []

    class SpyMatcher(HungarianMatcher):
        def pairwise_cost(self, *args):
            states.append(torch.is_autocast_enabled("cpu"))
            return super().pairwise_cost(*args)

    gen = torch.Generator().manual_seed(11)
    targets = _targets(gen, [2], 3)
    outputs = _outputs(gen, targets, 3, dtype=torch.bfloat16)
    crit = RTDETRCriterion(num_classes=3, matcher=SpyMatcher())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        crit(outputs, targets)
        assert torch.is_autocast_enabled("cpu")  # restored on exit
    # main, aux and enc are matched in one batched cost computation (dn uses the fixed matching)
    assert states == [False]


def test_seed_bug_vfl_amp_index_put():
    """fp16 / bf16 logits with fp32 IoUs under autocast used to hit an index_put dtype clash."""
    gen = torch.Generator().manual_seed(4)
    targets = _targets(gen, [3, 1], 3)
    outputs = _outputs(gen, targets, 3, dtype=torch.float16)
    # Mixed precisions inside one output set, as an AMP model can produce.
    outputs["pred_boxes"] = outputs["pred_boxes"].detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _criterion(3)(outputs, targets)  # must not raise "Index put requires ... dtypes match"
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_vfl"]) > 0
    sum(losses.values()).backward()
    assert outputs["pred_logits"].grad is not None and outputs["pred_boxes"].grad is not None


# ---------------------------------------------------------------- background class / one_hot
def test_seed_bug_background_class_one_hot(monkeypatch):
    """Labels == num_classes - 1 work, and one_hot (if used at all) never sees the no-object index num_classes."""
    real_one_hot = F.one_hot

    def strict_one_hot(tensor, num_classes=-1):
        assert num_classes == -1 or tensor.numel() == 0 or int(tensor.max()) < num_classes
        return real_one_hot(tensor, num_classes)

    num_classes = 4
    gen = torch.Generator().manual_seed(5)
    targets = _targets(gen, [2, 0, 3], num_classes, dtype=torch.float64, label=num_classes - 1)
    outputs = _outputs(gen, targets, num_classes, dtype=torch.float64)
    monkeypatch.setattr(F, "one_hot", strict_one_hot)
    ours = _criterion(num_classes)(outputs, targets)
    monkeypatch.setattr(F, "one_hot", real_one_hot)
    hf = _hf_losses(outputs, targets, num_classes)  # HF uses one_hot(num_classes + 1)[..., :-1]
    _assert_match_hf(ours, hf, 1e-9)
    # The positive target really sits in the last class column: its logit gets the IoU-weighted gradient.
    ours["loss_vfl"].backward()
    g = outputs["pred_logits"].grad
    assert g[..., num_classes - 1].abs().sum() > 0


# ---------------------------------------------------------------- empty images / batches
def test_empty_image_and_all_empty_batch_give_finite_connected_terms():
    gen = torch.Generator().manual_seed(6)
    crit = _criterion(3)
    # Mixed batch with an empty image.
    targets = _targets(gen, [0, 2], 3)
    outputs = _outputs(gen, targets, 3)
    losses = crit(outputs, targets)
    assert set(losses) == _expected_keys()
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for o in _all_outputs(outputs):
        assert o["pred_logits"].grad is not None and o["pred_boxes"].grad is not None

    # No GT anywhere in the batch (v2-style dummy dn group).
    targets = _targets(gen, [0, 0], 3)
    outputs = _outputs(gen, targets, 3)
    losses = crit(outputs, targets)
    assert set(losses) == _expected_keys()
    for k, v in losses.items():
        assert torch.isfinite(v) and v.requires_grad, k
        if "bbox" in k or "giou" in k:
            assert float(v) == 0.0, k
    # VFL on all-negative targets = sum(alpha * p^gamma * BCE(x, 0)) / max(num_boxes, 1) (num_boxes -> 1).
    x = outputs["pred_logits"].detach().double()
    p = torch.sigmoid(x)
    expected = float((0.75 * p**2 * -torch.log(1 - p)).sum())
    assert float(losses["loss_vfl"]) == pytest.approx(expected, rel=1e-5)
    sum(losses.values()).backward()
    for o in _all_outputs(outputs):
        assert o["pred_logits"].grad is not None and torch.isfinite(o["pred_logits"].grad).all()
        assert o["pred_logits"].grad.abs().sum() > 0
        assert o["pred_boxes"].grad is not None and torch.isfinite(o["pred_boxes"].grad).all()


# ---------------------------------------------------------------- num_boxes normalisation
def _dup(outputs):
    def cat(o):
        return {k: torch.cat([o[k], o[k]]).detach() for k in ("pred_logits", "pred_boxes")}

    d = cat(outputs)
    d["aux_outputs"] = [cat(o) for o in outputs["aux_outputs"]]
    d["enc_outputs"] = cat(outputs["enc_outputs"])
    d["dn_outputs"] = [cat(o) for o in outputs["dn_outputs"]]
    meta = dict(outputs["dn_meta"])
    meta["dn_positive_idx"] = list(meta["dn_positive_idx"]) * 2
    d["dn_meta"] = meta
    return d


def test_num_boxes_normalisation_batch_duplication():
    gen = torch.Generator().manual_seed(7)
    targets = _targets(gen, [3, 1, 0], 4, dtype=torch.float64)
    outputs = _outputs(gen, targets, 4, dtype=torch.float64)
    crit = _criterion(4)
    single = crit(outputs, targets)
    double = crit(_dup(outputs), targets + targets)
    for k in single:
        assert float(double[k]) == pytest.approx(float(single[k]), rel=1e-10), k


def test_num_boxes_all_reduced_and_averaged_over_ranks(monkeypatch):
    gen = torch.Generator().manual_seed(8)
    targets = _targets(gen, [2, 2], 3, dtype=torch.float64)  # 4 local boxes
    outputs = _outputs(gen, targets, 3, dtype=torch.float64)
    crit = _criterion(3)
    local = crit(outputs, targets)
    seen = []

    def fake_all_reduce(t, *a, **k):
        seen.append(float(t))
        t += 8.0  # the other rank holds 8 boxes -> global mean (4 + 8) / 2 = 6

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    reduced = crit(outputs, targets)
    assert seen == [4.0]
    for k in local:
        assert float(reduced[k]) == pytest.approx(float(local[k]) * 4.0 / 6.0, rel=1e-10), k


# ---------------------------------------------------------------- input validation / seed bugs
def test_seed_bug_pixel_boxes_rejected():
    gen = torch.Generator().manual_seed(9)
    targets = _targets(gen, [2], 3)
    outputs = _pred(gen, 1, 5, 3, targets, torch.float32)
    crit = _criterion(3)
    pixel = [{"labels": targets[0]["labels"], "boxes": targets[0]["boxes"] * 640}]
    with pytest.raises(ValueError, match="normalised"):
        crit(outputs, pixel)
    for bad in ([0.5, 0.5, 0.0, 0.2], [0.5, 0.5, 0.2, -0.1], [-0.2, 0.5, 0.2, 0.2], [0.5, float("nan"), 0.2, 0.2]):
        with pytest.raises(ValueError):
            crit(outputs, [{"labels": torch.tensor([0]), "boxes": torch.tensor([bad])}])
    # Boundary values are fine.
    ok = crit(outputs, [{"labels": torch.tensor([0]), "boxes": torch.tensor([[1.0, 0.0, 1.0, 1.0]])}])
    assert all(torch.isfinite(v) for v in ok.values())


def test_seed_bug_unknown_kwargs_rejected():
    m = HungarianMatcher()
    with pytest.raises(TypeError):
        RTDETRCriterion(3, m)  # noqa: positional
    with pytest.raises(TypeError):
        RTDETRCriterion(num_classes=3, matcher=m, alpah=0.5)  # misspelled
    with pytest.raises(TypeError):
        RTDETRCriterion(num_classes=3, matcher=m, weight_dct={"loss_vfl": 1.0})
    with pytest.raises(TypeError):
        HungarianMatcher(cost_gou=2.0)
    with pytest.raises(ValueError):  # misspelled weight key is not silently dropped
        RTDETRCriterion(num_classes=3, matcher=m, weight_dict={"loss_vfl": 1.0, "loss_bbox": 5.0, "loss_gio": 2.0})
    with pytest.raises(ValueError):  # missing key
        RTDETRCriterion(num_classes=3, matcher=m, weight_dict={"loss_vfl": 1.0})


def test_shape_and_meta_checks():
    gen = torch.Generator().manual_seed(10)
    targets = _targets(gen, [2, 1], 3)
    crit = _criterion(3)
    # Wrong number of classes in the logits.
    with pytest.raises(ValueError, match="pred_logits"):
        crit(_pred(gen, 2, 5, 4, targets, torch.float32), targets)
    # Wrong box dim in an aux output.
    out = _outputs(gen, targets, 3)
    out["aux_outputs"][1]["pred_boxes"] = out["aux_outputs"][1]["pred_boxes"][..., :3]
    with pytest.raises(ValueError, match="aux_outputs"):
        crit(out, targets)
    # Batch size mismatch.
    with pytest.raises(ValueError):
        crit(_pred(gen, 2, 5, 3, targets, torch.float32), targets[:1])
    # Labels out of range (e.g. un-remapped COCO ids).
    bad = [{"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}]
    with pytest.raises(ValueError, match="labels"):
        crit(_pred(gen, 1, 5, 3, bad, torch.float32), bad)
    # dn_positive_idx of the wrong length / out of range, dn outputs without meta.
    out = _outputs(gen, targets, 3)
    out["dn_meta"]["dn_positive_idx"][0] = out["dn_meta"]["dn_positive_idx"][0][:-1]
    with pytest.raises(ValueError, match="dn_positive_idx"):
        crit(out, targets)
    out = _outputs(gen, targets, 3)
    out["dn_meta"]["dn_positive_idx"][1] = out["dn_meta"]["dn_positive_idx"][1] + 100
    with pytest.raises(ValueError, match="dn_positive_idx"):
        crit(out, targets)
    out = _outputs(gen, targets, 3)
    del out["dn_meta"]
    with pytest.raises(ValueError, match="dn_meta"):
        crit(out, targets)


def test_dn_index_value_check_runs_on_the_host_only(monkeypatch):
    """Off the CPU the dn indices are neither value-checked nor concatenated (no device work for nothing)."""
    targets = [{"labels": torch.zeros(n, dtype=torch.long)} for n in (2, 1)]
    group, num_dn = 2, 12
    meta = {"dn_num_group": group, "dn_num_split": [num_dn, 5]}
    calls = []
    real_cat = torch.cat

    def counting_cat(*args, **kwargs):
        calls.append(1)
        return real_cat(*args, **kwargs)

    monkeypatch.setattr(torch, "cat", counting_cat)
    # out of range, but on a non-CPU device (meta): shapes checked, values not, nothing concatenated
    meta["dn_positive_idx"] = [torch.full((n * group,), 100, device="meta") for n in (2, 1)]
    RTDETRCriterion._check_dn(meta, targets, num_dn)
    assert not calls
    meta["dn_positive_idx"] = [torch.full((n * group,), 100) for n in (2, 1)]
    with pytest.raises(ValueError, match="dn_positive_idx must index"):
        RTDETRCriterion._check_dn(meta, targets, num_dn)
