"""Draw what the training loader feeds the model (logic of ``tools/visualize_data.py``).

A training sample (the output of :class:`~neo_rtdetr.data.dataset_mapper.RTDETRDatasetMapper`,
after the loader's multi-scale resize) holds the augmented image and two copies of its boxes:
``gt_boxes_cxcywh`` (normalised cx, cy, w, h: what the model trains on) and ``gt_boxes`` (absolute
XYXY pixels). :func:`draw_train_sample` maps the normalised boxes back to pixels and draws them with
their class names (solid, :data:`TARGET_COLOR`), then draws ``gt_boxes`` dashed in
:data:`PIXEL_BOX_COLOR` on top: when the two agree the dashes lie on the solid boxes.
"""

import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from neo_rtdetr.modeling.meta_arch.rtdetr import TARGET_BOXES_FIELD

__all__ = [
    "TARGET_COLOR",
    "PIXEL_BOX_COLOR",
    "normalized_cxcywh_to_pixel_xyxy",
    "box_disagreement",
    "class_names_for",
    "draw_train_sample",
    "build_train_loader_for_visualization",
    "iterate_train_batches",
]

logger = logging.getLogger(__name__)

#: colour (RGB in [0, 1]) of the boxes derived from ``gt_boxes_cxcywh`` (drawn solid, with labels)
TARGET_COLOR = (0.0, 1.0, 0.0)
#: colour of ``gt_boxes`` (drawn dashed on top)
PIXEL_BOX_COLOR = (1.0, 0.0, 1.0)


def normalized_cxcywh_to_pixel_xyxy(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalised (cx, cy, w, h) boxes [n, 4] -> absolute (x0, y0, x1, y1) pixels of an H x W image."""
    boxes = boxes.reshape(-1, 4).float()
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    return xyxy * xyxy.new_tensor([width, height, width, height])


def _target_boxes(sample: Dict) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], int, int]:
    if "instances" not in sample:
        raise ValueError("the sample has no 'instances' (a training sample of RTDETRDatasetMapper is needed)")
    inst = sample["instances"]
    h, w = (int(s) for s in sample["image"].shape[-2:])
    if not inst.has(TARGET_BOXES_FIELD):
        raise ValueError(f"the sample's instances have no '{TARGET_BOXES_FIELD}'")
    boxes = normalized_cxcywh_to_pixel_xyxy(inst.get(TARGET_BOXES_FIELD), h, w)
    pixel = inst.gt_boxes.tensor.float() if inst.has("gt_boxes") else None
    return boxes, inst.gt_classes, pixel, h, w


def box_disagreement(sample: Dict) -> float:
    """Largest |difference| in pixels between ``gt_boxes`` and the pixel boxes of ``gt_boxes_cxcywh``.

    Returns:
        0.0 for a sample without boxes; ``nan`` when the sample has no ``gt_boxes``.
    """
    boxes, _, pixel, _, _ = _target_boxes(sample)
    if pixel is None:
        return float("nan")
    if boxes.numel() == 0:
        return 0.0
    return float((boxes - pixel).abs().max())


def class_names_for(dataset_names, num_classes: Optional[int] = None) -> List[str]:
    """``thing_classes`` of the (first) dataset in MetadataCatalog, else ``"0"``, ``"1"``...

    Args:
        dataset_names: a registered name or a list of names (``dataloader.train.dataset.names``).
        num_classes: how many plain ids to make when the metadata has no ``thing_classes``.
    """
    from detectron2.data import MetadataCatalog

    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names or [])
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes:
            return list(classes)
    return [str(i) for i in range(num_classes or 0)]


def draw_train_sample(
    sample: Dict, class_names: Sequence[str] = (), *, image_format: str = "RGB", scale: float = 1.0
) -> np.ndarray:
    """Draw a training sample's boxes on its augmented image with Detectron2's ``Visualizer``.

    Args:
        sample: a mapped training dict: ``image`` (uint8 [3, H, W] in ``image_format``) and
            ``instances`` with ``gt_boxes_cxcywh``, ``gt_classes`` and (optionally) ``gt_boxes``.
        class_names: names of the contiguous class ids (ids without a name are drawn as numbers).
        image_format: channel order of ``sample["image"]`` ("RGB" or "BGR").
        scale: output scale of the Visualizer (the drawing is ``scale`` x the image size).

    Returns:
        The drawing, RGB uint8 [round(H * scale), round(W * scale), 3].
    """
    from detectron2.utils.visualizer import Visualizer

    boxes, classes, pixel, h, w = _target_boxes(sample)
    image = sample["image"].detach().cpu()
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"sample['image'] must be [3, H, W], got {tuple(image.shape)}")
    rgb = image.permute(1, 2, 0).numpy().astype(np.uint8)
    if image_format == "BGR":
        rgb = rgb[:, :, ::-1]
    elif image_format != "RGB":
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    vis = Visualizer(np.ascontiguousarray(rgb), metadata=None, scale=scale)
    labels = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in classes.tolist()]
    if len(boxes):
        vis.overlay_instances(boxes=boxes.numpy(), labels=labels, assigned_colors=[TARGET_COLOR] * len(boxes))
    if pixel is not None:
        for box in pixel.tolist():
            vis.draw_box(box, edge_color=PIXEL_BOX_COLOR, line_style="--")
    return vis.output.get_image()


def build_train_loader_for_visualization(cfg, *, num_workers: int = 0):
    """Run the config's dataset registrations and build its training loader in this process.

    Args:
        cfg: a training LazyConfig (``dataloader.train``, ``dataloader.datasets``).
        num_workers: DataLoader workers (0: map in the main process).

    Returns:
        The instantiated ``dataloader.train`` (a :class:`~neo_rtdetr.data.build.RTDETRTrainLoader`).
    """
    from detectron2.config import instantiate

    from neo_rtdetr.data.catalog import register_datasets_from_config

    register_datasets_from_config(cfg.dataloader.get("datasets"))
    cfg.dataloader.train.num_workers = num_workers
    if "pin_memory" in cfg.dataloader.train:
        cfg.dataloader.train.pin_memory = False
    return instantiate(cfg.dataloader.train)


def iterate_train_batches(loader, num_batches: int, start_iter: int = 0) -> Iterator[Tuple[int, List[Dict]]]:
    """Yield ``(iteration, batch)`` for ``num_batches`` iterations of a training loader from ``start_iter``."""
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    if hasattr(loader, "set_start_iter"):
        loader.set_start_iter(start_iter)
    elif start_iter:
        raise ValueError("this loader cannot start at another iteration (no set_start_iter)")
    for i, batch in enumerate(loader):
        yield start_iter + i, batch
        if i + 1 >= num_batches:
            break
