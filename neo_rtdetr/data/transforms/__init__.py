"""RT-DETR data augmentations (detectron2 ``Augmentation`` s with torchvision v2 semantics)."""

from .augmentations import (
    IoUCropTransform,
    PhotometricDistortTransform,
    RandomIoUCrop,
    RandomPhotometricDistort,
    RandomZoomOut,
    ZoomOutTransform,
    build_rtdetr_test_augmentations,
    build_rtdetr_train_augmentations,
)

__all__ = [
    "IoUCropTransform",
    "PhotometricDistortTransform",
    "RandomIoUCrop",
    "RandomPhotometricDistort",
    "RandomZoomOut",
    "ZoomOutTransform",
    "build_rtdetr_test_augmentations",
    "build_rtdetr_train_augmentations",
]
