"""GPU-only checks (marked `gpu`; CI deselects them, run on a GPU machine with `pytest -m gpu`)."""

import pytest
import torch

from detectron2.config import LazyConfig, instantiate

pytestmark = pytest.mark.gpu


def _model(name="r50"):
    torch.manual_seed(0)
    return instantiate(LazyConfig.load(f"configs/common/models/rtdetr_{name}.py").model).cuda()


def test_bf16_inference_matches_fp32_features():
    """bf16 autocast changes the backbone+encoder features by no more than bf16 rounding allows.

    (Detections of a randomly initialised model are near-ties, so they are not compared here; the
    benchmark compares trained detections.)
    """
    model = _model().eval()
    x = [{"image": torch.randint(0, 256, (3, 640, 640), dtype=torch.uint8, device="cuda")} for _ in range(2)]
    images = model.preprocess_image(x).tensor
    with torch.no_grad():
        feats = [model.backbone(images)[k] for k in ("res3", "res4", "res5")]
        ref = model.encoder(feats)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast = model.encoder([model.backbone(images)[k] for k in ("res3", "res4", "res5")])
            out = model.forward_network(images)
    for a, b in zip(ref, fast):
        rel = (a - b.float()).norm() / a.norm()
        assert rel < 0.05, rel
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_boxes"]).all()


def test_bf16_training_step_on_cuda():
    from tests.modeling.test_rtdetr import make_inputs

    model = _model("r18").train()
    batch = make_inputs([(640, 640)] * 4, [3, 0, 12, 1], num_classes=80)
    for b in batch:
        b["image"] = b["image"].cuda()
        b["instances"] = b["instances"].to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = model(batch)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
