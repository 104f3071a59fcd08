"""RTDETRDatasetMapper: a detectron2 dataset dict -> RT-DETR model input.

Follows the DetrDatasetMapper pattern (read the image, apply detectron2 augmentations, convert the
annotations to :class:`Instances`) with RT-DETR's specifics:

* images are read with :func:`neo_rtdetr.data.image_io.read_image` (detectron2's ``read_image``:
  EXIF orientation applied, so boxes refer to the displayed image; 16-bit images scaled to 8 bits);
  an unreadable file is an ``OSError`` naming the file and the image id;

* targets carry ``gt_boxes_cxcywh``: normalised (cx, cy, w, h) relative to the augmented image,
  the field :data:`neo_rtdetr.modeling.meta_arch.rtdetr.TARGET_BOXES_FIELD` the model trains on;
* boxes are clipped to the image and boxes under 1 px are removed after every augmentation, like
  the official ``SanitizeBoundingBoxes(min_size=1)`` after the crop and after the resize;
* the "stop epoch" policy: from ``stop_strong_augmentation_epoch`` on, the strong augmentations
  (photometric distortion, zoom-out, IoU crop) are skipped. The sample's epoch comes in
  ``dataset_dict["_epoch"]`` (set by :class:`neo_rtdetr.data.build.RTDETRTrainLoader`);
* per-sample determinism: ``dataset_dict["_sample_seed"]`` seeds numpy's global RNG for the call
  (the previous state is restored afterwards), so a sample's augmentation depends only on
  (loader seed, epoch, index), not on the worker process or the resume point.
"""

import contextlib
import copy
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

from neo_rtdetr.data.image_io import SIZE_SWAPPING_ORIENTATIONS, exif_orientation, read_image

from neo_rtdetr.data.transforms.augmentations import RandomIoUCrop, RandomPhotometricDistort, RandomZoomOut
from neo_rtdetr.modeling.meta_arch.rtdetr import TARGET_BOXES_FIELD

__all__ = ["RTDETRDatasetMapper", "numpy_seed_for", "numpy_rng_seeded"]

logger = logging.getLogger(__name__)

#: Boxes with a side under this many pixels are removed (official SanitizeBoundingBoxes(min_size=1)).
MIN_BOX_SIZE = 1.0


def numpy_seed_for(*values: int) -> int:
    """A 32-bit seed for ``np.random.seed`` derived from a tuple of non-negative integers."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, dtype=np.uint32)[0])


@contextlib.contextmanager
def numpy_rng_seeded(seed: Optional[int]) -> Iterator[None]:
    """Seed numpy's global RNG inside the block and restore its previous state afterwards.

    Args:
        seed: a seed for ``np.random.seed``; None leaves the global RNG alone.
    """
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _clip_and_filter(boxes: np.ndarray, classes: np.ndarray, height: int, width: int,
                     min_size: float = MIN_BOX_SIZE) -> Tuple[np.ndarray, np.ndarray]:
    """Clip XYXY boxes [N, 4] to the image and drop those with width or height < ``min_size``."""
    boxes = boxes.copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return boxes[keep], classes[keep]


def _exif_hint(file_name: str, dataset_dict: Dict, image: np.ndarray) -> str:
    """Explain a width/height swap caused by an EXIF rotation (empty string otherwise)."""
    h, w = image.shape[:2]
    if (dataset_dict.get("width"), dataset_dict.get("height")) != (h, w):
        return ""
    try:
        with Image.open(file_name) as im:
            orientation = exif_orientation(im)
    except OSError:
        return ""
    if orientation not in SIZE_SWAPPING_ORIENTATIONS:
        return ""
    return (
        f". The file has EXIF orientation {orientation}: it is stored as {h}x{w} (width x height) and displayed, "
        f"like detectron2's read_image loads it, as {w}x{h}. The annotation uses the stored size, but COCO "
        "annotations (width, height and boxes) must refer to the displayed image: rotate the boxes and swap "
        "width/height in the JSON, or strip the EXIF orientation from the file if the boxes refer to the stored pixels"
    )


class RTDETRDatasetMapper:
    """Map one detectron2 dataset dict to the input format of :class:`RTDETR`.

    Output dict (the input dict's other keys, e.g. ``file_name``, ``_epoch``, are kept; the
    ``annotations`` are removed):

    * ``image``: uint8 tensor [3, H', W'] in ``image_format`` (H', W' = augmented size);
    * ``height``, ``width``: the original image size (for post-processing predictions);
    * ``image_id``;
    * training only, ``instances``: :class:`Instances` of ``image_size=(H', W')`` with
      ``gt_boxes`` (:class:`Boxes`, absolute XYXY [n, 4] float32 in augmented pixels, for
      visualisation), ``gt_classes`` (int64 [n]) and ``gt_boxes_cxcywh`` (float32 [n, 4],
      normalised cx, cy, w, h in [0, 1]). Crowd annotations are dropped.

    Args:
        is_train: training (augment, build instances) or inference (annotations are dropped).
        augmentations: detectron2 augmentations/transforms applied in order (see
            :func:`neo_rtdetr.data.transforms.build_rtdetr_train_augmentations`). In inference
            use resize-only lists; strong augmentations are skipped there with a warning.
        image_format: format for ``detection_utils.read_image`` ("RGB" or "BGR").
        strong_augmentation_types: augmentation classes turned off by the stop-epoch policy.
        stop_strong_augmentation_epoch: from this epoch on (``dataset_dict["_epoch"]``, 0 when
            absent) the strong augmentations are skipped; None = never.
        seed: salt mixed with ``dataset_dict["_sample_seed"]`` to seed numpy for the call.
    """

    def __init__(
        self,
        *,
        is_train: bool,
        augmentations: Sequence,
        image_format: str = "RGB",
        strong_augmentation_types: Tuple[type, ...] = (RandomPhotometricDistort, RandomZoomOut, RandomIoUCrop),
        stop_strong_augmentation_epoch: Optional[int] = None,
        seed: int = 0,
    ):
        self.is_train = bool(is_train)
        self.augmentations = list(augmentations)
        for aug in self.augmentations:
            if not isinstance(aug, (T.Augmentation, T.Transform)):
                raise TypeError(f"augmentations must be detectron2 Augmentation or Transform objects, got {aug!r}")
        self.image_format = image_format
        self.strong_augmentation_types = tuple(strong_augmentation_types)
        self.stop_strong_augmentation_epoch = stop_strong_augmentation_epoch
        self.seed = 0 if seed is None else int(seed)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not self.is_train:
            strong = [a for a in self.augmentations if self._is_strong(a)]
            if strong:
                logger.warning("RTDETRDatasetMapper(is_train=False) skips the strong augmentations %s", strong)
        logger.info("[RTDETRDatasetMapper] is_train=%s, augmentations=%s, stop_strong_augmentation_epoch=%s",
                    self.is_train, self.augmentations, stop_strong_augmentation_epoch)

    def _is_strong(self, aug) -> bool:
        return bool(self.strong_augmentation_types) and isinstance(aug, self.strong_augmentation_types)

    def augmentations_for_epoch(self, epoch: int) -> List:
        """The augmentations applied to a sample of ``epoch`` (stop-epoch policy applied)."""
        stop = self.stop_strong_augmentation_epoch
        skip_strong = (not self.is_train) or (stop is not None and epoch >= stop)
        return [a for a in self.augmentations if not (skip_strong and self._is_strong(a))]

    def _read_image(self, dataset_dict: Dict) -> np.ndarray:
        """Read the image (:func:`neo_rtdetr.data.image_io.read_image`: detectron2's semantics, EXIF
        applied) and check its size against the dict's ``height`` / ``width``.

        Raises:
            OSError: missing, truncated or corrupt file (names the file and the image id).
            detectron2's ``SizeMismatchError``: the size differs from the annotation's (names the
                file; explains EXIF rotation when that is the cause).
        """
        file_name = dataset_dict.get("file_name")
        image_id = dataset_dict.get("image_id")
        if file_name is None:
            raise KeyError(f"dataset dict (image_id={image_id}) has no 'file_name'")
        try:
            image = read_image(file_name, format=self.image_format)
        except Exception as e:  # noqa: BLE001 - any decoding error: report which file
            raise OSError(f"cannot read image '{file_name}' (image_id={image_id}): {type(e).__name__}: {e}") from e
        try:
            utils.check_image_size(dataset_dict, image)  # raises with the file name on a size mismatch
        except utils.SizeMismatchError as e:
            raise utils.SizeMismatchError(f"{e} (image_id={image_id}){_exif_hint(file_name, dataset_dict, image)}") from e
        return image

    def __call__(self, dataset_dict: Dict) -> Dict:
        """Map one dataset dict (not modified).

        Args:
            dataset_dict: detectron2 dataset dict (``file_name``, ``height``, ``width``,
                ``image_id``, ``annotations`` with ``bbox``/``bbox_mode``/``category_id``/``iscrowd``),
                optionally ``_epoch`` and ``_sample_seed``.

        Returns:
            The mapped dict described in the class docstring.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        sample_seed = dataset_dict.get("_sample_seed")
        seed = None if sample_seed is None else numpy_seed_for(self.seed, sample_seed)
        with numpy_rng_seeded(seed):
            return self._map(dataset_dict)

    def _map(self, dataset_dict: Dict) -> Dict:
        image = self._read_image(dataset_dict)
        annotations = dataset_dict.pop("annotations", None)
        epoch = int(dataset_dict.get("_epoch", 0))
        augmentations = self.augmentations_for_epoch(epoch)

        if not self.is_train:
            aug_input = T.AugInput(image)
            T.AugmentationList(augmentations)(aug_input)
            dataset_dict["image"] = self._to_tensor(aug_input.image)
            return dataset_dict

        annotations = [a for a in (annotations or []) if int(a.get("iscrowd", 0)) == 0]
        if annotations:
            boxes = np.stack(
                [BoxMode.convert(np.asarray(a["bbox"], dtype=np.float64)[None], a["bbox_mode"], BoxMode.XYXY_ABS)[0]
                 for a in annotations]
            ).astype(np.float32)
            classes = np.asarray([int(a["category_id"]) for a in annotations], dtype=np.int64)
        else:
            boxes = np.zeros((0, 4), np.float32)
            classes = np.zeros((0,), np.int64)

        h, w = image.shape[:2]
        boxes, classes = _clip_and_filter(boxes, classes, h, w)
        aug_input = T.AugInput(image, boxes=boxes)
        for aug in augmentations:
            aug(aug_input) if isinstance(aug, T.Augmentation) else aug_input.transform(aug)
            h, w = aug_input.image.shape[:2]
            boxes, classes = _clip_and_filter(np.asarray(aug_input.boxes, np.float32).reshape(-1, 4), classes, h, w)
            aug_input.boxes = boxes

        image = aug_input.image
        h, w = image.shape[:2]
        dataset_dict["image"] = self._to_tensor(image)
        dataset_dict["instances"] = self._instances(boxes, classes, h, w)
        return dataset_dict

    @staticmethod
    def _to_tensor(image: np.ndarray) -> torch.Tensor:
        """[H, W, C] uint8 array -> [C, H, W] uint8 tensor."""
        if image.ndim == 2:
            image = image[:, :, None]
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        if not chw.flags.writeable:  # a view of PIL's read-only buffer (e.g. 1-pixel-wide images)
            chw = chw.copy()
        return torch.as_tensor(chw)

    @staticmethod
    def _instances(boxes: np.ndarray, classes: np.ndarray, h: int, w: int) -> Instances:
        """Build the targets.

        Args:
            boxes: [n, 4] float32 absolute XYXY boxes inside the (h, w) image.
            classes: [n] int64 contiguous class ids.
            h, w: augmented image size.
        """
        xyxy = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        scale = xyxy.new_tensor([w, h, w, h])
        norm = xyxy / scale
        cxcywh = torch.stack(
            [(norm[:, 0] + norm[:, 2]) / 2, (norm[:, 1] + norm[:, 3]) / 2, norm[:, 2] - norm[:, 0], norm[:, 3] - norm[:, 1]],
            dim=-1,
        ).clamp_(0.0, 1.0)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(xyxy)
        inst.gt_classes = torch.as_tensor(classes, dtype=torch.int64).reshape(-1)
        inst.set(TARGET_BOXES_FIELD, cxcywh)
        return inst
