"""Bad and unusual image files, written here and run through RTDETRDatasetMapper (and the model).

Pixel values that come out are checked against what the file holds: grayscale, RGBA, palette and
16-bit PNGs become the right RGB values, EXIF-rotated JPEGs come out as detectron2's read_image
shows them with boxes on the same pixels, broken files are errors naming the file and image id.
"""

import gc

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.data.detection_utils import read_image as d2_read_image
from detectron2.structures import BoxMode
from PIL import Image

from neo_rtdetr.data.build import build_rtdetr_train_loader
from neo_rtdetr.data.dataset_mapper import RTDETRDatasetMapper
from neo_rtdetr.data.image_io import read_image
from neo_rtdetr.modeling.meta_arch.rtdetr import TARGET_BOXES_FIELD
from tests.modeling.test_rtdetr import tiny_model as build_tiny_model


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_tiny_model(num_classes=1)


def _dict(path, h, w, boxes=(), image_id=5):
    anns = [{"id": 100 + i, "bbox": list(map(float, b)), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0}
            for i, b in enumerate(boxes)]
    return {"file_name": str(path), "height": h, "width": w, "image_id": image_id, "annotations": anns}


def _as_is(path, h, w):
    """The mapper's image, no augmentation: uint8 [H, W, 3] RGB."""
    out = RTDETRDatasetMapper(is_train=False, augmentations=[])(_dict(path, h, w))
    return out["image"].permute(1, 2, 0).numpy()


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    gray = np.array([[0, 17, 128, 255]], np.uint8).repeat(3, axis=0)
    Image.fromarray(gray).save(tmp_path / "g.png")  # mode "L"
    rgb = _as_is(tmp_path / "g.png", 3, 4)
    assert rgb.shape == (3, 4, 3)
    for c in range(3):
        assert np.array_equal(rgb[..., c], gray)


def test_rgba_png_drops_alpha_like_the_official_convert_rgb(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 50
    rgba[0, :, 3] = 0  # fully transparent row: its colour is kept, not blended with a background
    rgba[1, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb = _as_is(tmp_path / "a.png", 2, 3)
    assert np.array_equal(rgb, np.broadcast_to(np.array([200, 100, 50], np.uint8), (2, 3, 3)))


def test_palette_png_becomes_its_colours(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.putdata([0, 1])
    img.save(tmp_path / "p.png")
    assert _as_is(tmp_path / "p.png", 1, 2).tolist() == [[[255, 0, 0], [0, 0, 255]]]


def test_16bit_grayscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    values = np.array([[0, 255, 256, 1000, 30000, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), values)
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    rgb = _as_is(tmp_path / "g16.png", 1, 6)
    expected = (values >> 8).astype(np.uint8)  # 0, 0, 1, 3, 117, 255
    for c in range(3):
        assert np.array_equal(rgb[..., c], expected)
    # the same as the 16-bit colour PNG of the same data, which PIL reduces to its high byte itself
    cv2.imwrite(str(tmp_path / "c16.png"), np.repeat(values[..., None], 3, axis=2))
    assert np.array_equal(_as_is(tmp_path / "c16.png", 1, 6), rgb)


def test_16bit_colour_png_keeps_its_channel_order(tmp_path):
    bgr = np.zeros((1, 1, 3), np.uint16)
    bgr[0, 0] = [1000, 30000, 65535]  # cv2 writes B, G, R
    cv2.imwrite(str(tmp_path / "c16.png"), bgr)
    assert _as_is(tmp_path / "c16.png", 1, 1).tolist() == [[[255, 117, 3]]]  # R, G, B high bytes


def _exif_jpeg(path, stored_rgb, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored_rgb).save(path, quality=100, subsampling=0, exif=exif.tobytes())


def _red_box(rgb):
    ys, xs = np.nonzero((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60))
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_pixels_and_boxes_match_detectron2_read_image(tmp_path, orientation):
    stored = np.full((40, 100, 3), 30, np.uint8)  # stored bitmap: 100 wide, 40 high
    stored[5:25, 60:90] = [255, 0, 0]  # a red block in the stored frame
    path = tmp_path / f"exif{orientation}.jpg"
    _exif_jpeg(path, stored, orientation)

    shown = d2_read_image(str(path), format="RGB")  # detectron2: EXIF applied
    assert shown.shape[:2] == ((100, 40) if orientation in (6, 8) else (40, 100))
    h, w = shown.shape[:2]
    assert np.array_equal(read_image(str(path), "RGB"), shown)
    # COCO annotations refer to the displayed image: the box of the red block as displayed
    box = _red_box(shown)
    mapper = RTDETRDatasetMapper(is_train=True, augmentations=[T.Resize((64, 48))])
    out = mapper(_dict(path, h, w, boxes=[box]))
    image = out["image"].permute(1, 2, 0).numpy()
    x0, y0, x1, y1 = out["instances"].gt_boxes.tensor[0].round().int().tolist()
    inside = image[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]
    assert (inside[..., 0] > 200).all() and (inside[..., 1] < 80).all()  # the box is on the red pixels
    cx, cy, bw, bh = out["instances"].get(TARGET_BOXES_FIELD)[0].tolist()
    assert cx == pytest.approx((box[0] + box[2]) / 2 / w, abs=1e-6) and bw == pytest.approx((box[2] - box[0]) / w, abs=1e-6)
    assert cy == pytest.approx((box[1] + box[3]) / 2 / h, abs=1e-6) and bh == pytest.approx((box[3] - box[1]) / h, abs=1e-6)


def test_annotation_in_the_stored_frame_of_an_exif_rotated_jpeg_is_explained(tmp_path):
    stored = np.full((40, 100, 3), 30, np.uint8)
    path = tmp_path / "exif6.jpg"
    _exif_jpeg(path, stored, 6)
    mapper = RTDETRDatasetMapper(is_train=True, augmentations=[T.Resize((64, 64))])
    with pytest.raises(SizeMismatchError) as excinfo:
        mapper(_dict(path, 40, 100, image_id=77))  # height/width of the stored bitmap
    message = str(excinfo.value)
    assert str(path) in message and "image_id=77" in message
    assert "EXIF orientation 6" in message and "must refer to the displayed image" in message


def test_missing_truncated_and_corrupt_files_name_the_file_and_image_id(tmp_path):
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.jpg"  # a JPEG header followed by garbage
    corrupt.write_bytes(data[:20] + b"not really a jpeg" * 20)
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("these are not pixels")
    mapper = RTDETRDatasetMapper(is_train=True, augmentations=[T.Resize((64, 64))])
    for path, image_id, reason in ((tmp_path / "missing.jpg", 1, "FileNotFoundError"),
                                   (truncated, 2, "image file is truncated"), (corrupt, 3, "UnidentifiedImageError"),
                                   (not_an_image, 4, "UnidentifiedImageError")):
        with pytest.raises(OSError) as excinfo:
            mapper(_dict(path, 120, 160, image_id=image_id))
        message = str(excinfo.value)
        assert f"cannot read image '{path}' (image_id={image_id})" in message and reason in message


def test_a_truncated_jpeg_in_a_worker_names_the_file_and_image_id(tmp_path, monkeypatch):
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), np.full((64, 64, 3), 90, np.uint8))
    bad = tmp_path / "bad_0042.jpg"
    bad.write_bytes(good.read_bytes()[:200])
    dicts = [_dict(good, 64, 64, image_id=i) for i in range(3)] + [_dict(bad, 64, 64, image_id=42)]
    mapper = RTDETRDatasetMapper(is_train=True, augmentations=[T.Resize((32, 32))])
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    loader = build_rtdetr_train_loader(dataset=dicts, mapper=mapper, total_batch_size=4, num_workers=1)
    it = iter(loader)
    with pytest.raises(RuntimeError) as excinfo:
        next(it)
    message = str(excinfo.value)
    assert "DataLoader worker" in message and str(bad) in message and "image_id=42" in message
    del it, excinfo
    gc.collect()


def test_very_large_image_goes_through_the_mapper(tmp_path):
    h, w = 6000, 8000
    img = np.zeros((h, w, 3), np.uint8)
    img[1000:3000, 4000:7000] = 255
    path = tmp_path / "large.jpg"
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    del img
    train = RTDETRDatasetMapper(is_train=True, augmentations=[T.RandomFlip(horizontal=True), T.Resize((64, 64))])
    out = train(_dict(path, h, w, boxes=[[4000, 1000, 7000, 3000]], image_id=8))
    assert tuple(out["image"].shape) == (3, 64, 64)
    _, cy, bw, bh = out["instances"].get(TARGET_BOXES_FIELD)[0].tolist()
    assert (cy, bw, bh) == pytest.approx((2000 / h, 3000 / w, 2000 / h), abs=1e-6)
    test = RTDETRDatasetMapper(is_train=False, augmentations=[T.Resize((64, 64))])
    out = test(_dict(path, h, w))
    assert tuple(out["image"].shape) == (3, 64, 64) and (out["height"], out["width"]) == (h, w)


def test_tiny_image_smaller_than_the_stride_goes_through_mapper_and_model(tmp_path, tiny_model):
    path = tmp_path / "tiny.png"
    pixels = np.full((12, 20, 3), 40, np.uint8)
    pixels[3:9, 5:15] = 220
    Image.fromarray(pixels).save(path)
    d = _dict(path, 12, 20, boxes=[[5, 3, 15, 9]])
    # resized to the training size (the normal path)
    out = RTDETRDatasetMapper(is_train=True, augmentations=[T.Resize((64, 64))])(d)
    tiny_model.train()
    losses = tiny_model([out])
    assert torch.isfinite(sum(losses.values()))
    # as it is (12x20, no resize): padded to the stride and to enough encoder tokens for the queries
    raw = RTDETRDatasetMapper(is_train=True, augmentations=[])(d)
    assert tuple(raw["image"].shape) == (3, 12, 20)
    losses = tiny_model([raw])
    assert torch.isfinite(sum(losses.values()))
    tiny_model.eval()
    with torch.no_grad():
        pred = tiny_model([RTDETRDatasetMapper(is_train=False, augmentations=[])(d)])[0]["instances"]
    assert pred.image_size == (12, 20)
    boxes = pred.pred_boxes.tensor
    assert torch.isfinite(boxes).all() and (boxes[:, 2] <= 20).all() and (boxes[:, 3] <= 12).all()
