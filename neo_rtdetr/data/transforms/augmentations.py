"""RT-DETR's training augmentations as Detectron2 :class:`Augmentation` s.

The official RT-DETR training pipeline (``src/data/transforms.py``, torchvision.transforms.v2) is::

    RandomPhotometricDistort(p=0.5) -> RandomZoomOut(fill=0) -> RandomIoUCrop(p=0.8)
    -> SanitizeBoundingBoxes(min_size=1) -> RandomHorizontalFlip -> Resize([640, 640])

The three SSD-style operations are re-implemented here with torchvision v2's semantics and
defaults; the flip and the resize are detectron2's own ``T.RandomFlip(horizontal=True)`` and
``T.Resize((640, 640))`` (squash, no aspect-ratio preservation). All randomness comes from numpy's
global RNG (``np.random.*``), like detectron2's augmentations, so that seeding numpy per sample
(see :class:`neo_rtdetr.data.dataset_mapper.RTDETRDatasetMapper`) makes them deterministic.

Images are ``uint8`` numpy arrays of shape ``[H, W, C]`` (C = 3); boxes are ``float`` arrays of
shape ``[N, 4]`` in absolute XYXY pixels, as everywhere in detectron2.
"""

from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from detectron2.data.transforms import (
    Augmentation,
    CropTransform,
    NoOpTransform,
    PadTransform,
    Transform,
)

__all__ = [
    "PhotometricDistortTransform",
    "RandomPhotometricDistort",
    "ZoomOutTransform",
    "RandomZoomOut",
    "IoUCropTransform",
    "RandomIoUCrop",
    "build_rtdetr_train_augmentations",
    "build_rtdetr_test_augmentations",
]

# ITU-R 601-2 luma weights (the ones torchvision and PIL use for RGB -> grayscale).
_LUMA_RGB = np.array([0.2989, 0.587, 0.114], dtype=np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Clamp to [0, 255] and truncate to uint8, as torchvision's uint8 tensor kernels do."""
    return np.clip(x, 0.0, 255.0).astype(np.uint8)


class PhotometricDistortTransform(Transform):
    """Pixel-only colour distortion with fixed parameters (torchvision ``RandomPhotometricDistort``).

    The operations run in torchvision's order: brightness, contrast (if ``contrast_before``),
    saturation, hue, contrast (if not ``contrast_before``), channel permutation. Each one is skipped
    when its parameter is None. Every operation rounds back to uint8, as torchvision does on uint8
    images. Coordinates (boxes, keypoints) and segmentations are unchanged.

    Args:
        brightness / contrast / saturation: blend factors (1 = identity) or None.
        hue: hue shift as a fraction of the full circle, in [-0.5, 0.5], or None.
        contrast_before: whether contrast runs before saturation and hue.
        permutation: a permutation of the channel indices (e.g. ``(2, 0, 1)``) or None.
        image_format: "RGB" or "BGR": the channel order of the images this will be applied to
            (the luma weights and the HSV conversion depend on it).
    """

    def __init__(
        self,
        *,
        brightness: Optional[float] = None,
        contrast: Optional[float] = None,
        saturation: Optional[float] = None,
        hue: Optional[float] = None,
        contrast_before: bool = True,
        permutation: Optional[Sequence[int]] = None,
        image_format: str = "RGB",
    ):
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if permutation is not None:
            permutation = tuple(int(i) for i in permutation)
        self._set_attributes(locals())

    def _gray(self, img: np.ndarray) -> np.ndarray:
        w = _LUMA_RGB if self.image_format == "RGB" else _LUMA_RGB[::-1]
        return img.astype(np.float32) @ w  # [H, W]

    def _blend(self, img: np.ndarray, other, ratio: float) -> np.ndarray:
        return _to_uint8(img.astype(np.float32) * ratio + other * (1.0 - ratio))

    def _adjust_hue(self, img: np.ndarray) -> np.ndarray:
        f = img.astype(np.float32) / 255.0
        to_hsv, to_rgb = (
            (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if self.image_format == "RGB" else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
        )
        hsv = cv2.cvtColor(f, to_hsv)  # float32 input: H in degrees [0, 360), S and V in [0, 1]
        hsv[..., 0] = np.mod(hsv[..., 0] + self.hue * 360.0, 360.0)
        out = cv2.cvtColor(hsv, to_rgb)
        return _to_uint8(np.round(out * 255.0))

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """Distort an image.

        Args:
            img: uint8 array of shape [H, W, 3].

        Returns:
            uint8 array of shape [H, W, 3].
        """
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"PhotometricDistortTransform needs a uint8 [H, W, 3] image, got {img.dtype} {img.shape}")
        if self.brightness is not None:
            img = self._blend(img, 0.0, self.brightness)
        if self.contrast is not None and self.contrast_before:
            img = self._blend(img, float(self._gray(img).mean()), self.contrast)
        if self.saturation is not None:
            img = self._blend(img, self._gray(img)[..., None], self.saturation)
        if self.hue is not None:
            img = self._adjust_hue(img)
        if self.contrast is not None and not self.contrast_before:
            img = self._blend(img, float(self._gray(img).mean()), self.contrast)
        if self.permutation is not None:
            img = img[..., list(self.permutation)]
        return np.ascontiguousarray(img)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        return NoOpTransform()


class RandomPhotometricDistort(Augmentation):
    """SSD photometric distortion with torchvision v2 ``RandomPhotometricDistort`` semantics.

    Each of brightness, contrast, saturation and hue is applied independently with probability
    ``p`` with a factor drawn uniformly from its range; contrast runs before or after saturation/hue
    with probability 1/2; the channels are randomly permuted with probability ``p``. Only pixels
    change: the image size and the boxes are untouched.

    Args:
        brightness / contrast / saturation / hue: (min, max) ranges of the factors.
        p: probability of each of the five operations.
        image_format: channel order of the images ("RGB" or "BGR").
    """

    def __init__(
        self,
        *,
        brightness: Tuple[float, float] = (0.875, 1.125),
        contrast: Tuple[float, float] = (0.5, 1.5),
        saturation: Tuple[float, float] = (0.5, 1.5),
        hue: Tuple[float, float] = (-0.05, 0.05),
        p: float = 0.5,
        image_format: str = "RGB",
    ):
        super().__init__()
        brightness, contrast, saturation, hue = (
            (float(r[0]), float(r[1])) for r in (brightness, contrast, saturation, hue)
        )
        if not -0.5 <= hue[0] <= hue[1] <= 0.5:
            raise ValueError(f"hue range must satisfy -0.5 <= min <= max <= 0.5, got {hue}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        factors = {}
        for key in ("brightness", "contrast", "saturation", "hue"):
            lo, hi = getattr(self, key)
            factors[key] = float(np.random.uniform(lo, hi)) if np.random.rand() < self.p else None
        contrast_before = bool(np.random.rand() < 0.5)
        permutation = tuple(np.random.permutation(image.shape[2]).tolist()) if np.random.rand() < self.p else None
        if all(v is None for v in factors.values()) and permutation is None:
            return NoOpTransform()
        return PhotometricDistortTransform(
            **factors, contrast_before=contrast_before, permutation=permutation, image_format=self.image_format
        )


class ZoomOutTransform(PadTransform):
    """Place the image on a larger constant canvas (``PadTransform`` with a per-channel fill).

    Args:
        x0, y0, x1, y1: pixels added on the left, top, right and bottom.
        orig_w, orig_h: size of the input image.
        fill: canvas value: a number or one value per channel.
    """

    def __init__(self, x0: int, y0: int, x1: int, y1: int, orig_w: int, orig_h: int, fill=0):
        scalar = np.isscalar(fill)
        super().__init__(x0, y0, x1, y1, orig_w=orig_w, orig_h=orig_h, pad_value=fill if scalar else 0)
        self.fill = fill

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """Args: img: [H, W, C] or [H, W]. Returns: [H + y0 + y1, W + x0 + x1, (C)], same dtype."""
        if np.isscalar(self.fill) or img.ndim == 2:
            return super().apply_image(img)
        fill = np.asarray(self.fill, dtype=img.dtype)
        if fill.shape != (img.shape[2],):
            raise ValueError(f"fill {self.fill} does not match {img.shape[2]} channels")
        h, w = img.shape[:2]
        out = np.empty((h + self.y0 + self.y1, w + self.x0 + self.x1, img.shape[2]), dtype=img.dtype)
        out[...] = fill
        out[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = img
        return out


class RandomZoomOut(Augmentation):
    """SSD "zoom out" (torchvision v2 ``RandomZoomOut``): with probability ``p`` put the image on a
    canvas ``r`` times larger (``r ~ U(side_range)``) at a uniformly random position. Boxes shift
    with the image.

    Args:
        fill: canvas value (a number or one value per channel).
        side_range: (min, max) of the canvas/image side ratio, min >= 1.
        p: probability of zooming out.
    """

    def __init__(self, *, fill: Union[float, Sequence[float]] = 0, side_range: Tuple[float, float] = (1.0, 4.0), p: float = 0.5):
        super().__init__()
        side_range = tuple(float(s) for s in side_range)
        if len(side_range) != 2 or side_range[0] < 1.0 or side_range[0] > side_range[1]:
            raise ValueError(f"invalid side_range {side_range}: need 1 <= min <= max")
        if not np.isscalar(fill):
            fill = tuple(float(f) for f in fill)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        if np.random.rand() >= self.p:
            return NoOpTransform()
        h, w = image.shape[:2]
        lo, hi = self.side_range
        r = lo + np.random.rand() * (hi - lo)
        canvas_w, canvas_h = int(w * r), int(h * r)
        rx, ry = np.random.rand(2)
        left = int((canvas_w - w) * rx)
        top = int((canvas_h - h) * ry)
        right = canvas_w - (left + w)
        bottom = canvas_h - (top + h)
        if left == top == right == bottom == 0:
            return NoOpTransform()
        return ZoomOutTransform(left, top, right, bottom, orig_w=w, orig_h=h, fill=self.fill)


def _box_centres_inside(boxes: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Boolean [N]: box centre strictly inside the window (torchvision's ``is_within_crop_area``)."""
    cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
    cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
    return (x0 < cx) & (cx < x1) & (y0 < cy) & (cy < y1)


def _iou_with_window(boxes: np.ndarray, window: Tuple[float, float, float, float]) -> np.ndarray:
    """IoU [N] of XYXY boxes [N, 4] with one XYXY window."""
    wx0, wy0, wx1, wy1 = window
    iw = np.clip(np.minimum(boxes[:, 2], wx1) - np.maximum(boxes[:, 0], wx0), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], wy1) - np.maximum(boxes[:, 1], wy0), 0, None)
    inter = iw * ih
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + (wx1 - wx0) * (wy1 - wy0) - inter
    return inter / np.maximum(union, 1e-12)


class IoUCropTransform(CropTransform):
    """A :class:`CropTransform` that also discards the boxes whose centre lies outside the crop.

    As in torchvision's ``RandomIoUCrop``, such boxes are made degenerate (all zeros) so that the
    following box sanitation (boxes under 1 px are removed) drops them. Boxes are not clipped here.
    """

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        """Args: box: [N, 4] XYXY pixels of the input image. Returns: [N, 4] in crop pixels."""
        box = np.asarray(box)
        dtype = box.dtype if np.issubdtype(box.dtype, np.floating) else np.float32
        box = box.astype(dtype).reshape(-1, 4)
        inside = _box_centres_inside(box, self.x0, self.y0, self.x0 + self.w, self.y0 + self.h)
        out = np.asarray(super().apply_box(box.copy()), dtype=dtype)
        out[~inside] = 0
        return out


class RandomIoUCrop(Augmentation):
    """SSD IoU crop (torchvision v2 ``RandomIoUCrop``, with RT-DETR's extra probability ``p``).

    With probability ``p``: repeatedly draw a minimum-IoU option from ``sampler_options`` (an
    option >= 1 means "no crop"); for each option try ``trials`` random crops whose sides are
    ``U(min_scale, max_scale)`` times the image's, with aspect ratio in the allowed range, and
    keep the first one that contains the centre of at least one box and whose maximum IoU with
    those boxes is at least the option. Boxes whose centre is outside the crop are dropped (made
    degenerate; see :class:`IoUCropTransform`). Needs boxes; without boxes no crop is made.

    Args:
        min_scale / max_scale: range of the crop side as a fraction of the image side.
        min_aspect_ratio / max_aspect_ratio: range of the crop's width / height.
        sampler_options: the minimum-IoU options.
        trials: crops tried per option.
        p: probability of attempting a crop at all.
        max_rounds: safety bound on the number of options drawn (torchvision loops forever);
            after that many rounds without a crop no crop is made.
    """

    def __init__(
        self,
        *,
        min_scale: float = 0.3,
        max_scale: float = 1.0,
        min_aspect_ratio: float = 0.5,
        max_aspect_ratio: float = 2.0,
        sampler_options: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
        trials: int = 40,
        p: float = 0.8,
        max_rounds: int = 1000,
    ):
        super().__init__()
        sampler_options = tuple(float(o) for o in sampler_options)
        if not sampler_options:
            raise ValueError("sampler_options must not be empty")
        self._init(locals())

    def get_transform(self, image: np.ndarray, boxes: Optional[np.ndarray]) -> Transform:
        if np.random.rand() >= self.p:
            return NoOpTransform()
        if boxes is None or len(boxes) == 0:
            return NoOpTransform()
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        orig_h, orig_w = image.shape[:2]
        for _ in range(self.max_rounds):
            min_iou = self.sampler_options[np.random.randint(len(self.sampler_options))]
            if min_iou >= 1.0:
                return NoOpTransform()
            for _ in range(self.trials):
                r = self.min_scale + (self.max_scale - self.min_scale) * np.random.rand(2)
                new_w, new_h = int(orig_w * r[0]), int(orig_h * r[1])
                if new_w == 0 or new_h == 0:
                    continue
                if not self.min_aspect_ratio <= new_w / new_h <= self.max_aspect_ratio:
                    continue
                r = np.random.rand(2)
                left = int((orig_w - new_w) * r[0])
                top = int((orig_h - new_h) * r[1])
                right, bottom = left + new_w, top + new_h
                inside = _box_centres_inside(boxes, left, top, right, bottom)
                if not inside.any():
                    continue
                if _iou_with_window(boxes[inside], (left, top, right, bottom)).max() < min_iou:
                    continue
                return IoUCropTransform(left, top, new_w, new_h, orig_w=orig_w, orig_h=orig_h)
        return NoOpTransform()


def build_rtdetr_train_augmentations(*, image_size: int = 640, image_format: str = "RGB", photometric_p: float = 0.5,
                                     zoom_out_p: float = 0.5, iou_crop_p: float = 0.8, flip_p: float = 0.5):
    """The official RT-DETR training augmentations (a list for ``RTDETRDatasetMapper``).

    Args:
        image_size: side of the square (squashed) network input.
        image_format: channel order of the mapper's images.
        photometric_p / zoom_out_p / iou_crop_p / flip_p: probabilities of the operations.

    Returns:
        [RandomPhotometricDistort, RandomZoomOut, RandomIoUCrop, T.RandomFlip, T.Resize].
    """
    from detectron2.data import transforms as T

    return [
        RandomPhotometricDistort(p=photometric_p, image_format=image_format),
        RandomZoomOut(fill=0, side_range=(1.0, 4.0), p=zoom_out_p),
        RandomIoUCrop(p=iou_crop_p),
        T.RandomFlip(prob=flip_p, horizontal=True, vertical=False),
        T.Resize((image_size, image_size)),
    ]


def build_rtdetr_test_augmentations(*, image_size: int = 640):
    """The official RT-DETR evaluation augmentation: ``[T.Resize((image_size, image_size))]``."""
    from detectron2.data import transforms as T

    return [T.Resize((image_size, image_size))]
