"""Every training config instantiates on CPU: model, optimizer, loaders (one batch), evaluator."""

import glob
import os

import pytest
import torch

from detectron2.config import LazyConfig, instantiate

from neo_rtdetr.config import apply_overrides_strict
from neo_rtdetr.data.catalog import register_coco_format_dataset, register_datasets_from_config
from neo_rtdetr.data.synthetic import synthetic_paths

CONFIGS = sorted(glob.glob("configs/*.py"))


def _use_small_data(cfg, synthetic_root):
    """Point a config at the small synthetic dataset of the test session (COCO is not on this machine)."""
    json_train, root_train = synthetic_paths(synthetic_root, "train")
    json_val, root_val = synthetic_paths(synthetic_root, "val")
    register_coco_format_dataset(name="cfgtest_train", json_file=json_train, image_root=root_train)
    register_coco_format_dataset(name="cfgtest_val", json_file=json_val, image_root=root_val)
    cfg.dataloader.datasets = []
    cfg.dataloader.train.dataset.names = "cfgtest_train"
    cfg.dataloader.test.dataset.names = "cfgtest_val"
    cfg.dataloader.train.num_workers = 0
    cfg.dataloader.test.num_workers = 0
    cfg.dataloader.train.total_batch_size = 2
    return cfg


def test_every_config_is_listed():
    names = {os.path.basename(c) for c in CONFIGS}
    for required in ("rtdetr_r18_h100.py", "rtdetr_r34_h100.py", "rtdetr_r50m_h100.py", "rtdetr_r50_h100.py",
                     "rtdetr_r101_h100.py", "rtdetr_r50_1920x1080_h100.py", "rtdetr_tiny_synthetic_demo.py"):
        assert required in names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_instantiates(path, synthetic_root, tmp_path):
    cfg = _use_small_data(LazyConfig.load(path), synthetic_root)
    cfg.train.output_dir = str(tmp_path)
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    n_opt = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_loader = instantiate(cfg.dataloader.train)
    assert train_loader.iters_per_epoch >= 1
    batch = next(iter(train_loader))
    assert len(batch) == 2
    h, w = batch[0]["image"].shape[-2:]
    if cfg.dataloader.train.multi_scale is None:
        assert [h, w] == list(cfg.dataloader.image_size)
    else:
        assert h in cfg.dataloader.train.multi_scale and h == w
    test_batch = next(iter(instantiate(cfg.dataloader.test)))
    assert list(test_batch[0]["image"].shape[-2:]) == list(cfg.dataloader.image_size)
    evaluator = instantiate(cfg.dataloader.evaluator)
    assert evaluator._output_dir == str(tmp_path)
    cfg.lr_multiplier.max_iter = 100
    assert 0 < instantiate(cfg.lr_multiplier)(0.0) < 1.0


@pytest.mark.parametrize("name", ["r18", "r34", "r50m", "r50", "r101"])
def test_coco_recipes_follow_the_official_schedule(name):
    cfg = LazyConfig.load(f"configs/rtdetr_{name}_h100.py")
    assert cfg.train.epochs == 72
    assert cfg.dataloader.train.total_batch_size == 16
    assert cfg.train.amp.enabled and cfg.train.amp.precision == "bf16"
    assert cfg.train.ema.enabled and cfg.train.ema.decay == 0.9999 and cfg.train.ema.warmups == 2000
    assert cfg.train.clip_grad.max_norm == 0.1
    assert cfg.train.eval_period_epochs == 1
    assert cfg.dataloader.train.mapper.stop_strong_augmentation_epoch == 71
    assert cfg.dataloader.train.multi_scale_stop_epoch == 71  # interpolated from the mapper's
    assert cfg.dataloader.train.dataset.names == "coco_2017_train"
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.lr_multiplier.warmup_iters == 2000
    backbone_rules = [r for r in cfg.optimizer.params.rules if "backbone" in r["pattern"]]
    assert backbone_rules and all(r["lr"] == (1e-6 if name == "r101" else 1e-5) for r in backbone_rules)
    if name in ("r18", "r34"):  # trainable backbone norms: their own group without weight decay
        assert backbone_rules[0]["weight_decay"] == 0.0 and "norm" in backbone_rules[0]["pattern"]
    # official runtime.yml (included by every model): sync_bn True; the encoder's BatchNorms train in every size
    assert cfg.train.sync_bn is True


def test_1920x1080_config_keeps_frames_and_pads():
    cfg = LazyConfig.load("configs/rtdetr_r50_1920x1080_h100.py")
    assert list(cfg.dataloader.image_size) == [1080, 1920]
    assert cfg.dataloader.train.multi_scale is None
    assert cfg.model.size_divisibility == 32


def test_a_typo_in_an_override_is_an_error():
    cfg = LazyConfig.load("configs/rtdetr_r50_h100.py")
    with pytest.raises(KeyError, match="train.max_iter"):
        apply_overrides_strict(cfg, ["train.max_itr=5"])
    cfg = apply_overrides_strict(cfg, ["train.max_iter=5", "dataloader.train.total_batch_size=8"])
    assert cfg.train.max_iter == 5 and cfg.dataloader.train.total_batch_size == 8
