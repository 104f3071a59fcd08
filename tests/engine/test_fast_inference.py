"""FastInference (deployed copy, reduced precision, channels-last, CUDA graphs) on the CPU.

On the CPU there are no graphs; what is checked here is that the deployed/cast/channels-last copy computes the
model's function (float32: to float rounding; bf16: the same detections within bf16 tolerance) and keeps the
Detectron2 contract. The CUDA-graph replay is checked in tests/gpu.
"""

import copy

import pytest
import torch

from neo_rtdetr.engine.fast_inference import FastInference
from neo_rtdetr.utils.detection_agreement import detection_agreement

from ..modeling.hf_oracle import randomize
from ..modeling.test_rtdetr import make_inputs, tiny_model


def _model():
    torch.manual_seed(0)
    model = tiny_model()
    randomize(model, seed=5)
    return model.eval()


def _inputs(n=2, size=(96, 128)):
    batch = make_inputs([size] * n, [0] * n)
    for b in batch:
        del b["instances"]
    return batch


@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_fast_inference_equals_the_model(channels_last):
    model = _model()
    batch = _inputs()
    with torch.no_grad():
        ref = model(copy.deepcopy(batch))
    fast = FastInference(model, dtype=torch.float32, channels_last=channels_last)
    got = fast(batch)
    assert len(got) == len(ref) == 2
    for r, g in zip(ref, got):
        r, g = r["instances"], g["instances"]
        assert r.image_size == g.image_size and len(r) == len(g) > 0
        torch.testing.assert_close(g.scores, r.scores, rtol=0, atol=1e-5)
        assert torch.equal(g.pred_classes, r.pred_classes)
        torch.testing.assert_close(g.pred_boxes.tensor, r.pred_boxes.tensor, rtol=0, atol=1e-3)
    # the model itself is untouched (a deep copy was deployed)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert fast([]) == []


def test_bf16_fast_inference_features_within_bf16_tolerance():
    """The bf16 copy computes the same features as the float32 model up to bf16 rounding.

    (Detections of a random-weight model are near-ties that any rounding reorders, so detection-level agreement
    is measured on a trained model, on the GPU, by tools/benchmark.py.)
    """
    model = _model()
    fast = FastInference(model, dtype=torch.bfloat16)
    batch = _inputs(n=2)
    images = model.preprocess_image(batch).tensor
    with torch.no_grad():
        ref = model.encoder([model.backbone(images)[k] for k in ("res3", "res4", "res5")])
        x = images.to(torch.bfloat16, memory_format=torch.channels_last)
        got = fast.net.encoder([fast.net.backbone(x)[k] for k in ("res3", "res4", "res5")])
        dets = fast(batch)
    for a, b in zip(ref, got):
        assert b.dtype == torch.bfloat16
        assert float((a - b.float()).norm() / a.norm()) < 0.03
    inst = dets[0]["instances"]
    assert inst.scores.dtype == torch.float32 and torch.isfinite(inst.scores).all()
    assert torch.isfinite(inst.pred_boxes.tensor).all() and len(inst) > 0


def test_detection_agreement_counts_class_box_and_score():
    from detectron2.structures import Boxes, Instances

    ref = Instances((100, 100))
    ref.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 80.0]]))
    ref.scores = torch.tensor([0.9, 0.8])
    ref.pred_classes = torch.tensor([1, 2])
    same = copy.deepcopy(ref)
    assert detection_agreement(ref, same) == 1.0
    wrong_class = copy.deepcopy(ref)
    wrong_class.pred_classes = torch.tensor([1, 3])
    assert detection_agreement(ref, wrong_class) == 0.5
    low_score = copy.deepcopy(ref)
    low_score.scores = torch.tensor([0.5, 0.8])
    assert detection_agreement(ref, low_score) == 0.5
    assert detection_agreement(ref, ref[[1]][:0]) == 0.0 and detection_agreement(ref[:0], ref) == 1.0


def test_detect_tensor_api_and_argument_checks():
    model = _model()
    images = torch.stack([b["image"] for b in _inputs()])
    fast = FastInference(model, dtype=torch.float32)
    scores, labels, boxes = fast.detect(images)
    with torch.no_grad():
        ref = model(_inputs())
    assert scores.shape == labels.shape == (2, model.num_top_queries) and boxes.shape == (2, model.num_top_queries, 4)
    torch.testing.assert_close(scores[0], ref[0]["instances"].scores, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        fast.detect(images[0])
    with pytest.raises(ValueError, match="dtype"):
        FastInference(model, dtype=torch.int8)
    with pytest.raises(TypeError, match="RTDETR"):
        FastInference(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="warmup"):  # (the capture would copy the box scale from the host)
        FastInference(model, cuda_graphs=True, warmup=0)
    assert FastInference(model, dtype=torch.float32, cuda_graphs=False, warmup=0).warmup == 0
    assert not fast.training and not fast.net.training
    fast.eval()  # what detectron2's inference_context does, before and after
    with pytest.raises(RuntimeError, match="inference-only"):
        fast.train()


def test_compiled_fast_inference_equals_the_model():
    """``compile=True`` (torch.compile with the default inductor backend, here its CPU code generator) computes the
    model's detections; the GPU speed-up is measured by tools/benchmark.py (mode compiled_net)."""
    model = _model()
    batch = _inputs(n=1, size=(64, 64))
    with torch.no_grad():
        ref = model(copy.deepcopy(batch))[0]["instances"]
    fast = FastInference(model, dtype=torch.float32, compile=True)
    assert fast.compiled
    torch._dynamo.utils.counters.clear()
    got = fast(batch)[0]["instances"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the network really went through dynamo
    assert len(got) == len(ref) > 0
    torch.testing.assert_close(got.scores, ref.scores, rtol=0, atol=1e-4)
    assert torch.equal(got.pred_classes, ref.pred_classes)
    torch.testing.assert_close(got.pred_boxes.tensor, ref.pred_boxes.tensor, rtol=0, atol=1e-2)
