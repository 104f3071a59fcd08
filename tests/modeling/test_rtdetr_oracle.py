"""The whole detector against HF transformers' RT-DETR (same weights, float64)."""

import pytest
import torch

from detectron2.structures import Instances

from .hf_oracle import as_detectron2_batch, build_hf_detector, build_ours, hf_loss_terms, hf_targets, load_hf_into

pytest.importorskip("transformers")
TOL = 1e-5


def _pair(size, **kw):
    hf = build_hf_detector(size, **kw)
    ours = build_ours(size, **({"num_denoising": 0} if kw.get("num_denoising") == 0 else {})).double()
    report = load_hf_into(ours, hf)
    return hf, ours, report


@pytest.fixture(scope="module")
def r18_pair():
    return _pair("r18")


@pytest.fixture(scope="module")
def r50_pair():
    return _pair("r50")


def _eval_compare(hf, ours, h, w, seed=0, batch=1):
    hf.eval()
    ours.eval()
    x = torch.rand(batch, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = hf(pixel_values=x)
        out = ours.forward_network(x)
    assert out["pred_logits"].shape == ref.logits.shape == (batch, 300, 80)
    assert ref.logits.std() > 0.1 and ref.pred_boxes.std() > 0.01  # not a trivial comparison
    assert (out["pred_logits"] - ref.logits).abs().max().item() <= TOL
    assert (out["pred_boxes"] - ref.pred_boxes).abs().max().item() <= TOL
    return x, ref


@pytest.mark.parametrize("hw", [(640, 640), (480, 640)])
def test_r18_eval_outputs_equal_hf(r18_pair, hw):
    hf, ours, report = r18_pair
    assert not report.reinitialized
    _eval_compare(hf, ours, *hw)


@pytest.mark.parametrize("hw", [(640, 640), (480, 640)])
def test_r50_eval_outputs_equal_hf(r50_pair, hw):
    hf, ours, _ = r50_pair
    _eval_compare(hf, ours, *hw)


def test_detectron2_inference_matches_hf_postprocessing(r18_pair):
    """forward(list[dict]) -> Instances in original-image pixels == HF post-processing (top-300)."""
    hf, ours, _ = r18_pair
    x, ref = _eval_compare(hf, ours, 320, 480, seed=3, batch=2)
    # original images of 240x360 (the network input is a resize of them)
    batched = [{"image": x[i] * 255.0, "height": 240, "width": 360} for i in range(2)]
    with torch.no_grad():
        results = ours(batched)
    from transformers.models.rt_detr.image_processing_rt_detr import RTDetrImageProcessor

    processed = RTDetrImageProcessor().post_process_object_detection(ref, threshold=-1.0, target_sizes=[(240, 360)] * 2)
    for res, hf_res in zip(results, processed):
        inst = res["instances"]
        assert isinstance(inst, Instances) and inst.image_size == (240, 360)
        assert len(inst) == 300
        torch.testing.assert_close(inst.scores.double(), hf_res["scores"], rtol=0, atol=1e-6)
        assert torch.equal(inst.pred_classes, hf_res["labels"])
        # detector_postprocess clips to the image; HF does not
        hf_boxes = hf_res["boxes"].clone()
        hf_boxes[:, 0::2] = hf_boxes[:, 0::2].clamp(0, 360)
        hf_boxes[:, 1::2] = hf_boxes[:, 1::2].clamp(0, 240)
        torch.testing.assert_close(inst.pred_boxes.tensor.double(), hf_boxes, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size,L", [("r18", 3), ("r50", 6)])
def test_training_losses_equal_hf_without_denoising(size, L):
    hf, ours, _ = _pair(size, num_denoising=0)
    hf.train()
    ours.train()
    x = torch.rand(2, 3, 320, 320, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    labels = hf_targets([3, 5])
    ref = hf(pixel_values=x, labels=labels)
    losses = ours(as_detectron2_batch(x, labels))
    hf_terms = hf_loss_terms(ref.loss_dict, L)  # HF's loss_dict holds weighted terms, like ours
    assert set(hf_terms) == set(losses), (sorted(hf_terms), sorted(losses))
    assert len(losses) == 3 * (1 + (L - 1) + 1)
    for k in losses:
        assert abs(losses[k].item() - hf_terms[k].item()) <= 1e-6 * max(1.0, abs(hf_terms[k].item())), k
    total = sum(losses.values())
    assert abs(total.item() - ref.loss.item()) <= 1e-6 * ref.loss.item()
