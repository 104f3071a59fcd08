"""COCO-format detection JSON -> Detectron2 dataset dicts, validated first.

The counterpart of detectron2's ``load_coco_json`` for box detection, with the checks of
:mod:`neo_rtdetr.data.validation` in front: an unusable file is rejected with a message naming it
and the offending ids, fixable annotations are dropped or clipped with one summary warning per
dataset. The output is what ``load_coco_json`` produces for boxes (same dict keys, the same
``thing_classes`` / ``thing_dataset_id_to_contiguous_id`` metadata, images sorted by id,
``bbox_mode`` XYWH_ABS, contiguous ``category_id``), plus the annotation ``id`` so that later
messages can name it. Segmentation and keypoint fields are not loaded (RT-DETR detects boxes).
"""

import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional, Set, Tuple

from neo_rtdetr.data.validation import CocoValidationReport, read_coco_json, validate_coco_dict

__all__ = ["load_coco_detection_json"]

logger = logging.getLogger(__name__)

# (dataset name, json file) pairs whose validation summary was already logged in this process:
# detectron2 calls the loader every time the dataset is requested (train loader, evaluation...).
_SUMMARY_LOGGED: Set[Tuple[Optional[str], str]] = set()


def _log_report(report: CocoValidationReport, json_file: str, dataset_name: Optional[str]) -> None:
    key = (dataset_name, json_file)
    if key in _SUMMARY_LOGGED:
        return
    _SUMMARY_LOGGED.add(key)
    if report.has_changes:
        logger.warning(report.summary())
    else:
        logger.info(report.summary())
    if report.num_kept == 0:
        logger.warning(
            f"{dataset_name or json_file}: no usable annotations ({report.num_annotations} in the file): "
            "usable for inference only; training on it is refused"
        )


def load_coco_detection_json(json_file: str, image_root: str, dataset_name: Optional[str] = None) -> List[Dict]:
    """Load a COCO instances JSON as Detectron2 dataset dicts for box detection.

    Args:
        json_file: the COCO JSON file.
        image_root: folder the images' ``file_name`` entries are relative to.
        dataset_name: registered name; when given, ``thing_classes`` and
            ``thing_dataset_id_to_contiguous_id`` are put into its ``MetadataCatalog`` entry.

    Returns:
        One dict per image (sorted by image id): ``file_name``, ``height``, ``width``,
        ``image_id`` and ``annotations`` (``id``, ``bbox`` [x, y, w, h] pixels, ``bbox_mode``
        XYWH_ABS, ``category_id`` in ``0..K-1``, ``iscrowd`` 0).

    Raises:
        FileNotFoundError: missing JSON file.
        neo_rtdetr.data.validation.CocoFormatError: the problems listed in
            :mod:`neo_rtdetr.data.validation` (a ``ValueError`` naming the file and ids).
    """
    from detectron2.data import MetadataCatalog
    from detectron2.structures import BoxMode

    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    data, report = validate_coco_dict(read_coco_json(json_file), source=json_file, dataset_name=dataset_name)
    _log_report(report, json_file, dataset_name)

    categories = sorted(data["categories"], key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(categories)}
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        meta.thing_classes = [c["name"] for c in categories]
        meta.thing_dataset_id_to_contiguous_id = id_map

    per_image = defaultdict(list)
    for a in data["annotations"]:
        per_image[a["image_id"]].append(
            {
                "id": a["id"],
                "bbox": a["bbox"],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map[a["category_id"]],
                "iscrowd": 0,
            }
        )
    dicts = []
    # integer ids sort numerically (as detectron2 does); string ids, which some tools write, after them
    for img in sorted(data["images"], key=lambda im: (isinstance(im["id"], str), im["id"])):
        dicts.append(
            {
                "file_name": os.path.join(image_root, img["file_name"]),
                "height": int(img["height"]),
                "width": int(img["width"]),
                "image_id": img["id"],
                "annotations": per_image.get(img["id"], []),
            }
        )
    logger.info(f"Loaded {len(dicts)} images in COCO format from {json_file}")
    return dicts
