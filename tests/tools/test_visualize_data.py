"""tools/visualize_data.py on the tiny synthetic demo config: the drawn boxes are where the targets say."""

import importlib.util
import os
import re
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "rtdetr_tiny_synthetic_demo.py")


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _opts(cache, size, multi_scale):
    # unique dataset names: other tests of the session may have registered synthetic_train elsewhere
    tag = uuid.uuid4().hex[:8]
    return [
        f"dataloader.datasets.0.cache_dir={cache}",
        "+dataloader.datasets.0.num_train=8",
        "+dataloader.datasets.0.num_val=4",
        f"+dataloader.datasets.0.train_name=vis_train_{tag}",
        f"+dataloader.datasets.0.val_name=vis_val_{tag}",
        f"dataloader.train.dataset.names=vis_train_{tag}",
        f"dataloader.test.dataset.names=vis_val_{tag}",
        f"dataloader.image_size={size}",
        f"dataloader.train.multi_scale={multi_scale}",
    ]


def _reference_batches(opts, num_batches):
    """The loader's batches, built here independently of the tool (same config -> same samples)."""
    from detectron2.config import LazyConfig, instantiate

    from neo_rtdetr.config import apply_overrides_strict
    from neo_rtdetr.data.catalog import register_datasets_from_config

    cfg = apply_overrides_strict(LazyConfig.load(DEMO), opts)
    register_datasets_from_config(cfg.dataloader.datasets)
    cfg.dataloader.train.num_workers = 0
    batches = []
    for batch in instantiate(cfg.dataloader.train):
        batches.append(batch)
        if len(batches) == num_batches:
            return batches


def _edge_pixels(x0, y0, x1, y1, h, w):
    """(rows, cols) of pixels on the 4 edges of a box, 3 px away from its corners (where labels sit)."""
    c0, c1 = int(np.floor(x0)), int(np.floor(x1 - 1e-3))
    r0, r1 = int(np.floor(y0)), int(np.floor(y1 - 1e-3))
    c0, c1, r0, r1 = np.clip([c0, c1], 0, w - 1).tolist() + np.clip([r0, r1], 0, h - 1).tolist()
    cols = np.arange(c0 + 3, c1 - 2)
    rows = np.arange(r0 + 3, r1 - 2)
    rr = np.concatenate([np.full_like(cols, r1), rows, rows])  # bottom edge, left and right edges
    cc = np.concatenate([cols, np.full_like(rows, c0), np.full_like(rows, c1)])
    return rr, cc


@pytest.mark.parametrize(
    "size,multi_scale,num_batches",
    [("[96,96]", "[64,96]", 2), ("[64,96]", "null", 1)],  # square multi-scale; non-square (H 64, W 96)
)
def test_drawn_boxes_are_where_the_normalised_boxes_say(tmp_path, capsys, size, multi_scale, num_batches):
    opts = _opts(tmp_path / "cache", size, multi_scale)
    out = tmp_path / "vis"
    tool = _load_tool("visualize_data")
    argv = ["--config-file", DEMO, "--output", str(out), "--num-batches", str(num_batches), "--opts", *opts]
    assert tool.main(argv) == 0
    printed = capsys.readouterr().out
    batch_size = 4  # dataloader.train.total_batch_size of the demo config, one process
    files = sorted(os.listdir(out))
    assert len(files) == num_batches * batch_size
    # the tool checks that gt_boxes and gt_boxes_cxcywh agree, image by image
    differences = [float(x) for x in re.findall(r"max difference (\S+) px", printed)]
    assert len(differences) == len(files) and max(differences) < 0.01

    checked_boxes, sizes = 0, set()
    for it, batch in enumerate(_reference_batches(opts, num_batches)):
        for k, sample in enumerate(batch):
            stem = os.path.splitext(os.path.basename(sample["file_name"]))[0]
            drawn = cv2.imread(str(out / f"iter{it:06d}_{k:02d}_{stem}.png"))
            assert drawn is not None
            raw = sample["image"].permute(1, 2, 0).numpy()[:, :, ::-1].astype(int)  # RGB -> BGR like cv2
            h, w = raw.shape[:2]
            sizes.add((h, w))
            assert drawn.shape == raw.shape
            diff = np.abs(drawn.astype(int) - raw).sum(-1)
            boxes = sample["instances"].gt_boxes_cxcywh.numpy() * np.array([w, h, w, h])
            for cx, cy, bw, bh in boxes:
                if bw < 10 or bh < 10:
                    continue  # edges of tiny boxes overlap
                rr, cc = _edge_pixels(cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, h, w)
                changed = (diff[rr, cc] > 20).mean()
                assert changed > 0.8, (it, k, (cx, cy, bw, bh), changed)
                checked_boxes += 1
            if len(boxes) == 0:
                assert diff.max() == 0  # nothing to draw: the image is written unchanged
    assert checked_boxes >= 4
    if size == "[64,96]":
        assert sizes == {(64, 96)}
    else:
        assert sizes <= {(64, 64), (96, 96)}


def test_the_drawing_is_the_raw_image_away_from_the_boxes():
    """draw_train_sample on a hand-made sample: pixels far from the box are untouched, the box edges are drawn."""
    import torch
    from detectron2.structures import Boxes, Instances

    from neo_rtdetr.utils.data_visualization import box_disagreement, draw_train_sample

    rng = np.random.default_rng(0)
    image = torch.as_tensor(rng.integers(0, 256, (3, 80, 120), dtype=np.uint8))
    inst = Instances((80, 120))
    inst.gt_boxes = Boxes(torch.tensor([[30.0, 20.0, 90.0, 60.0]]))
    inst.gt_classes = torch.tensor([1])
    inst.gt_boxes_cxcywh = torch.tensor([[60 / 120, 40 / 80, 60 / 120, 40 / 80]])
    sample = {"image": image, "instances": inst}
    assert box_disagreement(sample) == 0.0
    drawn = draw_train_sample(sample, ["a", "b"])
    raw = image.permute(1, 2, 0).numpy().astype(int)
    diff = np.abs(drawn.astype(int) - raw).sum(-1)
    assert (diff[40, 28:33] > 20).any() and (diff[40, 88:93] > 20).any()  # left and right edges at x = 30, 90
    assert (diff[58:63, 60] > 20).any()  # bottom edge at y = 60
    assert diff[70:, :].max() == 0 and diff[:, 100:].max() == 0  # below and right of the box: untouched
    # a wrong pixel copy is reported
    inst.gt_boxes = Boxes(torch.tensor([[30.0, 20.0, 92.0, 60.0]]))
    assert box_disagreement(sample) == pytest.approx(2.0)
