import os
import subprocess
import sys

import cv2
import torch

from detectron2.config import LazyConfig, instantiate

from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer

PHOTO = os.path.abspath("tests/assets/coco_val2017_000000039769.png")


def test_demo_draws_images_and_reports_unreadable_inputs(tmp_path):
    cfg = LazyConfig.load("configs/rtdetr_tiny_synthetic_demo.py")
    torch.manual_seed(0)
    RTDETRCheckpointer(instantiate(cfg.model), str(tmp_path)).save("model")
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), cv2.resize(cv2.imread(PHOTO), (200, 150)))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "vis"
    cmd = [
        sys.executable, "tools/demo.py", "--config-file", "configs/rtdetr_tiny_synthetic_demo.py",
        "--input", PHOTO, str(folder), str(tmp_path / "missing.png"),
        "--output", str(out), "--confidence-threshold", "0.0",
        "--opts", f"train.init_checkpoint={tmp_path / 'model.pth'}", "dataloader.image_size=[96,96]",
        f"dataloader.datasets.0.cache_dir={tmp_path / 'cache'}", "+dataloader.datasets.0.num_train=4",
        "+dataloader.datasets.0.num_val=2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # two inputs failed
    assert "broken.jpg" in proc.stderr and "missing.png" in proc.stderr
    written = sorted(os.listdir(out))
    assert written == ["a.jpg", "coco_val2017_000000039769.jpg"]
    drawn = cv2.imread(str(out / "coco_val2017_000000039769.jpg"))
    assert drawn.shape == (480, 640, 3)
    original = cv2.imread(PHOTO)
    assert (abs(drawn.astype(int) - original.astype(int)).sum(-1) > 60).mean() > 0.001  # boxes were drawn


def test_demo_on_a_video(tmp_path):
    cfg = LazyConfig.load("configs/rtdetr_tiny_synthetic_demo.py")
    torch.manual_seed(0)
    RTDETRCheckpointer(instantiate(cfg.model), str(tmp_path)).save("model")
    frame = cv2.resize(cv2.imread(PHOTO), (160, 120))
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (160, 120))
    for i in range(4):
        writer.write(frame)
    writer.release()
    cmd = [
        sys.executable, "tools/demo.py", "--config-file", "configs/rtdetr_tiny_synthetic_demo.py",
        "--video-input", str(video), "--output", str(tmp_path / "out.mp4"), "--confidence-threshold", "0.0",
        "--opts", f"train.init_checkpoint={tmp_path / 'model.pth'}", "dataloader.image_size=[64,64]",
        f"dataloader.datasets.0.cache_dir={tmp_path / 'cache'}", "+dataloader.datasets.0.num_train=4",
        "+dataloader.datasets.0.num_val=2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    frames = 0
    while True:
        ok, f = out.read()
        if not ok:
            break
        frames += 1
        assert f.shape == (120, 160, 3)
    assert frames == 4
