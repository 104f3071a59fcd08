"""Checks of a configuration against its data, run before the first training step.

A mistake that would otherwise surface hours into a run (or never) is reported at start-up:

* ``model.num_classes`` smaller than the training dataset's number of categories: an error naming
  both numbers and the dataset (the criterion would otherwise fail at the first batch holding a
  class id >= num_classes, possibly much later); larger: a warning (the extra classes are never
  trained);
* with a COCO evaluator: ``model.num_classes`` different from the evaluation dataset's categories,
  or train and evaluation datasets with different category lists: an error (detectron2's
  ``COCOEvaluator`` would fail after the first evaluation's inference, or class ids would not
  correspond);
* a training set without any usable annotation: an error (nothing to learn from);
* images with more boxes than the decoder's queries: ONE warning naming them (each query is
  matched to at most one box, so at most ``num_queries`` boxes per image are learned from).
"""

import logging
from typing import Dict, List, Sequence

from neo_rtdetr.data.validation import format_ids

__all__ = [
    "dataset_names",
    "check_num_classes",
    "check_training_data",
    "check_evaluation_data",
    "count_boxes_per_image",
]

logger = logging.getLogger(__name__)


def dataset_names(dataset_node) -> List[str]:
    """The registered names a loader config reads (``dataset.names``), or [] when it has none."""
    try:
        names = dataset_node.get("names")
    except AttributeError:
        return []
    if names is None:
        return []
    return [names] if isinstance(names, str) else [str(n) for n in names]


def _describe(name: str) -> str:
    from detectron2.data import MetadataCatalog

    json_file = getattr(MetadataCatalog.get(name), "json_file", None)
    return f"'{name}' ({json_file})" if json_file else f"'{name}'"


def _thing_classes(name: str) -> List[str]:
    """The dataset's class names (loads it when the metadata does not have them yet)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    meta = MetadataCatalog.get(name)
    if not hasattr(meta, "thing_classes"):
        DatasetCatalog.get(name)  # COCO-format loaders set thing_classes when they run
    return list(getattr(meta, "thing_classes", []))


def check_num_classes(num_classes: int, names: Sequence[str], *, role: str, exact: bool) -> List[str]:
    """Compare ``num_classes`` with the datasets' category lists.

    Args:
        num_classes: the model's number of classes.
        names: registered dataset names.
        role: "training" or "evaluation" (for messages).
        exact: require equality (evaluation) instead of ``num_classes >= K`` (training).

    Returns:
        The class names of the (first) dataset ([] when none is known).

    Raises:
        ValueError: naming the dataset and both numbers.
    """
    classes: List[str] = []
    for name in names:
        classes = _thing_classes(name)
        if not classes:
            continue
        k = len(classes)
        if num_classes < k:
            raise ValueError(
                f"model.num_classes={num_classes} is smaller than the {k} categories of the {role} dataset "
                f"{_describe(name)}: class ids {num_classes}..{k - 1} could not be predicted. Set model.num_classes={k}."
            )
        if num_classes > k:
            if exact:
                raise ValueError(
                    f"model.num_classes={num_classes} but the {role} dataset {_describe(name)} has {k} categories: "
                    f"COCO evaluation cannot map predicted class ids >= {k}. Set model.num_classes={k}."
                )
            logger.warning(
                f"model.num_classes={num_classes} is larger than the {k} categories of the {role} dataset "
                f"{_describe(name)}: classes {k}..{num_classes - 1} are never trained."
            )
    return classes


def count_boxes_per_image(dataset) -> Dict:
    """Non-crowd annotations per image of an indexable dataset of detectron2 dicts.

    Returns:
        ``{"total": int, "max": int, "per_image": [(image_id, n), ...]}``.
    """
    per_image = []
    for i in range(len(dataset)):
        d = dataset[i]
        n = sum(1 for a in d.get("annotations", ()) if not a.get("iscrowd", 0))
        per_image.append((d.get("image_id"), n))
    return {"total": sum(n for _, n in per_image), "max": max((n for _, n in per_image), default=0), "per_image": per_image}


def check_training_data(cfg, model, train_loader) -> None:
    """Run the training-time checks of the module docstring.

    Args:
        cfg: the LazyConfig (``dataloader.train.dataset``, ``dataloader.test.dataset``, ``dataloader.evaluator``).
        model: the (unwrapped) model; ``num_classes`` and ``decoder.num_queries`` are read when present.
        train_loader: the instantiated train loader (its ``dataset`` is scanned once).

    Raises:
        ValueError: the errors of the module docstring.
    """
    num_classes = getattr(model, "num_classes", None)
    train_names = dataset_names(cfg.dataloader.train.get("dataset"))
    train_classes: List[str] = []
    if num_classes is not None:
        train_classes = check_num_classes(int(num_classes), train_names, role="training", exact=False)
        if "evaluator" in cfg.dataloader and "test" in cfg.dataloader:
            test_names = dataset_names(cfg.dataloader.test.get("dataset"))
            test_classes = check_num_classes(int(num_classes), test_names, role="evaluation", exact=True)
            if train_classes and test_classes and train_classes != test_classes:
                raise ValueError(
                    f"the training dataset(s) {', '.join(map(_describe, train_names))} and the evaluation dataset(s) "
                    f"{', '.join(map(_describe, test_names))} have different categories ({train_classes} vs "
                    f"{test_classes}): class ids would not correspond"
                )

    dataset = getattr(train_loader, "dataset", None)
    if dataset is None:
        return
    stats = count_boxes_per_image(dataset)
    where = ", ".join(map(_describe, train_names)) or "the training set"
    if stats["total"] == 0:
        raise ValueError(
            f"{where} has no usable annotations ({len(stats['per_image'])} images): there is nothing to train on "
            "(check the JSON, and the validation summary logged when it was loaded)"
        )
    num_queries = getattr(getattr(model, "decoder", None), "num_queries", None)
    if num_queries is not None:
        crowded = sorted(((n, iid) for iid, n in stats["per_image"] if n > num_queries), reverse=True)
        if crowded:
            logger.warning(
                f"{where}: {len(crowded)} images have more boxes than the model's {num_queries} queries "
                f"(most: {crowded[0][0]} boxes in image id {crowded[0][1]}; image ids "
                f"{format_ids(iid for _, iid in crowded)}). Each query is matched to at most one box, so at most "
                f"{num_queries} boxes per image are learned from; raise model.decoder.num_queries (and "
                "model.num_top_queries) for such crowded data."
            )
    logger.info(
        f"{where}: {stats['total']} boxes on {len(stats['per_image'])} images, at most {stats['max']} per image"
    )


def check_evaluation_data(cfg, model) -> None:
    """``model.num_classes`` must equal the evaluation dataset's number of categories (see module docstring)."""
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None or "evaluator" not in cfg.dataloader or "test" not in cfg.dataloader:
        return
    check_num_classes(int(num_classes), dataset_names(cfg.dataloader.test.get("dataset")), role="evaluation", exact=True)
