"""RTDETRDatasetMapper: targets, box sanitation, eval mode, stop-epoch policy, per-sample seeds."""

import copy

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from neo_rtdetr.data.dataset_mapper import RTDETRDatasetMapper
from neo_rtdetr.data.transforms import (
    RandomIoUCrop,
    RandomPhotometricDistort,
    RandomZoomOut,
    build_rtdetr_train_augmentations,
)
from neo_rtdetr.modeling.meta_arch.rtdetr import TARGET_BOXES_FIELD

SIZE = 64


@pytest.fixture(scope="module")
def train_dicts(synthetic_root):
    from detectron2.data import DatasetCatalog

    from neo_rtdetr.data.catalog import register_coco_format_dataset
    from neo_rtdetr.data.synthetic import synthetic_paths

    json_file, image_root = synthetic_paths(synthetic_root, "train")
    name = register_coco_format_dataset(name="t_data_syn_train", json_file=json_file, image_root=image_root)
    return DatasetCatalog.get(name)


def _with_objects(dicts, n=4):
    return [d for d in dicts if d["annotations"]][:n]


def _resize_mapper(**kw):
    return RTDETRDatasetMapper(is_train=True, augmentations=[T.Resize((SIZE, SIZE))], **kw)


def _xyxy_to_cxcywh(b):
    return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)


def _same(a, b):
    """Two mapped dicts are identical (image and targets)."""
    if not torch.equal(a["image"], b["image"]):
        return False
    ia, ib = a["instances"], b["instances"]
    return (ia.image_size == ib.image_size and torch.equal(ia.gt_classes, ib.gt_classes)
            and torch.equal(ia.gt_boxes.tensor, ib.gt_boxes.tensor))


def test_targets_are_normalised_cxcywh_of_the_resized_boxes(train_dicts):
    mapper = _resize_mapper()
    for d in _with_objects(train_dicts):
        out = mapper(d)
        img = out["image"]
        assert img.dtype == torch.uint8 and img.shape == (3, SIZE, SIZE)
        assert (out["height"], out["width"]) == (d["height"], d["width"]) and out["image_id"] == d["image_id"]
        assert "annotations" not in out
        inst = out["instances"]
        assert inst.image_size == (SIZE, SIZE)
        assert inst.gt_classes.dtype == torch.int64
        assert inst.gt_classes.tolist() == [a["category_id"] for a in d["annotations"]]
        # gt_boxes: the annotation boxes scaled by the resize
        expected = torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]])
        expected = expected * torch.tensor([SIZE / d["width"], SIZE / d["height"]] * 2)
        torch.testing.assert_close(inst.gt_boxes.tensor, expected.float(), atol=1e-3, rtol=0)
        norm = inst.get(TARGET_BOXES_FIELD)
        assert norm.dtype == torch.float32 and norm.shape == (len(inst), 4)
        torch.testing.assert_close(norm, _xyxy_to_cxcywh(inst.gt_boxes.tensor) / SIZE)
        assert norm.min() >= 0 and norm.max() <= 1


def test_normalisation_uses_width_for_x_and_height_for_y(train_dicts):
    d = _with_objects(train_dicts, 1)[0]
    inst = RTDETRDatasetMapper(is_train=True, augmentations=[T.Resize((40, 100))])(d)["instances"]  # (h, w)
    assert inst.image_size == (40, 100)
    b = inst.gt_boxes.tensor
    torch.testing.assert_close(inst.get(TARGET_BOXES_FIELD), _xyxy_to_cxcywh(b) / torch.tensor([100.0, 40.0, 100.0, 40.0]))
    a = d["annotations"][0]["bbox"]  # XYWH in the original image
    torch.testing.assert_close(inst.get(TARGET_BOXES_FIELD)[0],
                               torch.tensor([(a[0] + a[2] / 2) / d["width"], (a[1] + a[3] / 2) / d["height"],
                                             a[2] / d["width"], a[3] / d["height"]]), atol=1e-5, rtol=0)


def test_rgb_and_bgr_image_formats(train_dicts):
    d = train_dicts[0]
    rgb = _resize_mapper(image_format="RGB")(d)["image"]
    bgr = _resize_mapper(image_format="BGR")(d)["image"]
    assert not torch.equal(rgb, bgr)
    assert torch.equal(rgb, bgr.flip(0))


def test_crowd_and_degenerate_boxes_are_removed_and_input_not_mutated(train_dicts):
    d = copy.deepcopy(_with_objects(train_dicts, 1)[0])
    n = len(d["annotations"])
    extra = [
        {"bbox": [5.0, 5.0, 30.0, 30.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 5, "iscrowd": 1},  # crowd
        {"bbox": [10.0, 10.0, 0.5, 20.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 5, "iscrowd": 0},  # < 1 px wide
        {"bbox": [d["width"] + 5.0, 3.0, 10.0, 10.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 5, "iscrowd": 0},  # outside
        {"bbox": [-10.0, -10.0, 30.0, 25.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 4, "iscrowd": 0},  # clipped
    ]
    d["annotations"] = d["annotations"] + extra
    before = copy.deepcopy(d)
    inst = RTDETRDatasetMapper(is_train=True, augmentations=[])(d)["instances"]
    assert d == before  # the input dict is not modified
    assert len(inst) == n + 1
    assert inst.gt_classes[-1] == 4 and 5 not in inst.gt_classes.tolist()[n:]
    torch.testing.assert_close(inst.gt_boxes.tensor[-1], torch.tensor([0.0, 0.0, 20.0, 15.0]))
    b = inst.gt_boxes.tensor
    assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()


def test_boxes_that_shrink_below_one_pixel_after_resize_are_removed(train_dicts):
    d = copy.deepcopy(train_dicts[0])
    d["annotations"] = [
        {"bbox": [10.0, 10.0, 1.5, 40.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 0},
        {"bbox": [10.0, 10.0, 40.0, 40.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0},
    ]
    inst = RTDETRDatasetMapper(is_train=True, augmentations=[T.Resize((16, 16))])(d)["instances"]
    assert inst.gt_classes.tolist() == [2]  # 1.5 px * 16 / W < 1 px


def test_empty_images_map_fine(train_dicts):
    d = copy.deepcopy(train_dicts[0])
    d["annotations"] = []
    for augs in ([T.Resize((SIZE, SIZE))], build_rtdetr_train_augmentations(image_size=SIZE)):
        for seed in range(3):
            out = RTDETRDatasetMapper(is_train=True, augmentations=augs)({**d, "_sample_seed": seed})
            inst = out["instances"]
            assert len(inst) == 0 and inst.get(TARGET_BOXES_FIELD).shape == (0, 4)
            assert inst.gt_classes.shape == (0,) and out["image"].shape == (3, SIZE, SIZE)
    d.pop("annotations")
    assert len(_resize_mapper()(d)["instances"]) == 0


def test_eval_mode_resizes_only_and_drops_annotations(train_dicts):
    d = _with_objects(train_dicts, 1)[0]
    train_augs = build_rtdetr_train_augmentations(image_size=SIZE, flip_p=0.0)
    out = RTDETRDatasetMapper(is_train=False, augmentations=train_augs)(d)
    ref = RTDETRDatasetMapper(is_train=False, augmentations=[T.Resize((SIZE, SIZE))])(d)
    assert "instances" not in out and "annotations" not in out
    assert out["image"].shape == (3, SIZE, SIZE) and (out["height"], out["width"]) == (d["height"], d["width"])
    assert torch.equal(out["image"], ref["image"])  # strong augmentations are never applied in eval


def test_full_augmentations_give_consistent_targets(train_dicts):
    mapper = RTDETRDatasetMapper(is_train=True, augmentations=build_rtdetr_train_augmentations(image_size=SIZE))
    for i, d in enumerate(_with_objects(train_dicts, 6)):
        for epoch in range(3):
            out = mapper({**d, "_epoch": epoch, "_sample_seed": 100 * i + epoch})
            inst = out["instances"]
            assert out["image"].shape == (3, SIZE, SIZE) and inst.image_size == (SIZE, SIZE)
            b = inst.gt_boxes.tensor
            assert ((b[:, 2:] - b[:, :2]) >= 1).all() and b.min() >= 0 and b.max() <= SIZE
            torch.testing.assert_close(inst.get(TARGET_BOXES_FIELD), _xyxy_to_cxcywh(b) / SIZE)


def test_unreadable_images_name_the_file(train_dicts, tmp_path):
    mapper = _resize_mapper()
    missing = {**train_dicts[0], "file_name": str(tmp_path / "does_not_exist.jpg")}
    with pytest.raises(OSError, match="does_not_exist.jpg"):
        mapper(missing)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(OSError, match="corrupt.jpg"):
        mapper({**train_dicts[0], "file_name": str(bad)})


def test_per_sample_seed_is_deterministic_and_restores_numpy_state(train_dicts):
    mapper = RTDETRDatasetMapper(is_train=True, augmentations=build_rtdetr_train_augmentations(image_size=SIZE))
    d = _with_objects(train_dicts, 1)[0]
    np.random.seed(7)
    state = np.random.get_state()
    a = mapper({**d, "_sample_seed": 11})
    np.random.rand(5)  # disturb the global RNG: must not matter
    b = mapper({**d, "_sample_seed": 11})
    assert _same(a, b)
    others = [mapper({**d, "_sample_seed": s}) for s in (12, 13, 14)]
    assert not all(_same(a, o) for o in others)
    # the global numpy state is restored around each seeded call
    np.random.set_state(state)
    mapper({**d, "_sample_seed": 11})
    assert np.random.rand() == np.random.RandomState(7).rand()


def test_stop_epoch_skips_strong_augmentations(train_dicts):
    strong = build_rtdetr_train_augmentations(image_size=SIZE)
    weak = [a for a in strong if not isinstance(a, (RandomPhotometricDistort, RandomZoomOut, RandomIoUCrop))]
    assert len(weak) == 2
    full = RTDETRDatasetMapper(is_train=True, augmentations=strong, stop_strong_augmentation_epoch=2)
    plain = RTDETRDatasetMapper(is_train=True, augmentations=weak)
    differ = 0
    for i, d in enumerate(_with_objects(train_dicts, 4)):
        for seed in range(3):
            s = 10 * i + seed
            for epoch in (2, 5):  # at and after the stop epoch: identical to the mapper without them
                assert _same(full({**d, "_epoch": epoch, "_sample_seed": s}), plain({**d, "_epoch": epoch, "_sample_seed": s}))
            differ += not _same(full({**d, "_epoch": 1, "_sample_seed": s}), plain({**d, "_epoch": 1, "_sample_seed": s}))
    assert differ >= 6  # before the stop epoch the strong augmentations are active
    assert full.augmentations_for_epoch(1) == strong and full.augmentations_for_epoch(2) == weak


def test_stop_epoch_policy_inside_dataloader_workers(train_dicts):
    from neo_rtdetr.data.build import build_rtdetr_train_loader

    strong = build_rtdetr_train_augmentations(image_size=SIZE)
    weak = strong[3:]
    full = RTDETRDatasetMapper(is_train=True, augmentations=strong, stop_strong_augmentation_epoch=1)
    plain = RTDETRDatasetMapper(is_train=True, augmentations=weak)
    loader = build_rtdetr_train_loader(dataset=train_dicts[:8], mapper=full, total_batch_size=4, num_workers=2, seed=3)
    assert loader.iters_per_epoch == 2
    by_id = {d["image_id"]: d for d in train_dicts[:8]}
    same = {0: 0, 1: 0}
    it = iter(loader)
    try:
        for iteration in range(4):
            batch = next(it)
            for out in batch:
                epoch = out["_epoch"]
                assert epoch == iteration // 2
                ref = plain({**by_id[out["image_id"]], "_epoch": epoch, "_sample_seed": out["_sample_seed"]})
                same[epoch] += _same(out, ref)
    finally:
        del it
    assert same[1] == 8  # epoch 1 >= stop: every sample equals the weak-only mapping
    assert same[0] < 8  # epoch 0: strong augmentations changed at least one sample
