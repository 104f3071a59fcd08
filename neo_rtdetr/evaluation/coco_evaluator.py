"""COCOEvaluator construction, decided once for the whole project."""

from typing import Optional

from neo_rtdetr.utils.env import detectron2_has_compiled_ops

__all__ = ["build_coco_evaluator"]


def build_coco_evaluator(dataset_name: str, *, output_dir: Optional[str] = None, distributed: bool = True):
    """detectron2's ``COCOEvaluator`` for box AP.

    The fast C++ COCOeval is used only when detectron2's compiled extension really exists; the
    pure-Python detectron2 installed by neo_rtdetr has none, so the official pycocotools
    implementation is used (same numbers, somewhat slower).

    Args:
        dataset_name: a registered COCO-format dataset.
        output_dir: where ``coco_instances_results.json`` is written (None: not written).
        distributed: gather predictions from all ranks before evaluating.
    """
    from detectron2.evaluation import COCOEvaluator

    return COCOEvaluator(
        dataset_name,
        tasks=("bbox",),
        distributed=distributed,
        output_dir=output_dir,
        use_fast_impl=detectron2_has_compiled_ops(),
    )
