import torch

from neo_rtdetr.data.catalog import register_coco_format_dataset
from neo_rtdetr.data.synthetic import synthetic_paths
from neo_rtdetr.evaluation.coco_evaluator import build_coco_evaluator
from neo_rtdetr.utils.env import detectron2_has_compiled_ops


def _evaluate(name, shift):
    return _evaluate_with(build_coco_evaluator(name, distributed=False), name, shift)


def _evaluate_with(evaluator, name, shift):
    """Feed ``evaluator`` the ground truth of ``name`` shifted by ``shift`` pixels as predictions; its bbox results."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, BoxMode, Instances

    evaluator.reset()
    for d in DatasetCatalog.get(name):
        inst = Instances((d["height"], d["width"]))
        boxes = torch.tensor(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]], dtype=torch.float32
        ).reshape(-1, 4)
        inst.pred_boxes = Boxes(boxes + shift)
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]], dtype=torch.long)
        evaluator.process([d], [{"instances": inst}])
    return evaluator.evaluate()["bbox"]


def test_evaluator_without_compiled_ops_scores_ground_truth_perfectly(synthetic_root):
    json_file, image_root = synthetic_paths(synthetic_root, "val")
    register_coco_format_dataset(name="t_eval_val", json_file=json_file, image_root=image_root)
    evaluator = build_coco_evaluator("t_eval_val", distributed=False)
    assert evaluator._use_fast_impl == detectron2_has_compiled_ops()
    perfect = _evaluate("t_eval_val", 0.0)
    assert abs(perfect["AP"] - 100.0) < 1e-6
    shifted = _evaluate("t_eval_val", 4.0)
    assert shifted["AP"] < 90.0


def test_one_evaluator_reads_the_ground_truth_json_once_and_a_new_one_sees_a_changed_file(synthetic_root, tmp_path,
                                                                                          monkeypatch):
    """The ground-truth JSON is read (pycocotools ``COCO(json_file)``) when the evaluator is built, never by
    ``evaluate()``: repeated evaluations with one evaluator do not re-read it. Each build reads the file as it is
    then (no cache that could go stale)."""
    import json
    import shutil

    from pycocotools.coco import COCO

    json_file, image_root = synthetic_paths(synthetic_root, "val")
    copy = str(tmp_path / "val.json")
    shutil.copyfile(json_file, copy)
    register_coco_format_dataset(name="t_eval_reads", json_file=copy, image_root=image_root)
    reads = []
    real_init = COCO.__init__

    def counting_init(self, annotation_file=None):
        if annotation_file is not None:  # loadRes builds a file-less COCO for the predictions
            reads.append(annotation_file)
        real_init(self, annotation_file)

    monkeypatch.setattr(COCO, "__init__", counting_init)
    evaluator = build_coco_evaluator("t_eval_reads", distributed=False)
    assert reads == [copy]
    for _ in range(2):
        assert abs(_evaluate_with(evaluator, "t_eval_reads", 0.0)["AP"] - 100.0) < 1e-6
    assert reads == [copy]

    with open(copy) as f:
        data = json.load(f)
    data["annotations"] = data["annotations"][:1]
    with open(copy, "w") as f:
        json.dump(data, f)
    assert len(build_coco_evaluator("t_eval_reads", distributed=False)._coco_api.dataset["annotations"]) == 1
    assert reads == [copy, copy]

