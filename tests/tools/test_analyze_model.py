"""tools/analyze_model.py and neo_rtdetr.utils.model_analysis on the tiny model (CPU, small inputs)."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "common" / "models" / "rtdetr_tiny.py")


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_model():
    from neo_rtdetr.utils.model_analysis import build_model_for_analysis

    model, size = build_model_for_analysis(TINY)
    assert size is None  # a model-only config has no dataloader.image_size
    return model


def test_parameter_counts_split_and_frozen_bn_affine():
    from detectron2.layers import FrozenBatchNorm2d

    from neo_rtdetr.utils.model_analysis import build_model_for_analysis, count_parameters

    plain, _ = build_model_for_analysis(TINY)  # R18 recipe: trainable BN, nothing frozen
    frozen, _ = build_model_for_analysis(TINY, ["model.backbone.freeze_norm=True", "model.backbone.freeze_at=0"])
    c_plain, c_frozen = count_parameters(plain), count_parameters(frozen)

    assert c_plain.total == sum(p.numel() for p in plain.parameters())
    assert (c_plain.trainable, c_plain.frozen, c_plain.frozen_bn_affine) == (c_plain.total, 0, 0)
    bn_affine = sum(m.weight.numel() + m.bias.numel() for m in frozen.modules() if isinstance(m, FrozenBatchNorm2d))
    assert bn_affine > 0
    assert c_frozen.frozen_bn_affine == bn_affine
    assert c_frozen.total == sum(p.numel() for p in frozen.parameters()) == c_plain.total - bn_affine
    # freezing BN moves the affine weights from parameters to buffers: the official count is unchanged
    assert c_frozen.total_with_frozen_bn == c_plain.total
    # freeze_at=0 freezes the stem's convolutions
    stem = sum(p.numel() for p in frozen.backbone.conv1.parameters())
    assert stem > 0 and c_frozen.frozen == stem and c_frozen.trainable == c_frozen.total - stem
    assert sum(c_frozen.by_part.values()) == c_frozen.total_with_frozen_bn
    assert set(c_frozen.by_part) >= {"backbone", "encoder", "decoder"}


@pytest.fixture(scope="module")
def small_result(tiny_model):
    from neo_rtdetr.utils.model_analysis import analyze_model

    return analyze_model(tiny_model, (64, 64), max_depth=1)


def test_flops_positive_grow_with_size_and_follow_padding(tiny_model, small_result):
    from neo_rtdetr.utils.model_analysis import analyze_model

    small = small_result
    large = analyze_model(tiny_model, (70, 100), max_depth=1)  # padded to 96 x 128 like preprocess_image
    assert small.flops > 0 and small.padded_input_size == (64, 64)
    assert large.padded_input_size == (96, 128)
    assert large.flops > 2 * small.flops  # 3x the pixels
    assert tiny_model.training is False
    # one fused multiply-add = one flop: the stem conv 3->32, 3x3, stride 2, on the padded input
    assert small.flops_by_module["backbone.conv1.conv1_1.conv"] == 32 * 32 * 32 * 3 * 3 * 3
    assert large.flops_by_module["backbone.conv1.conv1_1.conv"] == 48 * 64 * 32 * 3 * 3 * 3
    parts = small.flops_by_module["backbone"] + small.flops_by_module["encoder"] + small.flops_by_module["decoder"]
    assert parts == small.flops
    ops = small.flops_by_operator
    assert ops["conv"] > 0 and ops["linear"] > 0 and ops["grid_sampler"] > 0
    # the attention handle: AIFI on the 2x2 stride-32 map (4 heads of 16 channels, 4 tokens) and the
    # decoder self-attention (2 layers, 50 queries, 4 heads of 16 channels)
    assert ops["scaled_dot_product_attention"] == 4 * 4 * 4 * (16 + 16) + 2 * 4 * 50 * 50 * (16 + 16)
    assert "aten::scaled_dot_product_attention" not in small.unsupported_ops
    assert "aten::silu" in small.unsupported_ops  # element-wise operators are not counted, and listed


def test_tool_prints_counts_and_table(capsys, small_result):
    tool = _load_tool("analyze_model")
    assert tool.main(["--config-file", TINY, "--size", "64", "64", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    expected = small_result.params.total
    params = re.search(r"^\s+total:\s+(\d+)\s+\(", out, re.M)
    assert params and int(params.group(1)) == expected, out[:2000]
    flops = re.search(r"^\s+total: (\d+) \(([\d.]+) G\)", out, re.M)
    assert flops and int(flops.group(1)) == small_result.flops
    assert "operators fvcore skipped" in out and "aten::silu" in out
    # fvcore's table: header, the whole model's row with the same parameter count, per-module rows
    assert re.search(r"^\|\s*module\s*\|\s*#parameters\s*\|\s*#flops\s*\|", out, re.M)
    top = re.search(r"^\|\s*model\s*\|\s*([\d.]+)M\s*\|", out, re.M)
    assert top and abs(float(top.group(1)) * 1e6 - expected) <= 500  # fvcore prints 3 decimals
    for name in ("backbone", "encoder", "decoder", "backbone.res_layers", "decoder.decoder.layers"):
        assert re.search(rf"^\|\s+{re.escape(name)}\s+\|", out, re.M), name


def test_tool_refuses_unknown_override(capsys):
    tool = _load_tool("analyze_model")
    assert tool.main(["--config-file", TINY, "--size", "64", "64", "--opts", "model.num_clases=3"]) == 1
    assert "num_clases" in capsys.readouterr().err
