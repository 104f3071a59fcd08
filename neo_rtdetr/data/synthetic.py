"""The embedded default dataset: deterministic synthetic shapes in COCO format.

Users without COCO can still run the main job. The generator writes real JPEG files and
COCO-format JSON (train and val splits) into a cache folder on first use; nothing goes into git.
Images have textured backgrounds and varied sizes; objects are filled shapes of several classes,
colours and sizes (small objects included), may overlap, and some images have no objects. Boxes
are the tight boxes of the drawn pixels, so they are exact.

The output depends only on the generator version and its parameters (the random stream is seeded
per image), so two runs give byte-identical files.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

__all__ = [
    "SYNTHETIC_CLASSES",
    "SyntheticSpec",
    "generate_synthetic_dataset",
    "ensure_synthetic_dataset",
    "synthetic_paths",
]

logger = logging.getLogger(__name__)

# Bump when the drawing code changes: it is part of the cache key.
GENERATOR_VERSION = 1

SYNTHETIC_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond")


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the synthetic dataset (all of them are part of the cache key).

    Attributes:
        num_train / num_val: number of images per split.
        min_size / max_size: image side lengths are drawn uniformly in [min_size, max_size].
        max_objects: at most this many objects per image.
        empty_fraction: fraction of images without objects.
        min_object / max_object_frac: object extents are log-uniform between min_object pixels and
            max_object_frac of the shorter image side.
        jpeg_quality: JPEG quality of the written images.
        seed: base seed; image i of a split uses a stream derived from (seed, split, i).
    """

    num_train: int = 600
    num_val: int = 100
    min_size: int = 224
    max_size: int = 320
    max_objects: int = 8
    empty_fraction: float = 0.08
    min_object: int = 8
    max_object_frac: float = 0.6
    jpeg_quality: int = 92
    seed: int = 0

    def key(self) -> str:
        payload = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def synthetic_paths(root: str, split: str) -> Tuple[str, str]:
    """(json_file, image_root) of a split ("train" or "val") inside a generated dataset folder."""
    return (
        os.path.join(root, "annotations", f"instances_{split}.json"),
        os.path.join(root, split),
    )


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured background: colour gradient + stripes or checkers + noise; uint8 [h, w, 3] BGR."""
    c0 = rng.uniform(40, 215, size=3)
    c1 = rng.uniform(40, 215, size=3)
    t = np.linspace(0.0, 1.0, w if rng.random() < 0.5 else h, dtype=np.float32)
    grad = (c0[None, :] * (1 - t[:, None]) + c1[None, :] * t[:, None]).astype(np.float32)
    img = np.broadcast_to(grad[None, :, :], (h, w, 3)) if len(t) == w else np.broadcast_to(grad[:, None, :], (h, w, 3))
    img = img.copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(0, 3)
    amp = rng.uniform(8, 30)
    if kind == 0:  # stripes at a random angle
        theta, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
        pattern = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
    elif kind == 1:  # checkers
        cell = rng.integers(6, 24)
        pattern = ((xx // cell + yy // cell) % 2) * 2.0 - 1.0
    else:  # blobs
        pattern = np.sin(xx / rng.uniform(5, 15)) * np.cos(yy / rng.uniform(5, 15))
    img += amp * pattern[..., None]
    img += rng.normal(0, 6, size=(h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, cls: int, h: int, w: int, size: int) -> np.ndarray:
    """Binary mask (uint8 [h, w]) of one shape of class ``cls`` with extent ~``size`` pixels."""
    mask = np.zeros((h, w), np.uint8)
    r = max(size / 2.0, 2.0)
    # The centre may lie near the border: shapes can be cut by the image edge.
    cx = rng.uniform(-0.2 * r, w - 1 + 0.2 * r)
    cy = rng.uniform(-0.2 * r, h - 1 + 0.2 * r)
    angle = rng.uniform(0, 2 * np.pi)
    name = SYNTHETIC_CLASSES[cls]
    shift = 4  # sub-pixel precision for cv2 drawing
    s = float(1 << shift)

    def poly(points):
        pts = np.round(np.asarray(points) * s).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=shift)

    def rot(dx, dy):
        c, si = np.cos(angle), np.sin(angle)
        return cx + dx * c - dy * si, cy + dx * si + dy * c

    if name == "circle":
        cv2.circle(mask, (int(round(cx * s)), int(round(cy * s))), int(round(r * s)), 1, -1, cv2.LINE_8, shift)
    elif name == "ring":
        cv2.circle(mask, (int(round(cx * s)), int(round(cy * s))), int(round(r * s)), 1, -1, cv2.LINE_8, shift)
        cv2.circle(mask, (int(round(cx * s)), int(round(cy * s))), int(round(0.55 * r * s)), 0, -1, cv2.LINE_8, shift)
    elif name == "square":
        poly([rot(dx * r * 0.8, dy * r * 0.8) for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
    elif name == "diamond":
        poly([rot(dx * r, dy * r * 0.6) for dx, dy in ((0, -1.6), (1, 0), (0, 1.6), (-1, 0))])
    elif name == "triangle":
        poly([rot(r * np.cos(a), r * np.sin(a)) for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)])
    elif name == "cross":
        a, b = r, r * 0.33
        poly([rot(x, y) for x, y in ((-a, -b), (a, -b), (a, b), (-a, b))])
        poly([rot(x, y) for x, y in ((-b, -a), (b, -a), (b, a), (-b, a))])
    else:  # pragma: no cover - SYNTHETIC_CLASSES and this function change together
        raise AssertionError(name)
    return mask


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour.astype(np.float32) - background).sum() > 150:
            return colour
    return 255 - background.astype(np.int64)


def _draw_image(rng: np.random.Generator, spec: SyntheticSpec, empty: bool):
    """Draw one image; returns (BGR uint8 image, list of (class, mask))."""
    h = int(rng.integers(spec.min_size, spec.max_size + 1))
    w = int(rng.integers(spec.min_size, spec.max_size + 1))
    img = _texture(rng, h, w)
    objects: List[Tuple[int, np.ndarray]] = []
    if empty:
        return img, objects
    n = int(rng.integers(1, spec.max_objects + 1))
    lo, hi = np.log(spec.min_object), np.log(spec.max_object_frac * min(h, w))
    for _ in range(n * 3):  # a few tries per object; placements that hide others are rejected
        if len(objects) == n:
            break
        cls = int(rng.integers(0, len(SYNTHETIC_CLASSES)))
        size = float(np.exp(rng.uniform(lo, hi)))
        mask = _shape_mask(rng, cls, h, w, size)
        area = int(mask.sum())
        if area < 0.5 * spec.min_object ** 2 * 0.25:
            continue
        # Overlap is allowed, but a new shape may not hide more than 40% of an earlier one.
        if any((m & mask).sum() > 0.4 * m.sum() for _, m in objects):
            continue
        bg = img[mask.astype(bool)].reshape(-1, 3).mean(0)
        colour = _contrasting_colour(rng, bg)
        img[mask.astype(bool)] = colour.astype(np.uint8)
        # Later shapes occlude earlier ones: keep the visible part of earlier masks.
        objects = [(c, m & (1 - mask)) for c, m in objects]
        objects.append((cls, mask))
    objects = [(c, m) for c, m in objects if m.sum() > 0]
    return img, objects


def _annotations_for(objects, image_id: int, next_ann_id: int) -> List[Dict]:
    anns = []
    for cls, mask in objects:
        x, y, bw, bh = cv2.boundingRect(mask)  # tight box of the visible pixels
        anns.append(
            {
                "id": next_ann_id + len(anns),
                "image_id": image_id,
                "category_id": cls + 1,  # COCO-style 1-based ids, remapped by detectron2's loader
                "bbox": [float(x), float(y), float(bw), float(bh)],
                "area": float(mask.sum()),
                "iscrowd": 0,
            }
        )
    return anns


def generate_synthetic_dataset(root: str, spec: SyntheticSpec = SyntheticSpec()) -> str:
    """Generate the dataset into ``root`` (created; must not exist). Returns ``root``."""
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SYNTHETIC_CLASSES)]
    image_id, ann_id = 1, 1
    for split_index, (split, count) in enumerate((("train", spec.num_train), ("val", spec.num_val))):
        json_file, image_root = synthetic_paths(root, split)
        os.makedirs(image_root, exist_ok=True)
        os.makedirs(os.path.dirname(json_file), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([spec.seed, split_index, i])
            # floor(count * empty_fraction) images of each split have no objects, spread evenly
            empty = int((i + 1) * spec.empty_fraction) > int(i * spec.empty_fraction)
            img, objects = _draw_image(rng, spec, empty)
            file_name = f"{split}_{i:06d}.jpg"
            ok = cv2.imwrite(os.path.join(image_root, file_name), img, [cv2.IMWRITE_JPEG_QUALITY, spec.jpeg_quality,
                                   cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
            if not ok:
                raise OSError(f"could not write {os.path.join(image_root, file_name)}")
            images.append({"id": image_id, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]})
            anns = _annotations_for(objects, image_id, ann_id)
            annotations.extend(anns)
            image_id += 1
            ann_id += len(anns)
        coco = {
            "info": {"description": f"neo_rtdetr synthetic shapes ({split}), generator v{GENERATOR_VERSION}"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        with open(json_file, "w") as f:
            json.dump(coco, f)
    with open(os.path.join(root, "SPEC.json"), "w") as f:
        json.dump({"version": GENERATOR_VERSION, **asdict(spec)}, f, sort_keys=True, indent=1)
    return root


def ensure_synthetic_dataset(cache_dir: str, spec: SyntheticSpec = SyntheticSpec()) -> str:
    """Return the folder of the dataset for ``spec`` under ``cache_dir``, generating it if missing.

    Generation goes to a temporary sibling folder that is renamed into place when complete, so an
    interrupted run never leaves a half-written dataset behind and concurrent callers (data-loader
    workers, DDP ranks) end up with the same complete folder.
    """
    root = os.path.join(cache_dir, f"synthetic_shapes_{spec.key()}")
    if os.path.isfile(os.path.join(root, "SPEC.json")):
        return root
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".synthetic_tmp_", dir=cache_dir)
    try:
        logger.info("Generating the synthetic dataset into %s", root)
        generate_synthetic_dataset(tmp, spec)
        try:
            os.rename(tmp, root)
        except OSError:
            if not os.path.isfile(os.path.join(root, "SPEC.json")):
                raise  # not a lost race with another process: a real error
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root
