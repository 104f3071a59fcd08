import filecmp
import json
import os

import cv2
import numpy as np
from pycocotools.coco import COCO

from neo_rtdetr.data.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticSpec,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    synthetic_paths,
)

TINY = SyntheticSpec(num_train=10, num_val=4, min_size=96, max_size=128)


def _all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_generation_is_deterministic(tmp_path):
    a = generate_synthetic_dataset(str(tmp_path / "a"), TINY)
    b = generate_synthetic_dataset(str(tmp_path / "b"), TINY)
    files = _all_files(a)
    assert files == _all_files(b)
    assert sum(f.endswith(".jpg") for f in files) == TINY.num_train + TINY.num_val
    for f in files:
        assert filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False), f
    c = generate_synthetic_dataset(str(tmp_path / "c"), SyntheticSpec(**{**TINY.__dict__, "seed": 1}))
    assert not filecmp.cmp(os.path.join(a, "train", "train_000000.jpg"), os.path.join(c, "train", "train_000000.jpg"), shallow=False)


def test_valid_coco_json_readable_images_boxes_inside(synthetic_root):
    for split in ("train", "val"):
        json_file, image_root = synthetic_paths(synthetic_root, split)
        coco = COCO(json_file)  # pycocotools accepts it
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SYNTHETIC_CLASSES)
        assert len(coco.getImgIds()) > 0
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            img = cv2.imread(os.path.join(image_root, info["file_name"]), cv2.IMREAD_COLOR)
            assert img is not None and img.shape[:2] == (info["height"], info["width"])
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0
                assert 0 <= x and 0 <= y and x + w <= info["width"] and y + h <= info["height"]
                assert 0 < ann["area"] <= w * h
                assert ann["iscrowd"] == 0


def test_dataset_has_the_promised_variety(synthetic_root):
    json_file, image_root = synthetic_paths(synthetic_root, "train")
    d = json.load(open(json_file))
    anns = d["annotations"]
    assert {a["category_id"] for a in anns} == set(range(1, len(SYNTHETIC_CLASSES) + 1))
    sizes = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in anns])
    assert (sizes < 16).any(), "no small objects"
    assert (sizes > 40).any(), "no large objects"
    with_objects = {a["image_id"] for a in anns}
    assert len(with_objects) < len(d["images"]), "no image without objects"
    assert len({(i["height"], i["width"]) for i in d["images"]}) > 1, "all images have the same size"
    # some boxes overlap
    by_image = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    def overlap(p, q):
        return min(p[0] + p[2], q[0] + q[2]) > max(p[0], q[0]) and min(p[1] + p[3], q[1] + q[3]) > max(p[1], q[1])
    assert any(overlap(p, q) for boxes in by_image.values() for i, p in enumerate(boxes) for q in boxes[i + 1:])


def test_boxes_are_tight_around_the_drawn_shape(tmp_path):
    """For isolated objects, the shape's colour touches all four box edges and not the ring outside."""
    root = generate_synthetic_dataset(str(tmp_path / "d"), SyntheticSpec(num_train=12, num_val=0, jpeg_quality=100))
    json_file, image_root = synthetic_paths(root, "train")
    d = json.load(open(json_file))
    checked = passed = 0
    for info in d["images"]:
        img = cv2.imread(os.path.join(image_root, info["file_name"])).astype(np.int32)
        H, W = img.shape[:2]
        boxes = [a["bbox"] for a in d["annotations"] if a["image_id"] == info["id"]]
        for k, (x, y, w, h) in enumerate(boxes):
            x, y, w, h = int(x), int(y), int(w), int(h)
            others = [b for j, b in enumerate(boxes) if j != k]
            isolated = all(x + w + 2 <= b[0] or b[0] + b[2] + 2 <= x or y + h + 2 <= b[1] or b[1] + b[3] + 2 <= y for b in others)
            if not isolated or min(w, h) < 12 or x < 1 or y < 1 or x + w >= W or y + h >= H:
                continue
            region = img[y:y + h, x:x + w].reshape(-1, 3)
            bins, counts = np.unique(region // 32, axis=0, return_counts=True)
            colour = region[(region // 32 == bins[counts.argmax()]).all(1)].mean(0)
            near = np.abs(img - colour).sum(-1) < 60
            edges_hit = [near[y, x:x + w].any(), near[y + h - 1, x:x + w].any(), near[y:y + h, x].any(), near[y:y + h, x + w - 1].any()]
            outside = np.concatenate([near[y - 1, x:x + w], near[y + h, x:x + w], near[y:y + h, x - 1], near[y:y + h, x + w]])
            checked += 1
            passed += all(edges_hit) and outside.mean() < 0.2
    assert checked >= 5
    assert passed >= 0.9 * checked, (passed, checked)


def test_ensure_is_idempotent_and_leaves_no_temporary_folder(tmp_path):
    cache = str(tmp_path / "cache")
    root = ensure_synthetic_dataset(cache, TINY)
    stamp = os.path.getmtime(os.path.join(root, "SPEC.json"))
    assert ensure_synthetic_dataset(cache, TINY) == root
    assert os.path.getmtime(os.path.join(root, "SPEC.json")) == stamp
    assert os.listdir(cache) == [os.path.basename(root)]
    other = ensure_synthetic_dataset(cache, SyntheticSpec(**{**TINY.__dict__, "num_val": 5}))
    assert other != root, "a different spec must not reuse the cached dataset"
