"""build_param_groups: official RT-DETR regex rules, first-match semantics, frozen params, LR schedule."""

import logging
import os
import re

import pytest
import torch
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from neo_rtdetr.solver import RTDETR_R50_RULES, build_param_groups, rtdetr_v1_rules
from tests.engine.toy import ToyDetector

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def _by_name(model, groups):
    """param name -> (group name, lr, weight_decay)."""
    ids = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in groups:
        for p in g["params"]:
            assert ids[id(p)] not in out, "a parameter is in two groups"
            out[ids[id(p)]] = (g["name"], g["lr"], g["weight_decay"])
    return out


def test_r50_rules_on_toy_names():
    model = ToyDetector()
    groups = build_param_groups(model, base_lr=1e-4, weight_decay=1e-4, rules=RTDETR_R50_RULES)
    got = _by_name(model, groups)
    assert got["backbone.conv.weight"] == ("backbone", 1e-5, 1e-4)
    assert got["backbone.norm.weight"] == ("backbone", 1e-5, 1e-4)  # R50: backbone keeps wd
    assert got["encoder.norm.weight"] == ("encoder_bias_norm", 1e-4, 0.0)
    assert got["encoder.linear.bias"] == ("encoder_bias_norm", 1e-4, 0.0)
    assert got["decoder.linear.bias"] == ("decoder_bias_norm", 1e-4, 0.0)
    assert got["encoder.linear.weight"] == ("default", 1e-4, 1e-4)
    assert got["decoder.linear.weight"] == ("default", 1e-4, 1e-4)
    assert len(got) == len(list(model.parameters()))


def test_r18_rules_split_backbone_norms():
    model = ToyDetector()
    got = _by_name(model, build_param_groups(model, base_lr=1e-4, weight_decay=1e-4, rules=rtdetr_v1_rules(18)))
    assert got["backbone.norm.weight"] == ("backbone_norm", 1e-5, 0.0)
    assert got["backbone.conv.bias"] == ("backbone", 1e-5, 1e-4)
    assert got["encoder.norm.bias"][2] == 0.0 and got["decoder.linear.bias"][2] == 0.0
    assert got["encoder.linear.weight"] == ("default", 1e-4, 1e-4)
    with pytest.raises(ValueError, match="depth"):
        rtdetr_v1_rules(152)


def test_first_matching_rule_wins():
    model = ToyDetector()
    rules = [
        {"name": "first", "pattern": r"norm", "lr": 1.0},
        {"name": "second", "pattern": r"encoder", "lr": 2.0},
    ]
    got = _by_name(model, build_param_groups(model, base_lr=0.1, weight_decay=0.0, rules=rules))
    assert got["encoder.norm.weight"][0] == "first"  # matches both, the first wins
    assert got["encoder.linear.weight"][0] == "second"
    # order matters: swapping the rules moves the shared parameter
    got = _by_name(model, build_param_groups(model, base_lr=0.1, weight_decay=0.0, rules=rules[::-1]))
    assert got["encoder.norm.weight"][0] == "second"


def test_pattern_is_searched_not_matched():
    model = ToyDetector()
    groups = build_param_groups(model, base_lr=0.1, weight_decay=0.0, rules=[{"pattern": r"linear\.bias$"}])
    got = _by_name(model, groups)
    assert got["decoder.linear.bias"][0].startswith("rule0")  # found in the middle of the name


def test_frozen_parameters_are_excluded_and_empty_groups_dropped(caplog):
    model = ToyDetector()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    with caplog.at_level(logging.WARNING):
        groups = build_param_groups(
            model, base_lr=1e-4, weight_decay=1e-4,
            rules=[{"name": "bb", "pattern": "backbone", "lr": 1e-5}, {"name": "none", "pattern": "nothing_here"}],
        )
    assert [g["name"] for g in groups] == ["default"]
    assert not any(n.startswith("backbone") for n in _by_name(model, groups))
    assert any("'bb' matched no trainable parameter" in r.getMessage() for r in caplog.records)


def test_rule_validation():
    model = ToyDetector()
    with pytest.raises(ValueError, match="unknown keys"):
        build_param_groups(model, base_lr=1e-4, weight_decay=0.0, rules=[{"pattern": "x", "weight_decy": 0.0}])
    with pytest.raises(ValueError, match="invalid regex"):
        build_param_groups(model, base_lr=1e-4, weight_decay=0.0, rules=[{"pattern": "(unclosed"}])


def test_lr_multiplier_keeps_the_backbone_ratio():
    model = ToyDetector()
    groups = build_param_groups(model, base_lr=1e-4, weight_decay=1e-4, rules=RTDETR_R50_RULES)
    optimizer = torch.optim.AdamW(groups, lr=1e-4, weight_decay=1e-4)
    multiplier = WarmupParamScheduler(
        MultiStepParamScheduler([1.0, 0.1], milestones=[6], num_updates=10), warmup_factor=0.001, warmup_length=0.3
    )
    sched = LRMultiplier(optimizer, multiplier, max_iter=10)
    lrs = {g["name"]: [] for g in optimizer.param_groups}
    for _ in range(10):
        for g in optimizer.param_groups:
            lrs[g["name"]].append(g["lr"])
        optimizer.step()
        sched.step()
    for b, d in zip(lrs["backbone"], lrs["default"]):
        assert b == pytest.approx(d / 10, rel=1e-9)
    assert lrs["default"][0] == pytest.approx(1e-4 * 0.001)  # warm-up start
    assert lrs["default"][5] == pytest.approx(1e-4)
    assert lrs["default"][8] == pytest.approx(1e-5)  # after the milestone
    assert lrs["encoder_bias_norm"] == lrs["default"]


def test_groups_survive_optimizer_state_dict_round_trip(tmp_path):
    model = ToyDetector()
    opt = torch.optim.AdamW(build_param_groups(model, base_lr=1e-4, weight_decay=1e-4, rules=RTDETR_R50_RULES))
    path = tmp_path / "opt.pth"
    torch.save(opt.state_dict(), path)
    opt2 = torch.optim.AdamW(build_param_groups(model, base_lr=1.0, weight_decay=1.0, rules=RTDETR_R50_RULES))
    opt2.load_state_dict(torch.load(path, weights_only=True))
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt2.param_groups] == [
        (g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups
    ]


def test_official_r50_rules_on_the_real_model_names():
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(CONFIG_DIR, "common", "models", "rtdetr_tiny.py"))
    cfg.model.num_classes = 6
    model = instantiate(cfg.model)
    got = _by_name(model, build_param_groups(model, base_lr=1e-4, weight_decay=1e-4, rules=RTDETR_R50_RULES))
    assert len(got) == sum(1 for p in model.parameters() if p.requires_grad)
    for name, (group, lr, wd) in got.items():
        if name.startswith("backbone."):
            assert (group, lr, wd) == ("backbone", 1e-5, 1e-4), name
        elif name.endswith("bias") or re.search(r"norm.*weight", name):
            assert wd == 0.0 and lr == 1e-4, name  # encoder/decoder bias and norm weights
        else:
            assert (group, lr, wd) == ("default", 1e-4, 1e-4), name
    assert got["encoder.encoder.0.layers.0.norm1.weight"][2] == 0.0
    assert got["encoder.encoder.0.layers.0.self_attn.in_proj_bias"][2] == 0.0
    assert got["encoder.encoder.0.layers.0.linear1.weight"][2] == 1e-4


def test_works_through_lazyconfig_instantiate():
    # LazyConfig turns the rules into a ListConfig of DictConfigs and resolves "${..lr}".
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    cfg = L(torch.optim.AdamW)(
        params=L(build_param_groups)(model=None, base_lr="${..lr}", weight_decay="${..weight_decay}",
                                     rules=RTDETR_R50_RULES),
        lr=2e-4,
        weight_decay=1e-4,
    )
    model = ToyDetector()
    cfg.params.model = model
    optimizer = instantiate(cfg)
    lrs = {g["name"]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert lrs == {"backbone": (1e-5, 1e-4), "encoder_bias_norm": (2e-4, 0.0),
                   "decoder_bias_norm": (2e-4, 0.0), "default": (2e-4, 1e-4)}
