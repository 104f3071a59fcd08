"""COCO evaluation of awkward cases: a model that predicts nothing, classes that never appear in the
evaluation set, an evaluation set without annotations. Each finishes and reports."""

import itertools
import json
import logging
import math

import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.structures import Boxes, BoxMode, Instances
from torch import nn

from neo_rtdetr.data.catalog import register_coco_format_dataset
from neo_rtdetr.evaluation.coco_evaluator import build_coco_evaluator

_names = itertools.count()


def _dataset(tmp_path, annotations, with_annotations_key=True):
    """3 images, categories 1 (a), 2 (b), 5 (c)."""
    name = f"t_eval_edge_{next(_names)}"
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 120} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 5, "name": "c"}],
    }
    if with_annotations_key:
        coco["annotations"] = [
            {"id": k + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for k, (img, cat, box) in enumerate(annotations)
        ]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(coco))
    register_coco_format_dataset(name=name, json_file=str(path), image_root=str(tmp_path))
    return name


class _Replay(nn.Module):
    """A "model" that returns the given detections per image id (XYXY, contiguous class ids)."""

    def __init__(self, detections):
        super().__init__()
        self.detections = detections

    def forward(self, batch):
        outputs = []
        for d in batch:
            boxes, classes = self.detections.get(d["image_id"], ([], []))
            inst = Instances((d["height"], d["width"]))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.full((len(classes),), 0.9)
            inst.pred_classes = torch.tensor(classes, dtype=torch.long)
            outputs.append({"instances": inst})
        return outputs


def _evaluate(name, model):
    loader = [[d] for d in DatasetCatalog.get(name)]
    return inference_on_dataset(model, loader, build_coco_evaluator(name, distributed=False))


def _gt_detections(name):
    out = {}
    for d in DatasetCatalog.get(name):
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
        out[d["image_id"]] = (boxes, [a["category_id"] for a in d["annotations"]])
    return out


GT = [(1, 1, [10, 10, 40, 30]), (2, 1, [50, 20, 30, 60]), (2, 2, [5, 5, 20, 20]), (3, 2, [60, 40, 50, 50])]


def test_a_model_that_predicts_nothing_is_evaluated(tmp_path, caplog):
    name = _dataset(tmp_path, GT)
    with caplog.at_level(logging.WARNING, logger="detectron2.evaluation.coco_evaluation"):
        results = _evaluate(name, _Replay({}))
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(math.isnan(v) for v in results["bbox"].values())  # detectron2: NaN = "no predictions"
    assert any("No predictions from the model" in r.getMessage() for r in caplog.records)
    print_csv_format(results)  # the train tool prints it

    class _Storage:  # what BestCheckpointer reads: a NaN AP must not be taken as the best model
        @staticmethod
        def latest():
            return {"bbox/AP": (results["bbox"]["AP"], 9)}

    saved = []
    best = hooks.BestCheckpointer(10, type("C", (), {"save": lambda self, *a, **k: saved.append(a)})(), "bbox/AP")
    best.trainer = type("T", (), {"storage": _Storage(), "iter": 9})()
    best._best_checking()
    assert saved == [] and best.best_metric is None


def test_classes_that_never_appear_get_nan_ap_and_the_rest_is_scored(tmp_path):
    name = _dataset(tmp_path, GT)  # class "c" (id 5) has no annotation
    detections = _gt_detections(name)
    boxes, classes = detections[3]
    detections[3] = (boxes + [[0, 0, 30, 30]], classes + [2])  # a detection of the absent class: ignored
    results = _evaluate(name, _Replay(detections))["bbox"]
    assert abs(results["AP"] - 100.0) < 1e-6 and abs(results["AP-a"] - 100.0) < 1e-6 and abs(results["AP-b"] - 100.0) < 1e-6
    assert math.isnan(results["AP-c"])


def test_an_evaluation_set_without_annotations_reports_nan_or_nothing(tmp_path):
    empty = _dataset(tmp_path, [])
    results = _evaluate(empty, _Replay({1: ([[0, 0, 10, 10]], [0])}))
    assert all(math.isnan(v) for k, v in results["bbox"].items() if "-" not in k)
    image_info_only = _dataset(tmp_path, [], with_annotations_key=False)  # like COCO test-dev
    assert _evaluate(image_info_only, _Replay({1: ([[0, 0, 10, 10]], [0])})) == {}
