import cv2
import numpy as np
import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Instances

from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer
from neo_rtdetr.engine.predictor import Predictor

PHOTO = "tests/assets/coco_val2017_000000039769.png"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    cfg = LazyConfig.load("configs/rtdetr_tiny_synthetic_demo.py")
    cfg.dataloader.datasets = []  # no dataset needed to predict
    cfg.dataloader.image_size = [96, 96]
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    out = tmp_path_factory.mktemp("ckpt")
    RTDETRCheckpointer(model, str(out)).save("model")
    pred = Predictor(cfg, str(out / "model.pth"), device="cpu", batch_size=2)
    for a, b in zip(pred.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    return pred


def test_every_input_type_gives_the_same_instances(predictor):
    bgr = cv2.imread(PHOTO, cv2.IMREAD_COLOR)
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    from_path = predictor(PHOTO)
    from_bgr = predictor(bgr)
    from_tensor = predictor(torch.from_numpy(rgb).permute(2, 0, 1))
    assert isinstance(from_path, Instances) and from_path.image_size == (480, 640)
    for other in (from_bgr, from_tensor):
        torch.testing.assert_close(other.pred_boxes.tensor, from_path.pred_boxes.tensor)
        torch.testing.assert_close(other.scores, from_path.scores)
    b = from_path.pred_boxes.tensor
    assert (b[:, 2] <= 640).all() and (b[:, 3] <= 480).all()
    # an RGB array given as BGR is a different image: the predictor really uses numpy_format
    assert not torch.equal(predictor(rgb).scores, from_path.scores)


def test_a_list_is_batched_and_keeps_order(predictor):
    bgr = cv2.imread(PHOTO, cv2.IMREAD_COLOR)
    small = cv2.resize(bgr, (320, 200))
    outs = predictor([bgr, small, PHOTO])
    assert [o.image_size for o in outs] == [(480, 640), (200, 320), (480, 640)]
    torch.testing.assert_close(outs[2].scores, predictor(PHOTO).scores)


def test_bad_inputs_are_clear_errors(predictor):
    with pytest.raises(ValueError, match="HxWx3"):
        predictor(np.zeros((10, 10), np.uint8))
    with pytest.raises(TypeError, match="unsupported"):
        predictor(3.5)


def test_fast_predictor_gives_the_same_detections(predictor, tmp_path):
    """fast=True (FastInference: deployed, channels-last; float32 on the CPU) keeps the detections."""
    from neo_rtdetr.engine.fast_inference import FastInference

    RTDETRCheckpointer(predictor.model, str(tmp_path)).save("model")
    fast = Predictor(predictor.cfg, str(tmp_path / "model.pth"), device="cpu", batch_size=2, fast=True)
    assert isinstance(fast.runner, FastInference) and fast.runner.dtype == torch.float32
    ref, got = predictor(PHOTO), fast(PHOTO)
    assert len(got) == len(ref) > 0
    torch.testing.assert_close(got.scores, ref.scores, rtol=0, atol=1e-5)
    assert torch.equal(got.pred_classes, ref.pred_classes)
    torch.testing.assert_close(got.pred_boxes.tensor, ref.pred_boxes.tensor, rtol=0, atol=1e-2)
