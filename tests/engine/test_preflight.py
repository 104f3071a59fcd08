"""Configuration vs data, checked before the first training step: class counts, datasets without
usable annotations, images with more boxes than queries."""

import itertools
import json
import logging
import os
from types import SimpleNamespace

import pytest
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog
from omegaconf import OmegaConf

from neo_rtdetr.config import apply_overrides_strict
from neo_rtdetr.data.catalog import register_coco_format_dataset
from neo_rtdetr.engine.preflight import check_evaluation_data, check_training_data

from ..conftest import small_spec

_names = itertools.count()


def _dataset(tmp_path, num_categories=3, boxes_per_image=(2, 0), first_category_id=1, class_names=None):
    name = f"t_preflight_{next(_names)}"
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "height": 100, "width": 100} for i in range(len(boxes_per_image))]
    anns = [{"id": 1000 * (i + 1) + j, "image_id": i + 1, "category_id": first_category_id + j % num_categories,
             "bbox": [j % 90, j % 90, 5, 5]}
            for i, n in enumerate(boxes_per_image) for j in range(n)]
    class_names = class_names or [f"c{k}" for k in range(num_categories)]
    cats = [{"id": first_category_id + k, "name": class_names[k]} for k in range(num_categories)]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    register_coco_format_dataset(name=name, json_file=str(path), image_root=str(tmp_path))
    return name, str(path)


def _cfg(train, test=None):
    cfg = OmegaConf.create({"dataloader": {"train": {"dataset": {"names": train}}}})
    if test is not None:
        cfg.dataloader.test = {"dataset": {"names": test}}
        cfg.dataloader.evaluator = {"dataset_name": test}
    return cfg


def _model(num_classes, num_queries=300):
    return SimpleNamespace(num_classes=num_classes, decoder=SimpleNamespace(num_queries=num_queries))


def _loader(name):
    return SimpleNamespace(dataset=DatasetCatalog.get(name))


def test_num_classes_smaller_than_the_dataset_is_an_error_naming_both_numbers(tmp_path):
    name, path = _dataset(tmp_path, num_categories=5)
    with pytest.raises(ValueError) as excinfo:
        check_training_data(_cfg(name), _model(3), _loader(name))
    message = str(excinfo.value)
    assert f"model.num_classes=3 is smaller than the 5 categories of the training dataset '{name}' ({path})" in message
    assert "Set model.num_classes=5" in message


def test_num_classes_larger_than_the_training_set_is_a_warning(tmp_path, caplog):
    name, _ = _dataset(tmp_path, num_categories=2)
    with caplog.at_level(logging.WARNING, logger="neo_rtdetr.engine.preflight"):
        check_training_data(_cfg(name), _model(4), _loader(name))
    assert any("model.num_classes=4 is larger than the 2 categories" in r.getMessage() for r in caplog.records)


def test_evaluation_set_must_match_num_classes_and_the_training_categories(tmp_path):
    train, _ = _dataset(tmp_path, num_categories=3)
    val4, val4_path = _dataset(tmp_path, num_categories=4)
    with pytest.raises(ValueError, match=rf"model.num_classes=3 is smaller than the 4 categories of the evaluation dataset '{val4}'"):
        check_training_data(_cfg(train, val4), _model(3), _loader(train))
    val2, _ = _dataset(tmp_path, num_categories=2)
    with pytest.raises(ValueError, match=rf"model.num_classes=3 but the evaluation dataset '{val2}' .* has 2 categories"):
        check_training_data(_cfg(train, val2), _model(3), _loader(train))
    with pytest.raises(ValueError, match="has 2 categories"):
        check_evaluation_data(_cfg(train, val2), _model(3))  # --eval-only
    other, _ = _dataset(tmp_path, num_categories=3, class_names=["zebra", "c1", "c2"])  # same count, other classes
    with pytest.raises(ValueError, match=r"have different categories \(\['c0', 'c1', 'c2'\] vs \['zebra', 'c1', 'c2'\]\)"):
        check_training_data(_cfg(train, other), _model(3), _loader(train))
    check_training_data(_cfg(train, train), _model(3), _loader(train))  # consistent: fine


def test_training_set_without_usable_annotations_is_an_error(tmp_path):
    name, path = _dataset(tmp_path, boxes_per_image=(0, 0, 0))
    with pytest.raises(ValueError, match=rf"'{name}' \({path}\) has no usable annotations \(3 images\)"):
        check_training_data(_cfg(name), _model(3), _loader(name))


def test_images_with_more_boxes_than_queries_give_one_warning_naming_them(tmp_path, caplog):
    name, _ = _dataset(tmp_path, boxes_per_image=(12, 350, 301, 4))
    with caplog.at_level(logging.WARNING, logger="neo_rtdetr.engine.preflight"):
        check_training_data(_cfg(name), _model(3, num_queries=300), _loader(name))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 images have more boxes than the model's 300 queries (most: 350 boxes in image id 2; image ids 2, 3)" in warnings[0]


def test_do_train_stops_before_training_when_num_classes_is_too_small(synthetic_cache, tmp_path):
    from neo_rtdetr.engine.train_net import do_train

    spec = small_spec()
    cfg = LazyConfig.load("configs/rtdetr_tiny_synthetic_demo.py")
    cfg = apply_overrides_strict(cfg, [
        f"train.output_dir={tmp_path}", f"dataloader.datasets.0.cache_dir={synthetic_cache}",
        *(f"+dataloader.datasets.0.{k}={v}" for k, v in spec.__dict__.items()),
        # unique names: other tests of the session may have registered synthetic_train with other files
        "+dataloader.datasets.0.train_name=t_preflight_syn_train", "+dataloader.datasets.0.val_name=t_preflight_syn_val",
        "dataloader.train.dataset.names=t_preflight_syn_train", "dataloader.test.dataset.names=t_preflight_syn_val",
        "train.device=cpu", "dataloader.train.num_workers=0", "model.num_classes=4",
    ])
    with pytest.raises(ValueError, match=r"model.num_classes=4 is smaller than the 6 categories of the training dataset 't_preflight_syn_train'"):
        do_train(cfg)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".pth") or f == "metrics.json"]
