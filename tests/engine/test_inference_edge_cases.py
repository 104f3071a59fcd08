"""Inference inputs through the Predictor: an empty batch, an image without detections (drawn
fine), NaN or non-uint8 pixels (a clear error naming the image)."""

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import MetadataCatalog
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer

from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer
from neo_rtdetr.engine.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    cfg = LazyConfig.load("configs/rtdetr_tiny_synthetic_demo.py")
    cfg.dataloader.datasets = []
    cfg.dataloader.image_size = [64, 64]
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("ckpt")
    RTDETRCheckpointer(instantiate(cfg.model), str(out)).save("model")
    return Predictor(cfg, str(out / "model.pth"), device="cpu", batch_size=2)


def test_empty_batch_gives_an_empty_list(predictor):
    assert predictor([]) == []


def test_an_image_without_detections_is_returned_and_drawn(predictor):
    image = np.full((40, 50, 3), 127, np.uint8)
    inst = predictor(image)
    kept = inst[inst.scores >= 1.01]  # what tools/demo.py's threshold does when nothing passes
    assert isinstance(kept, Instances) and len(kept) == 0 and kept.image_size == (40, 50)
    meta = MetadataCatalog.get("t_inference_edge")
    meta.thing_classes = [str(i) for i in range(predictor.model.num_classes)]
    drawn = Visualizer(image[:, :, ::-1], meta).draw_instance_predictions(kept).get_image()
    assert drawn.shape == (40, 50, 3) and (drawn == 127).all()  # nothing drawn, the image unchanged


def test_nan_or_float_pixels_are_errors_naming_the_image(predictor):
    good = np.zeros((32, 32, 3), np.uint8)
    nan = np.zeros((32, 32, 3), np.float32)
    nan[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match=r"^image 2 of the list: the image has NaN or inf pixel values \(float32\)"):
        predictor([good, good, nan])
    with pytest.raises(ValueError, match="NaN or inf"):
        predictor(torch.from_numpy(nan).permute(2, 0, 1))
    with pytest.raises(ValueError, match=r"must be uint8 in \[0, 255\], got float32"):
        predictor(np.full((32, 32, 3), 0.5, np.float32))  # would have become a black image
    with pytest.raises(FileNotFoundError, match=r"^image 1 of the list: .*nope\.jpg"):
        predictor([good, "/nonexistent/nope.jpg"])
