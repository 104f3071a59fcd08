"""RT-DETR augmentations: geometry of boxes vs pixels, torchvision-v2 semantics, numpy-only RNG."""

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T

from neo_rtdetr.data.transforms import (
    IoUCropTransform,
    PhotometricDistortTransform,
    RandomIoUCrop,
    RandomPhotometricDistort,
    RandomZoomOut,
    build_rtdetr_test_augmentations,
    build_rtdetr_train_augmentations,
)


def _canvas_with_rects(h, w, boxes, background=0):
    """uint8 [h, w, 3] image with each integer XYXY box filled with a distinct colour (1-based)."""
    img = np.full((h, w, 3), background, np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        img[int(y0):int(y1), int(x0):int(x1)] = 50 * (k + 1)
    return img


def _tight_box(img, value):
    """XYXY (pixel-edge coordinates) of the pixels equal to ``value`` in channel 0, or None."""
    ys, xs = np.nonzero(img[..., 0] == value)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _clip(box, h, w):
    b = box.copy()
    b[0::2] = np.clip(b[0::2], 0, w)
    b[1::2] = np.clip(b[1::2], 0, h)
    return b


def test_horizontal_flip_keeps_box_on_the_rectangle():
    boxes = np.array([[10, 20, 35, 50], [60, 5, 90, 25]], np.float32)
    img = _canvas_with_rects(70, 100, boxes)
    inp = T.AugInput(img, boxes=boxes.copy())
    tfm = T.RandomFlip(prob=1.0, horizontal=True)(inp)
    assert not isinstance(tfm, T.NoOpTransform)
    for k in range(len(boxes)):
        np.testing.assert_allclose(inp.boxes[k], _tight_box(inp.image, 50 * (k + 1)))
    np.testing.assert_allclose(inp.boxes[0], [100 - 35, 20, 100 - 10, 50])


def test_zoom_out_shifts_boxes_and_fills_canvas():
    boxes = np.array([[10, 20, 35, 50]], np.float32)
    img = _canvas_with_rects(60, 80, boxes, background=200)
    shifts = set()
    for seed in range(5):
        np.random.seed(seed)
        inp = T.AugInput(img, boxes=boxes.copy())
        tfm = RandomZoomOut(side_range=(2.0, 2.0), p=1.0, fill=0)(inp)
        assert inp.image.shape == (120, 160, 3)
        x0, y0 = tfm.x0, tfm.y0
        shifts.add((x0, y0))
        np.testing.assert_allclose(inp.boxes[0], boxes[0] + [x0, y0, x0, y0])
        np.testing.assert_allclose(inp.boxes[0], _tight_box(inp.image, 50))
        # the original image sits at (x0, y0); the canvas around it is the fill value
        np.testing.assert_array_equal(inp.image[y0:y0 + 60, x0:x0 + 80], img)
        assert (inp.image == 0).sum() == (120 * 160 - 60 * 80) * 3
    assert len(shifts) > 1  # the placement is random


def test_zoom_out_per_channel_fill_and_probability():
    np.random.seed(0)
    img = np.full((10, 12, 3), 7, np.uint8)
    inp = T.AugInput(img)
    tfm = RandomZoomOut(side_range=(3.0, 3.0), p=1.0, fill=(1, 2, 3))(inp)
    assert inp.image.shape == (30, 36, 3)
    inside = np.zeros((30, 36), bool)
    inside[tfm.y0:tfm.y0 + 10, tfm.x0:tfm.x0 + 12] = True
    assert (inp.image[inside] == 7).all()
    assert (inp.image[~inside] == [1, 2, 3]).all()
    np.random.seed(1)
    applied = sum(not isinstance(RandomZoomOut(p=0.5).get_transform(img), T.NoOpTransform) for _ in range(400))
    assert 150 < applied < 250
    assert all(isinstance(RandomZoomOut(p=0.0).get_transform(img), T.NoOpTransform) for _ in range(20))


def test_iou_crop_keeps_boxes_on_rectangles_and_drops_outside_centres():
    boxes = np.array([[10, 10, 40, 40], [100, 70, 130, 110], [60, 20, 75, 90]], np.float32)
    h, w = 120, 150
    img = _canvas_with_rects(h, w, boxes)
    crops = dropped = 0
    for seed in range(60):
        np.random.seed(seed)
        inp = T.AugInput(img, boxes=boxes.copy())
        tfm = RandomIoUCrop(p=1.0)(inp)
        if not isinstance(tfm, IoUCropTransform):
            assert isinstance(tfm, T.NoOpTransform)
            continue
        crops += 1
        ch, cw = inp.image.shape[:2]
        assert (ch, cw) == (tfm.h, tfm.w)
        np.testing.assert_array_equal(inp.image, img[tfm.y0:tfm.y0 + tfm.h, tfm.x0:tfm.x0 + tfm.w])
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cx > tfm.x0) & (cx < tfm.x0 + tfm.w) & (cy > tfm.y0) & (cy < tfm.y0 + tfm.h)
        assert inside.any()  # torchvision: some box centre must be inside the crop
        for k in range(len(boxes)):
            if inside[k]:
                np.testing.assert_allclose(_clip(inp.boxes[k], ch, cw), _tight_box(inp.image, 50 * (k + 1)))
            else:
                dropped += 1
                np.testing.assert_array_equal(inp.boxes[k], 0)  # degenerate -> removed by the mapper
        # aspect ratio and scale limits
        assert 0.5 <= tfm.w / tfm.h <= 2.0
        assert tfm.w >= int(0.3 * w) and tfm.h >= int(0.3 * h)
    assert crops >= 20 and dropped >= 1


def test_iou_crop_respects_min_iou_option_and_no_crop_cases():
    boxes = np.array([[20, 20, 80, 70]], np.float32)
    img = np.zeros((100, 100, 3), np.uint8)
    aug = RandomIoUCrop(p=1.0, sampler_options=(0.7,), trials=40)
    n = 0
    for seed in range(20):
        np.random.seed(seed)
        tfm = aug.get_transform(img, boxes)
        if isinstance(tfm, IoUCropTransform):
            n += 1
            x0, y0, x1, y1 = tfm.x0, tfm.y0, tfm.x0 + tfm.w, tfm.y0 + tfm.h
            iw = max(0, min(80, x1) - max(20, x0))
            ih = max(0, min(70, y1) - max(20, y0))
            inter = iw * ih
            iou = inter / (60 * 50 + tfm.w * tfm.h - inter)
            assert iou >= 0.7
    assert n >= 15
    # option 1.0 = leave as is; no boxes = no crop; p = 0 = no crop
    assert isinstance(RandomIoUCrop(p=1.0, sampler_options=(1.0,)).get_transform(img, boxes), T.NoOpTransform)
    assert isinstance(RandomIoUCrop(p=1.0).get_transform(img, np.zeros((0, 4), np.float32)), T.NoOpTransform)
    assert isinstance(RandomIoUCrop(p=1.0).get_transform(img, None), T.NoOpTransform)
    assert all(isinstance(RandomIoUCrop(p=0.0).get_transform(img, boxes), T.NoOpTransform) for _ in range(10))


def test_photometric_distort_changes_pixels_only():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    boxes = np.array([[1, 2, 30, 40]], np.float32)
    changed = 0
    for seed in range(10):
        np.random.seed(seed)
        inp = T.AugInput(img.copy(), boxes=boxes.copy())
        tfm = RandomPhotometricDistort(p=1.0)(inp)
        assert isinstance(tfm, PhotometricDistortTransform)
        assert tfm.brightness is not None and tfm.contrast is not None and tfm.permutation is not None
        assert 0.875 <= tfm.brightness <= 1.125 and 0.5 <= tfm.saturation <= 1.5 and -0.05 <= tfm.hue <= 0.05
        assert inp.image.shape == img.shape and inp.image.dtype == np.uint8
        np.testing.assert_array_equal(inp.boxes, boxes)
        changed += int(not np.array_equal(inp.image, img))
    assert changed == 10
    assert isinstance(RandomPhotometricDistort(p=0.0).get_transform(img), T.NoOpTransform)


def test_photometric_operations_semantics():
    img = np.array([[[100, 150, 200], [0, 50, 250]]], np.uint8)  # [1, 2, 3]
    np.testing.assert_array_equal(PhotometricDistortTransform(brightness=0.5).apply_image(img), img // 2)
    np.testing.assert_array_equal(PhotometricDistortTransform(permutation=(2, 0, 1)).apply_image(img), img[..., [2, 0, 1]])
    # saturation 0 = grayscale: all channels equal the luma
    gray = PhotometricDistortTransform(saturation=0.0).apply_image(img)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert abs(int(gray[0, 0, 0]) - int(0.2989 * 100 + 0.587 * 150 + 0.114 * 200)) <= 1
    # contrast 0 = the mean luma everywhere
    flat = PhotometricDistortTransform(contrast=0.0).apply_image(img)
    assert len(np.unique(flat)) == 1
    # hue 0 is the identity (up to rounding); hue 0.5 maps pure red to cyan
    assert np.abs(PhotometricDistortTransform(hue=0.0).apply_image(img).astype(int) - img).max() <= 1
    red = np.array([[[255, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(PhotometricDistortTransform(hue=0.5).apply_image(red), [[[0, 255, 255]]])
    np.testing.assert_array_equal(PhotometricDistortTransform(hue=0.5, image_format="BGR").apply_image(red[..., ::-1].copy()),
                                  [[[255, 255, 0]]])


def test_randomness_comes_from_numpy_only():
    img = _canvas_with_rects(80, 90, [[10, 10, 50, 60]])
    boxes = np.array([[10, 10, 50, 60]], np.float32)

    def run(np_seed, torch_seed):
        np.random.seed(np_seed)
        torch.manual_seed(torch_seed)
        inp = T.AugInput(img.copy(), boxes=boxes.copy())
        T.AugmentationList(build_rtdetr_train_augmentations(image_size=48))(inp)
        return inp.image, inp.boxes

    a, b, c = run(3, 0), run(3, 123), run(4, 0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))


def test_official_lists():
    train = build_rtdetr_train_augmentations(image_size=640)
    assert [type(a) for a in train[:3]] == [RandomPhotometricDistort, RandomZoomOut, RandomIoUCrop]
    assert train[0].p == 0.5 and train[1].p == 0.5 and train[1].side_range == (1.0, 4.0) and train[2].p == 0.8
    assert train[2].sampler_options == (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0) and train[2].trials == 40
    assert isinstance(train[3], T.RandomFlip) and isinstance(train[4], T.Resize) and train[4].shape == (640, 640)
    (resize,) = build_rtdetr_test_augmentations(image_size=320)
    out = resize.get_transform(np.zeros((100, 200, 3), np.uint8)).apply_image(np.zeros((100, 200, 3), np.uint8))
    assert out.shape == (320, 320, 3)  # squash, no keep-ratio
    with pytest.raises(ValueError):
        RandomZoomOut(side_range=(0.5, 2.0))
