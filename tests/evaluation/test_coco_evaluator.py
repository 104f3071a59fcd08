import torch

from neo_rtdetr.data.catalog import register_coco_format_dataset
from neo_rtdetr.data.synthetic import synthetic_paths
from neo_rtdetr.evaluation.coco_evaluator import build_coco_evaluator
from neo_rtdetr.utils.env import detectron2_has_compiled_ops


def _evaluate(name, shift):
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, BoxMode, Instances

    evaluator = build_coco_evaluator(name, distributed=False)
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
