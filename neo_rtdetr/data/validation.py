"""Validation of COCO-format detection JSON before anything trains on it.

:func:`read_coco_json` reads the file (a malformed file is a ``ValueError`` naming the file, line
and column); :func:`validate_coco_dict` checks its structure and sorts every problem into one of
two kinds:

* **rejected** (:class:`CocoFormatError`, a ``ValueError`` naming the file and the offending ids):
  problems no sensible training run can fix on its own: no images, no categories, duplicate
  image / annotation / category ids, annotations pointing at images that do not exist or at
  category ids missing from ``categories``, images without a positive ``height`` / ``width``,
  malformed ``bbox`` fields (not 4 numbers);
* **handled** (the annotation is fixed or dropped and counted in ONE summary warning per dataset):
  crowd annotations (dropped from training, like the official ``ConvertCocoPolysToMask``; COCO
  evaluation still reads them from the JSON), boxes with NaN/inf (or null) coordinates, boxes with
  zero or negative width/height, boxes entirely outside their image (dropped) and boxes partly
  outside (clipped to the image).

Images without annotations are kept (COCO train has about 1,000 of them: they are negatives); a
file without any annotation is allowed here (inference / evaluation sets), and refused for
training by :mod:`neo_rtdetr.engine.preflight`.
"""

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from detectron2.utils.file_io import PathManager

__all__ = [
    "CocoFormatError",
    "CocoValidationReport",
    "read_coco_json",
    "validate_coco_dict",
    "format_ids",
]

#: How many ids an error or warning lists before "... (N more)".
MAX_LISTED_IDS = 10


class CocoFormatError(ValueError):
    """A COCO JSON file has a problem that is not fixed automatically (names the file and ids)."""


def format_ids(ids: Iterable[Any], limit: int = MAX_LISTED_IDS) -> str:
    """``"12, 40, 41"`` or ``"12, 40, ... (7 more)"`` for a long list."""
    ids = list(ids)
    shown = ", ".join(str(i) for i in ids[:limit])
    if len(ids) > limit:
        shown += f", ... ({len(ids) - limit} more)"
    return shown


@dataclass
class CocoValidationReport:
    """What :func:`validate_coco_dict` fixed or dropped (annotation ids per reason).

    Attributes:
        source: the JSON file (or a description of the dict's origin).
        dataset_name: registered name, when known.
        num_images / num_annotations / num_categories: counts in the file.
        crowd: ids of crowd annotations (dropped).
        non_finite: ids of boxes with NaN / inf / null coordinates (dropped).
        non_positive: ids of boxes with width or height <= 0 (dropped).
        outside: ids of boxes entirely outside their image (dropped).
        clipped: ids of boxes partly outside their image (clipped to it, kept).
        images_without_annotations: ids of images left without any annotation (kept).
    """

    source: str
    dataset_name: Optional[str] = None
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    crowd: List[Any] = field(default_factory=list)
    non_finite: List[Any] = field(default_factory=list)
    non_positive: List[Any] = field(default_factory=list)
    outside: List[Any] = field(default_factory=list)
    clipped: List[Any] = field(default_factory=list)
    images_without_annotations: List[Any] = field(default_factory=list)

    @property
    def num_dropped(self) -> int:
        """Annotations removed (crowd included)."""
        return len(self.crowd) + len(self.non_finite) + len(self.non_positive) + len(self.outside)

    @property
    def num_kept(self) -> int:
        return self.num_annotations - self.num_dropped

    @property
    def has_changes(self) -> bool:
        """True when an annotation was dropped or clipped (a warning is due)."""
        return bool(self.num_dropped or self.clipped)

    def _label(self) -> str:
        name = f"{self.dataset_name} " if self.dataset_name else ""
        return f"{name}({self.source})"

    def summary(self) -> str:
        """One line saying what was dropped / clipped (ids listed) and what is left."""
        parts = []
        for ids, what in (
            (self.non_positive, "with zero or negative width/height"),
            (self.non_finite, "with NaN/inf/null coordinates"),
            (self.outside, "entirely outside their image"),
            (self.crowd, "crowd (iscrowd=1; not trained on, COCO evaluation still uses them)"),
        ):
            if ids:
                parts.append(f"{len(ids)} {what} (ids {format_ids(ids)})")
        text = f"{self._label()}: "
        if parts:
            text += f"dropped {self.num_dropped} of {self.num_annotations} annotations: " + "; ".join(parts) + ". "
        if self.clipped:
            text += f"Clipped {len(self.clipped)} boxes partly outside their image to the image (ids {format_ids(self.clipped)}). "
        text += (
            f"Kept {self.num_kept} annotations on {self.num_images} images "
            f"({len(self.images_without_annotations)} images without annotations, kept as negatives)."
        )
        return text


def read_coco_json(json_file: str) -> Dict[str, Any]:
    """Read a COCO JSON file.

    Args:
        json_file: a local path or any URI that detectron2's ``PathManager`` resolves to a local
            file (``PathManager.get_local_path``, as detectron2's own COCO loader does).

    Raises:
        FileNotFoundError: the file does not exist (named as given).
        CocoFormatError: the file is not valid JSON (file, line and column named) or its top level
            is not an object.
    """
    json_file = os.fspath(json_file)
    try:
        local_file = PathManager.get_local_path(json_file)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"COCO annotation file {json_file} does not exist ({e})") from e
    if not os.path.isfile(local_file):
        raise FileNotFoundError(f"COCO annotation file {json_file} does not exist")
    try:
        with open(local_file, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CocoFormatError(
            f"{json_file} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (character {e.pos})"
        ) from e
    except UnicodeDecodeError as e:
        raise CocoFormatError(f"{json_file} is not valid JSON text: {e}") from e
    if not isinstance(data, dict):
        raise CocoFormatError(
            f"{json_file}: the top level must be an object with 'images', 'annotations' and 'categories', "
            f"got a {type(data).__name__}"
        )
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_positive_int(v: Any) -> bool:
    """An int > 0, or a float with an integer value > 0 (some tools write 480.0)."""
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    return _is_int(v) and v > 0


def _is_number_or_null(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _duplicates(values: Iterable[Any]) -> List[Any]:
    return sorted((v for v, n in Counter(values).items() if n > 1), key=str)


def _list_field(data: Dict, key: str, source: str, required: bool) -> List:
    if key not in data:
        if required:
            raise CocoFormatError(f"{source}: no '{key}' list (keys: {sorted(data)})")
        return []
    value = data[key]
    if not isinstance(value, list):
        raise CocoFormatError(f"{source}: '{key}' must be a list, got a {type(value).__name__}")
    return value


def _check_images(images: List, source: str) -> Dict[Any, Tuple[float, float]]:
    if not images:
        raise CocoFormatError(f"{source}: the dataset is empty ('images' is an empty list)")
    bad_entries = [i for i, im in enumerate(images) if not isinstance(im, dict) or "id" not in im]
    if bad_entries:
        raise CocoFormatError(f"{source}: 'images' entries without an 'id' at positions {format_ids(bad_entries)}")
    ids = [im["id"] for im in images]
    dup = _duplicates(ids)
    if dup:
        raise CocoFormatError(f"{source}: duplicate image ids {format_ids(dup)} ({len(dup)} ids used more than once)")
    no_file = [im["id"] for im in images if not isinstance(im.get("file_name"), str) or not im.get("file_name")]
    if no_file:
        raise CocoFormatError(f"{source}: images without a 'file_name': ids {format_ids(no_file)}")
    bad_size = [im["id"] for im in images if not (_is_positive_int(im.get("height")) and _is_positive_int(im.get("width")))]
    if bad_size:
        raise CocoFormatError(
            f"{source}: images without a positive integer 'height' and 'width': ids {format_ids(bad_size)}"
        )
    return {im["id"]: (float(im["width"]), float(im["height"])) for im in images}


def _check_categories(categories: List, source: str) -> set:
    if not categories:
        raise CocoFormatError(f"{source}: 'categories' is empty: the class list (and num_classes) comes from it")
    bad = [i for i, c in enumerate(categories) if not isinstance(c, dict) or not _is_int(c.get("id")) or "name" not in c]
    if bad:
        raise CocoFormatError(f"{source}: 'categories' entries need an integer 'id' and a 'name'; bad positions {format_ids(bad)}")
    ids = [c["id"] for c in categories]
    dup = _duplicates(ids)
    if dup:
        raise CocoFormatError(f"{source}: duplicate category ids {format_ids(dup)}")
    return set(ids)


def _check_annotation_structure(annotations: List, image_sizes: Dict, category_ids: set, source: str) -> None:
    no_id = [i for i, a in enumerate(annotations) if not isinstance(a, dict) or "id" not in a]
    if no_id:
        raise CocoFormatError(f"{source}: annotations without an 'id' at positions {format_ids(no_id)}")
    dup = _duplicates(a["id"] for a in annotations)
    if dup:
        raise CocoFormatError(f"{source}: duplicate annotation ids {format_ids(dup)}")
    missing_image = [(a["id"], a.get("image_id")) for a in annotations if a.get("image_id") not in image_sizes]
    if missing_image:
        pairs = format_ids(f"{aid} -> image {iid}" for aid, iid in missing_image)
        raise CocoFormatError(
            f"{source}: {len(missing_image)} annotations point at image ids that are not in 'images' "
            f"(annotation id -> image id: {pairs})"
        )
    unknown_cat = [(a["id"], a.get("category_id")) for a in annotations if a.get("category_id") not in category_ids]
    if unknown_cat:
        cats = sorted({c for _, c in unknown_cat}, key=str)
        raise CocoFormatError(
            f"{source}: {len(unknown_cat)} annotations have category ids missing from 'categories' "
            f"(unknown category ids {format_ids(cats)}; annotation ids {format_ids(a for a, _ in unknown_cat)}; "
            f"known category ids {format_ids(sorted(category_ids))})"
        )
    bad_bbox = [
        a["id"] for a in annotations
        if not isinstance(a.get("bbox"), (list, tuple)) or len(a["bbox"]) != 4 or not all(_is_number_or_null(v) for v in a["bbox"])
    ]
    if bad_bbox:
        raise CocoFormatError(
            f"{source}: annotations whose 'bbox' is not a list of 4 numbers [x, y, width, height]: ids {format_ids(bad_bbox)}"
        )


def validate_coco_dict(
    data: Dict[str, Any], *, source: str, dataset_name: Optional[str] = None
) -> Tuple[Dict[str, Any], CocoValidationReport]:
    """Check a parsed COCO detection dict, reject what cannot be fixed, fix or drop the rest.

    Args:
        data: the parsed JSON (not modified).
        source: the file it came from (used in messages).
        dataset_name: registered name (used in messages).

    Returns:
        ``(clean, report)``: ``clean`` is a shallow copy of ``data`` whose ``annotations`` hold only
        the kept annotations (non-crowd, finite, positive size, boxes clipped to their image; the
        kept annotations are copies, ``bbox`` as 4 floats); ``report`` says what changed.

    Raises:
        CocoFormatError: for the problems listed in the module docstring, naming ``source`` and ids.
    """
    label = f"{dataset_name} ({source})" if dataset_name else source
    images = _list_field(data, "images", label, required=True)
    annotations = _list_field(data, "annotations", label, required=False)
    categories = _list_field(data, "categories", label, required=True)

    image_sizes = _check_images(images, label)
    category_ids = _check_categories(categories, label)
    _check_annotation_structure(annotations, image_sizes, category_ids, label)

    report = CocoValidationReport(
        source=source, dataset_name=dataset_name, num_images=len(images),
        num_annotations=len(annotations), num_categories=len(categories),
    )
    kept = []
    for a in annotations:
        aid = a["id"]
        if a.get("iscrowd", 0):
            report.crowd.append(aid)
            continue
        x, y, w, h = a["bbox"]
        if not all(v is not None and math.isfinite(v) for v in (x, y, w, h)):
            report.non_finite.append(aid)
            continue
        if w <= 0 or h <= 0:
            report.non_positive.append(aid)
            continue
        width, height = image_sizes[a["image_id"]]
        x0, y0 = min(max(float(x), 0.0), width), min(max(float(y), 0.0), height)
        x1, y1 = min(max(float(x) + w, 0.0), width), min(max(float(y) + h, 0.0), height)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            report.outside.append(aid)
            continue
        if (x0, y0, x1, y1) != (float(x), float(y), float(x) + w, float(y) + h):
            report.clipped.append(aid)
            bbox = [x0, y0, x1 - x0, y1 - y0]
        else:
            bbox = [float(x), float(y), float(w), float(h)]
        kept.append(dict(a, bbox=bbox, iscrowd=0))

    with_annotations = {a["image_id"] for a in kept}
    report.images_without_annotations = [im["id"] for im in images if im["id"] not in with_annotations]
    clean = dict(data)
    clean["annotations"] = kept
    return clean, report
