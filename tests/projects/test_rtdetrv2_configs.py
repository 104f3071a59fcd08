"""RT-DETRv2 configs: every one instantiates (model, optimizer, loaders, evaluator), the COCO ones follow the official
v2 recipe per size, and a tiny v2 config trains and evaluates through tools/lazyconfig_train_net.py."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from detectron2.config import LazyConfig, instantiate

from projects.RTDETRv2.modeling import RTDETRTransformerV2

from ..configs.test_configs import _use_small_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "projects/RTDETRv2/configs/*.py")))

#: rtdetr_official.md §10.2 (official configs/rtdetrv2/*.yml): epochs, strong-augmentation stop epoch,
#: multi-scale (None: off), backbone lr, base lr 1e-4.
RECIPE = {
    "rtdetrv2_r18_h100.py": dict(epochs=120, stop=117, multi_scale=False, backbone_lr=1e-4),
    "rtdetrv2_r34_h100.py": dict(epochs=120, stop=117, multi_scale=True, backbone_lr=5e-5),
    "rtdetrv2_r50m_h100.py": dict(epochs=84, stop=81, multi_scale=True, backbone_lr=1e-5),
    "rtdetrv2_r50_h100.py": dict(epochs=72, stop=71, multi_scale=True, backbone_lr=1e-5),
    "rtdetrv2_r101_h100.py": dict(epochs=72, stop=71, multi_scale=True, backbone_lr=1e-6),
}


def _expected_weight_decay(config: str, name: str) -> float:
    """The §10.2 'no-wd params' column, written as plain name tests."""
    is_norm = "norm" in name or "bn" in name
    in_enc_dec = name.startswith(("encoder.", "decoder."))
    if config == "rtdetrv2_r18_h100.py":
        return 0.0 if is_norm else 1e-4  # all norm/bn, backbone included
    if config == "rtdetrv2_r34_h100.py":
        if name.startswith("backbone."):
            return 0.0 if "norm" in name else 1e-4
        return 0.0 if in_enc_dec and (is_norm or "bias" in name) else 1e-4
    return 0.0 if in_enc_dec and is_norm else 1e-4  # M, L, X: encoder/decoder norm/bn only (biases keep wd)


def test_the_five_sizes_have_configs():
    names = {os.path.basename(c) for c in CONFIGS}
    assert set(RECIPE) <= names
    assert {"rtdetrv2_r18_dsp_h100.py", "rtdetrv2_tiny_synthetic_demo.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_instantiates_and_follows_the_v2_recipe(path, synthetic_root, tmp_path):
    name = os.path.basename(path)
    cfg = LazyConfig.load(path)
    if name in RECIPE:
        r = RECIPE[name]
        assert cfg.train.epochs == r["epochs"] and cfg.dataloader.train.total_batch_size == 16
        assert cfg.dataloader.train.mapper.stop_strong_augmentation_epoch == r["stop"]
        assert (cfg.dataloader.train.multi_scale is not None) == r["multi_scale"]
        if r["multi_scale"]:
            assert cfg.dataloader.train.multi_scale_stop_epoch == r["stop"]
        assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
        assert cfg.lr_multiplier.warmup_iters == 2000
        assert cfg.train.amp.enabled and cfg.train.ema.decay == 0.9999 and cfg.train.ema.warmups == 2000
        assert cfg.train.clip_grad.max_norm == 0.1
        assert cfg.train.sync_bn is True and cfg.model.channels_last is True  # as the v1 config of the size
    cfg = _use_small_data(cfg, synthetic_root)
    cfg.train.output_dir = str(tmp_path)
    model = instantiate(cfg.model)
    assert isinstance(model.decoder, RTDETRTransformerV2)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    if name in RECIPE:
        for group in optimizer.param_groups:
            for p in group["params"]:
                n = trainable[id(p)]
                lr = RECIPE[name]["backbone_lr"] if n.startswith("backbone.") else 1e-4
                assert group["lr"] == pytest.approx(lr), (n, group["name"])
                assert group["weight_decay"] == _expected_weight_decay(name, n), (n, group["name"])
    if name == "rtdetrv2_r18_dsp_h100.py":
        assert model.decoder.cross_attn_method == "discrete"
        assert not any(p.requires_grad for n, p in model.named_parameters() if "sampling_offsets" in n)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert len(batch) == 2
    test_batch = next(iter(instantiate(cfg.dataloader.test)))
    assert list(test_batch[0]["image"].shape[-2:]) == list(cfg.dataloader.image_size)
    assert instantiate(cfg.dataloader.evaluator)._output_dir == str(tmp_path)


def test_tiny_v2_trains_and_evaluates_with_the_tool_from_any_directory(tmp_path):
    """tools/lazyconfig_train_net.py with a project config, run from another directory with only the library
    installed (a path holding just ``neo_rtdetr``, as an installation provides): the tool itself makes
    ``projects.RTDETRv2`` importable. Ragged points and agnostic query selection, evaluation at the end."""
    out, cache, site = tmp_path / "run", tmp_path / "cache", tmp_path / "site"
    site.mkdir()
    os.symlink(os.path.join(REPO, "neo_rtdetr"), site / "neo_rtdetr")  # this checkout's library, nothing else
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, os.path.join(REPO, "tools/lazyconfig_train_net.py"),
        "--config-file", os.path.join(REPO, "projects/RTDETRv2/configs/rtdetrv2_tiny_synthetic_demo.py"),
        f"train.output_dir={out}",
        f"dataloader.datasets.0.cache_dir={cache}",
        "+dataloader.datasets.0.num_train=8",
        "+dataloader.datasets.0.num_val=4",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.image_size=[64,64]",
        "dataloader.train.multi_scale=[64]",
        "dataloader.test.dataset.names=synthetic_val",
        "model.decoder.eval_spatial_size=[64,64]",
        "model.decoder.num_points=[2,4,3]",
        "model.decoder.query_select_method=agnostic",
        "train.max_iter=6",
        "train.log_period=1",
        "train.eval_period_epochs=0",
        "train.checkpoint_period_epochs=100",
    ]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    rows = [json.loads(line) for line in open(out / "metrics.json") if line.strip()]
    train_rows = [r for r in rows if "total_loss" in r]
    assert [r["iteration"] for r in train_rows] == list(range(6))
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in train_rows)
    assert all("loss_vfl_enc_0" in r and "loss_vfl_dn_0" in r and "loss_vfl_aux_0" in r for r in train_rows)
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log  # evaluated at the end, by the same tool
    # the saved config names the project classes by import path and rebuilds the same model
    saved = LazyConfig.load(str(out / "config.yaml"))
    assert saved.model.decoder._target_ == "projects.RTDETRv2.modeling.RTDETRTransformerV2"
    rebuilt = instantiate(saved.model)
    assert isinstance(rebuilt.decoder, RTDETRTransformerV2) and rebuilt.decoder.num_points == (2, 4, 3)
    state = torch.load(str(out / "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    assert state["decoder.decoder.layers.0.cross_attn.num_points_scale"].shape == (9,)
    assert state["decoder.enc_score_head.weight"].shape == (1, 64)
    rebuilt.load_state_dict(state, strict=True)
