"""Dataset registration, the Detectron2 way (DatasetCatalog / MetadataCatalog, COCO JSON).

Nothing is registered at import time. Configs list the registrations they need under
``dataloader.datasets`` as LazyCalls of the functions below, and every tool calls
:func:`register_datasets_from_config` before building loaders or evaluators::

    from neo_rtdetr.data.catalog import register_coco_format_dataset
    dataloader.datasets = [
        L(register_coco_format_dataset)(
            name="my_train", json_file="/data/my/train.json", image_root="/data/my/images"),
    ]

COCO 2017 itself keeps detectron2's builtin names (``coco_2017_train``, ``coco_2017_val``...),
registered by detectron2 under ``$DETECTRON2_DATASETS`` (default ``./datasets``) with the
standard layout ``coco/{train2017,val2017}`` and ``coco/annotations/instances_*2017.json``.
"""

import functools
import logging
import os
from typing import Iterable, Optional, Sequence

from neo_rtdetr.data.coco_json import load_coco_detection_json
from neo_rtdetr.data.synthetic import SyntheticSpec, ensure_synthetic_dataset, synthetic_paths

__all__ = [
    "default_cache_dir",
    "register_coco_format_dataset",
    "register_synthetic_dataset",
    "register_datasets_from_config",
    "check_dataset_files",
    "SYNTHETIC_TRAIN",
    "SYNTHETIC_VAL",
]

logger = logging.getLogger(__name__)

SYNTHETIC_TRAIN = "synthetic_train"
SYNTHETIC_VAL = "synthetic_val"


def default_cache_dir() -> str:
    """``$NEO_RTDETR_CACHE``, else ``~/.cache/neo_rtdetr``."""
    return os.environ.get("NEO_RTDETR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "neo_rtdetr")


def register_coco_format_dataset(*, name: str, json_file: str, image_root: str, **metadata) -> str:
    """Register a COCO-format detection dataset under ``name`` (idempotent).

    Registers like detectron2's ``register_coco_instances`` (same metadata: ``json_file``,
    ``image_root``, ``evaluator_type="coco"``), but the dataset is loaded by
    :func:`neo_rtdetr.data.coco_json.load_coco_detection_json`, which validates the file first:
    unusable files are rejected naming the file and ids, fixable annotations are dropped or
    clipped with one summary warning (:mod:`neo_rtdetr.data.validation`). Can be called from a
    config and again by every tool: registering the same name with the same files is a no-op,
    with different files it is an error (not a silent overwrite).

    Args:
        name: dataset name used in configs (``dataloader.train.dataset.names``).
        json_file: COCO instances JSON. Category ids may be any integers; detectron2 maps them to
            contiguous 0..K-1 (``thing_dataset_id_to_contiguous_id``), so the model's
            ``num_classes`` is K, the number of categories.
        image_root: folder the JSON's ``file_name`` entries are relative to.
        **metadata: extra MetadataCatalog fields (e.g. ``thing_colors``).

    Returns:
        ``name``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        same = getattr(meta, "json_file", None) == json_file and getattr(meta, "image_root", None) == image_root
        if same:
            return name
        raise ValueError(
            f"dataset '{name}' is already registered with json_file={getattr(meta, 'json_file', None)!r}, "
            f"image_root={getattr(meta, 'image_root', None)!r}; refusing to re-register it with "
            f"json_file={json_file!r}, image_root={image_root!r}. Use another name."
        )
    DatasetCatalog.register(name, functools.partial(load_coco_detection_json, json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)
    return name


def register_synthetic_dataset(
    *,
    cache_dir: Optional[str] = None,
    train_name: str = SYNTHETIC_TRAIN,
    val_name: str = SYNTHETIC_VAL,
    **spec_overrides,
) -> str:
    """Generate (first use only) and register the embedded synthetic shapes dataset.

    Args:
        cache_dir: where datasets are generated (default :func:`default_cache_dir`).
        train_name / val_name: names to register the two splits under.
        **spec_overrides: fields of :class:`SyntheticSpec` (e.g. ``num_train=64`` for tests).

    Returns:
        The dataset folder.
    """
    spec = SyntheticSpec(**spec_overrides)
    root = ensure_synthetic_dataset(cache_dir or default_cache_dir(), spec)
    for split, name in (("train", train_name), ("val", val_name)):
        json_file, image_root = synthetic_paths(root, split)
        register_coco_format_dataset(name=name, json_file=json_file, image_root=image_root)
    return root


def register_datasets_from_config(registrations: Optional[Iterable]) -> None:
    """Run the registrations a config lists (``cfg.dataloader.datasets``): LazyCalls or callables."""
    from detectron2.config import instantiate

    for reg in registrations or ():
        if callable(reg):
            reg()
        else:
            instantiate(reg)


def _exists(path_manager, path: str) -> bool:
    """Whether ``path`` (a local path or an iopath URI) exists; True when its handler cannot tell (the loader then
    fails naming the file if it is missing)."""
    try:
        return bool(path_manager.exists(path))
    except NotImplementedError:
        return True


def check_dataset_files(names: Sequence[str]) -> None:
    """Fail early, naming the missing file, when a registered COCO-format dataset is not on disk.

    Raises:
        KeyError: for a name that is not registered (lists the registered ones).
        FileNotFoundError: for a missing JSON file or image folder (and, for detectron2's builtin
            datasets, says how ``$DETECTRON2_DATASETS`` is used).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils.file_io import PathManager

    if isinstance(names, str):
        names = [names]
    for name in names:
        if name not in DatasetCatalog.list():
            raise KeyError(f"dataset '{name}' is not registered. Registered: {sorted(DatasetCatalog.list())}")
        meta = MetadataCatalog.get(name)
        for attr in ("json_file", "image_root"):
            path = getattr(meta, attr, None)
            if path is not None and not _exists(PathManager, path):
                hint = ""
                if name.startswith("coco_"):
                    hint = (
                        f" detectron2 looks for COCO under $DETECTRON2_DATASETS "
                        f"(now {os.environ.get('DETECTRON2_DATASETS', 'unset, so ./datasets')}) with the layout "
                        "coco/{train2017,val2017} and coco/annotations/instances_{train,val}2017.json."
                    )
                raise FileNotFoundError(f"dataset '{name}': {attr} {path} does not exist.{hint}")
