"""Python inference API (v0.6's DefaultPredictor is yacs-only)."""

import logging
import os
from typing import List, Sequence, Union

import numpy as np
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.data import transforms as T
from detectron2.structures import Instances

from neo_rtdetr.data.image_io import read_image

__all__ = ["Predictor"]

logger = logging.getLogger(__name__)

ImageLike = Union[str, os.PathLike, np.ndarray, torch.Tensor]


def _check_uint8(image: np.ndarray) -> np.ndarray:
    """Arrays and tensors must hold uint8 pixels (a float image would be cast silently, NaN included)."""
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError(f"the image has NaN or inf pixel values ({image.dtype})")
    raise ValueError(
        f"numpy/tensor images must be uint8 in [0, 255], got {image.dtype}; e.g. "
        "(img * 255).round().clip(0, 255).astype(np.uint8) for float images in [0, 1]"
    )


class Predictor:
    """Load a model from a LazyConfig (+ checkpoint) and run it on images.

    Accepted images: a file path (read like the training data: EXIF orientation applied, 16-bit
    scaled to 8-bit); a numpy HxWx3 uint8 array in ``numpy_format`` channel order (default "BGR",
    as ``cv2.imread`` gives); a torch uint8 tensor 3xHxW in RGB. Other dtypes are a ``ValueError``
    (NaN/inf pixels named as such), not a silent cast. A list is run in batches of
    ``batch_size``; an empty list gives an empty list; an error names the list index.

    Args:
        config: path of a LazyConfig file, or a loaded config.
        checkpoint: weights to load (EMA weights preferred when present); None keeps
            ``train.init_checkpoint`` if set, else random weights (with a warning).
        device: "cuda", "cpu", ... (default: cuda if available).
        numpy_format: channel order of numpy inputs, "BGR" or "RGB".
        batch_size: images per forward pass for list inputs.
        fast: run a :class:`~neo_rtdetr.engine.fast_inference.FastInference` copy of the model (deployed,
            channels-last, one CUDA graph per input shape; bf16 on CUDA, float32 elsewhere) instead of the model.
    """

    def __init__(
        self, config, checkpoint=None, *, device=None, numpy_format: str = "BGR", batch_size: int = 8,
        fast: bool = False,
    ):
        from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer
        from neo_rtdetr.data.catalog import register_datasets_from_config

        cfg = LazyConfig.load(config) if isinstance(config, (str, os.PathLike)) else config
        if numpy_format not in ("BGR", "RGB"):
            raise ValueError(f"numpy_format must be 'BGR' or 'RGB', got {numpy_format!r}")
        self.cfg = cfg
        self.numpy_format = numpy_format
        self.batch_size = int(batch_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        register_datasets_from_config(cfg.dataloader.get("datasets") if "dataloader" in cfg else None)
        self.model = instantiate(cfg.model).to(self.device).eval()
        checkpoint = checkpoint or cfg.get("train", {}).get("init_checkpoint") or None
        if checkpoint:
            RTDETRCheckpointer(self.model).load_for_inference(checkpoint)
        else:
            logger.warning("Predictor: no checkpoint given, the model has random weights")
        self.input_format = self.model.input_format
        self.resize = self._test_resize(cfg)
        self.runner = self.model
        if fast:
            from neo_rtdetr.engine.fast_inference import FastInference

            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            self.runner = FastInference(self.model, dtype=dtype)

    @staticmethod
    def _test_resize(cfg):
        """The eval resize of ``dataloader.test.mapper`` (None: images keep their size)."""
        try:
            augs = cfg.dataloader.test.mapper.augmentations
        except Exception:  # noqa: BLE001 - a model-only config has no data section
            return None
        augs = [instantiate(a) for a in augs]
        return T.AugmentationList(augs) if augs else None

    def _to_rgb_hwc(self, image: ImageLike) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            return read_image(os.fspath(image), format="RGB")
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"numpy images must be HxWx3, got shape {image.shape}")
            return _check_uint8(image)[:, :, ::-1] if self.numpy_format == "BGR" else _check_uint8(image)
        if isinstance(image, torch.Tensor):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"tensor images must be 3xHxW (RGB), got shape {tuple(image.shape)}")
            return _check_uint8(image.permute(1, 2, 0).cpu().numpy())
        raise TypeError(f"unsupported image type {type(image).__name__}")

    def _inputs(self, image: ImageLike) -> dict:
        rgb = np.ascontiguousarray(self._to_rgb_hwc(image))
        h, w = rgb.shape[:2]
        if self.resize is not None:
            aug = T.AugInput(rgb)
            self.resize(aug)
            rgb = aug.image
        if self.input_format == "BGR":
            rgb = rgb[:, :, ::-1]
        tensor = torch.as_tensor(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        return {"image": tensor, "height": h, "width": w}

    @torch.no_grad()
    def __call__(self, images: Union[ImageLike, Sequence[ImageLike]]) -> Union[Instances, List[Instances]]:
        """Detections (``pred_boxes`` XYXY in the original image's pixels, ``scores``, ``pred_classes``).

        Returns one ``Instances`` for one image, a list for a list.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        results: List[Instances] = []
        for start in range(0, len(items), self.batch_size):
            batch = []
            for i, x in enumerate(items[start : start + self.batch_size], start):
                try:
                    batch.append(self._inputs(x))
                except (ValueError, TypeError, OSError) as e:
                    if single:
                        raise
                    raise type(e)(f"image {i} of the list: {e}") from e
            results.extend(out["instances"].to("cpu") for out in self.runner(batch))
        return results[0] if single else results
