import os
import subprocess
import sys
import textwrap

import pytest

from neo_rtdetr.data.catalog import (
    check_dataset_files,
    register_coco_format_dataset,
    register_datasets_from_config,
    register_synthetic_dataset,
)
from neo_rtdetr.data.synthetic import SYNTHETIC_CLASSES, synthetic_paths

from ..conftest import small_spec


def test_synthetic_registered_through_detectron2_coco_path(synthetic_cache):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    spec = small_spec()
    register_synthetic_dataset(cache_dir=synthetic_cache, train_name="t_syn_train", val_name="t_syn_val", **spec.__dict__)
    dicts = DatasetCatalog.get("t_syn_train")
    assert len(dicts) == spec.num_train
    meta = MetadataCatalog.get("t_syn_train")
    assert meta.thing_classes == list(SYNTHETIC_CLASSES)
    assert meta.evaluator_type == "coco"
    # COCO ids 1..6 are remapped to contiguous 0..5 by detectron2's loader
    assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(len(SYNTHETIC_CLASSES))}
    cats = {a["category_id"] for d in dicts for a in d["annotations"]}
    assert cats == set(range(len(SYNTHETIC_CLASSES)))
    a = next(a for d in dicts for a in d["annotations"])
    assert a["bbox_mode"] == BoxMode.XYWH_ABS
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    check_dataset_files(["t_syn_train", "t_syn_val"])


def test_registration_is_idempotent_and_refuses_silent_overwrite(synthetic_root):
    json_file, image_root = synthetic_paths(synthetic_root, "val")
    register_coco_format_dataset(name="t_idem", json_file=json_file, image_root=image_root)
    register_coco_format_dataset(name="t_idem", json_file=json_file, image_root=image_root)
    other_json, other_root = synthetic_paths(synthetic_root, "train")
    with pytest.raises(ValueError, match="already registered"):
        register_coco_format_dataset(name="t_idem", json_file=other_json, image_root=other_root)


def test_custom_dataset_registered_from_a_config_file(synthetic_root, tmp_path):
    """A user registers their own COCO-format data with a config, no Python of their own."""
    from detectron2.config import LazyConfig
    from detectron2.data import DatasetCatalog, MetadataCatalog

    json_file, image_root = synthetic_paths(synthetic_root, "val")
    cfg_file = tmp_path / "my_data.py"
    cfg_file.write_text(textwrap.dedent(f"""
        from omegaconf import OmegaConf
        from detectron2.config import LazyCall as L
        from neo_rtdetr.data.catalog import register_coco_format_dataset

        dataloader = OmegaConf.create()
        dataloader.datasets = [
            L(register_coco_format_dataset)(name="t_custom_val", json_file={json_file!r}, image_root={image_root!r}),
        ]
    """))
    cfg = LazyConfig.load(str(cfg_file))
    assert "t_custom_val" not in DatasetCatalog.list()
    register_datasets_from_config(cfg.dataloader.datasets)
    assert len(DatasetCatalog.get("t_custom_val")) == small_spec().num_val
    assert MetadataCatalog.get("t_custom_val").json_file == json_file


def test_check_dataset_files_names_the_missing_file(tmp_path):
    missing = str(tmp_path / "nope" / "instances.json")
    register_coco_format_dataset(name="t_missing", json_file=missing, image_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope/instances.json"):
        check_dataset_files("t_missing")
    with pytest.raises(KeyError, match="not registered"):
        check_dataset_files(["t_never_registered"])


def test_coco_uses_detectron2_builtin_names_under_DETECTRON2_DATASETS(tmp_path):
    code = textwrap.dedent("""
        from detectron2.data import DatasetCatalog, MetadataCatalog
        from neo_rtdetr.data.catalog import check_dataset_files
        meta = MetadataCatalog.get("coco_2017_val")
        print(meta.json_file)
        print(meta.image_root)
        print(len(meta.thing_classes))
        try:
            check_dataset_files("coco_2017_val")
        except FileNotFoundError as e:
            print("ERR", e)
    """)
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == os.path.join(str(tmp_path), "coco/annotations/instances_val2017.json")
    assert out[1] == os.path.join(str(tmp_path), "coco/val2017")
    assert out[2] == "80"
    assert out[3].startswith("ERR") and "DETECTRON2_DATASETS" in out[3] and str(tmp_path) in out[3]
