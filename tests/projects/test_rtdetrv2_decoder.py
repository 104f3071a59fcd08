"""RT-DETRv2 decoder and model: official v2 state layout, parameter counts, stored anchors, agnostic query selection."""

import re

import pytest
import torch

from detectron2.config import LazyConfig, instantiate

from neo_rtdetr.modeling.criterion import HungarianMatcher, RTDETRCriterion
from projects.RTDETRv2.modeling import RTDETRCriterionV2, RTDETRTransformerV2

from ..modeling.test_rtdetr import count_params_m, make_inputs
from .rtdetrv2_helpers import V2_SIZES, build_v2, randomize_v2

#: rtdetr_official.md §9 (analytic counts with BN affine, 80 classes; = the official README's 20/31/36/42/76 M).
#: The v2 parameter set is the v1 one (rtdetr_official.md §11.1: same params per size), so the same numbers hold.
OFFICIAL_PARAMS_M = {"r18": 20.18, "r34": 31.44, "r50m": 36.65, "r50": 42.94, "r101": 76.66}
#: hf_and_peers.md §1.11: HF RTDetrV2ForObjectDetection r50vd, 80 labels, frozen-BN affine not counted.
HF_V2_R50_PARAMS = 42_891_372


def _v1_name(key: str) -> str:
    """Our v2 key -> the v1 key of the same tensor (the two renamed Sequential children)."""
    key = re.sub(r"^(encoder\.input_proj\.\d+)\.conv\.", r"\1.0.", key)
    key = re.sub(r"^(encoder\.input_proj\.\d+)\.norm\.", r"\1.1.", key)
    key = re.sub(r"^decoder\.enc_output\.proj\.", "decoder.enc_output.0.", key)
    return re.sub(r"^decoder\.enc_output\.norm\.", "decoder.enc_output.1.", key)


@pytest.mark.parametrize("size", V2_SIZES)
def test_parameter_counts_and_state_dict_are_v1_plus_the_documented_v2_buffers(size):
    with torch.device("meta"):
        v2 = build_v2(size)
        v1 = instantiate(LazyConfig.load(f"configs/common/models/rtdetr_{size}.py").model)
        agnostic = build_v2(size, query_select_method="agnostic")
    assert isinstance(v2.decoder, RTDETRTransformerV2) and isinstance(v2.criterion, RTDETRCriterionV2)
    assert round(count_params_m(v2) / 1e6, 2) == OFFICIAL_PARAMS_M[size]
    assert count_params_m(v2) == count_params_m(v1)
    if size == "r50":
        assert sum(p.numel() for p in v2.parameters()) == HF_V2_R50_PARAMS
    # agnostic encoder head: 1 output instead of 80 -> 79 x (256 + 1) fewer parameters
    assert count_params_m(v2) - count_params_m(agnostic) == 79 * 257

    sd2, sd1 = v2.state_dict(), v1.state_dict()
    layers = v2.decoder.num_layers
    extra = {"decoder.anchors", "decoder.valid_mask"} | {
        f"decoder.decoder.layers.{i}.cross_attn.num_points_scale" for i in range(layers)
    }
    assert extra <= set(sd2)
    assert {_v1_name(k): tuple(v.shape) for k, v in sd2.items() if k not in extra} == {
        k: tuple(v.shape) for k, v in sd1.items()
    }
    assert tuple(sd2["decoder.anchors"].shape) == (1, 8400, 4)
    assert tuple(sd2["decoder.valid_mask"].shape) == (1, 8400, 1)
    assert tuple(sd2["decoder.decoder.layers.0.cross_attn.num_points_scale"].shape) == (12,)


def test_official_v2_buffers_and_names():
    model = build_v2("r18")
    sd = model.state_dict()
    for key in ("encoder.input_proj.2.conv.weight", "encoder.input_proj.2.norm.running_var",
                "decoder.enc_output.proj.weight", "decoder.enc_output.norm.bias", "decoder.input_proj.0.conv.weight"):
        assert key in sd, key
    assert not any(re.match(r"^(encoder\.input_proj\.\d+|decoder\.enc_output)\.[01]\.", k) for k in sd)
    # rtdetr_official.md §4: at 640 x 640 only the outer ring of the stride-8 map is invalid, 316 of 8400 anchors
    valid = sd["decoder.valid_mask"]
    assert valid.dtype == torch.bool and int(valid.sum()) == 8400 - 316
    anchors = sd["decoder.anchors"]
    assert anchors.dtype == torch.float32 and bool(torch.isinf(anchors[~valid.expand_as(anchors)]).all())
    # the first anchor of level 0 (cell (0, 0) of 80 x 80) is invalid, cell (1, 1) is centre 1.5 / 80, size 0.05
    a = torch.sigmoid(anchors[0, 81])
    torch.testing.assert_close(a, torch.tensor([1.5 / 80, 1.5 / 80, 0.05, 0.05]), rtol=1e-6, atol=1e-7)
    assert all(v.eq(0.25).all() for k, v in sd.items() if k.endswith("num_points_scale"))
    # official v2 init of the denoising embedding: normal rows, zero padding row
    emb = model.decoder.denoising_class_embed.weight
    assert emb[-1].abs().sum() == 0 and 0.8 < float(emb[:-1].detach().std()) < 1.2


def _tiny(stored=(128, 128), **overrides):
    torch.manual_seed(0)
    model = build_v2("tiny", num_classes=6, eval_spatial_size=list(stored), **overrides)
    randomize_v2(model, seed=3)
    return model


def test_stored_anchors_serve_only_eval_at_their_size():
    """Corrupt the stored anchors: eval at the stored size changes, other sizes and training do not."""
    model = _tiny()
    images = {hw: torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(0)) for hw in [(128, 128), (128, 160)]}
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    clean = {k: v.clone() for k, v in model.state_dict().items()}
    corrupt = dict(clean, **{"decoder.anchors": clean["decoder.anchors"] + 0.5})

    def run(state, training):
        model.load_state_dict(state)  # training updates the BN statistics: start every run from the same state
        model.train(training)
        outs = {}
        with torch.no_grad():
            for hw, x in images.items():
                torch.manual_seed(0)
                outs[hw] = model.forward_network(x, targets if training else None)["pred_boxes"]
        return outs

    before_eval, after_eval = run(clean, False), run(corrupt, False)
    assert (after_eval[(128, 128)] - before_eval[(128, 128)]).abs().max() > 1e-3
    torch.testing.assert_close(after_eval[(128, 160)], before_eval[(128, 160)], rtol=0, atol=0)
    before_train, after_train = run(clean, True), run(corrupt, True)
    for hw in images:
        torch.testing.assert_close(after_train[hw], before_train[hw], rtol=0, atol=0)
    # a half-precision model does not read rounded buffers: it computes float32 anchors
    model.decoder.half()
    assert model.decoder.anchors.dtype == torch.float16
    anchors, _ = model.decoder._generate_anchors([(16, 16), (8, 8), (4, 4)], dtype=torch.float32)
    assert anchors.dtype == torch.float32 and not torch.equal(anchors, model.decoder.anchors.float())


@pytest.mark.parametrize("method", ["default", "agnostic"])
def test_query_selection_takes_the_top_k_of_the_encoder_scores(method):
    model = _tiny(query_select_method=method).train()
    dec = model.decoder
    assert dec.enc_score_head.out_features == (1 if method == "agnostic" else 6)
    scores = []
    handle = dec.enc_score_head.register_forward_hook(lambda m, i, o: scores.append(o.detach()))
    batch = make_inputs([(128, 128), (128, 128)], [2, 3], num_classes=6)
    with torch.no_grad():
        x = torch.stack([b["image"] for b in batch]).float() / 255.0
        targets = model.prepare_targets(batch, model.preprocess_image(batch))
        out = model.forward_network(x, targets)
    handle.remove()
    enc_logits = out["enc_outputs"]["pred_logits"]  # [B, Q, 1 or K]
    assert out["enc_meta"] == {"class_agnostic": method == "agnostic"}
    best = scores[0].max(-1).values  # agnostic: the single logit
    expected = best.topk(dec.num_queries, dim=1).values
    torch.testing.assert_close(enc_logits.max(-1).values, expected, rtol=0, atol=0)


def test_agnostic_criterion_supervises_the_encoder_as_one_class():
    model = _tiny(query_select_method="agnostic").train()
    batch = make_inputs([(128, 128), (128, 128)], [2, 3], num_classes=6, seed=1)
    x = torch.stack([b["image"] for b in batch]).float() / 255.0
    targets = model.prepare_targets(batch, model.preprocess_image(batch))
    assert any(int(t["labels"].max()) > 0 for t in targets)  # labels the 1-column encoder head cannot index
    torch.manual_seed(0)
    outputs = model.forward_network(x, targets)
    losses = model.criterion(outputs, targets)
    enc_keys = {k for k in losses if k.endswith("_enc_0")}
    assert enc_keys == {"loss_vfl_enc_0", "loss_bbox_enc_0", "loss_giou_enc_0"}
    # the definition: a 1-class criterion on the encoder outputs with every label 0; the v1 criterion on the rest
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2.0)
    one_class = RTDETRCriterion(num_classes=1, matcher=matcher)
    zero = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
    expected_enc = one_class({"pred_logits": outputs["enc_outputs"]["pred_logits"],
                              "pred_boxes": outputs["enc_outputs"]["pred_boxes"]}, zero)
    for k, v in expected_enc.items():
        torch.testing.assert_close(losses[k + "_enc_0"], v, rtol=1e-6, atol=1e-7)
    v1 = RTDETRCriterion(num_classes=6, matcher=matcher)
    rest = v1({k: v for k, v in outputs.items() if k not in ("enc_outputs", "enc_meta")}, targets)
    assert set(rest) == set(losses) - enc_keys
    for k, v in rest.items():
        torch.testing.assert_close(losses[k], v, rtol=1e-6, atol=1e-7)
    sum(losses.values()).backward()
    assert model.decoder.enc_score_head.weight.grad.abs().sum() > 0
    # the v1 criterion refuses a one-logit encoder head, naming it
    with pytest.raises(ValueError, match="enc_outputs"):
        v1(outputs, targets)


def test_bad_v2_options_are_refused():
    with pytest.raises(ValueError, match="query_select_method must be one of"):
        build_v2("tiny", query_select_method="one2many")
    with pytest.raises(ValueError, match="cross_attn_method must be one of"):
        build_v2("tiny", cross_attn_method="bilinear")
    with pytest.raises(ValueError, match="num_points"):
        build_v2("tiny", num_points=[4, 4])
    with pytest.raises(ValueError, match="eval_spatial_size"):
        build_v2("tiny", eval_spatial_size=[640])
    with pytest.raises(TypeError, match="num_point"):
        build_v2("tiny", num_point=4)  # a misspelt option is an error (keyword-only constructor)


def test_discrete_model_exports_to_onnx_without_grid_sample(tmp_path):
    """The point of discrete sampling: a graph without GridSample (TensorRT < 8.5), equal to PyTorch in ONNX Runtime,
    here with ragged points, a non-square input and the stored anchors of that size."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from neo_rtdetr.export import RTDETRDeployModel
    from neo_rtdetr.export.onnx_export import export_onnx, verify_onnx

    height, width = 64, 96
    model = _tiny(stored=(height, width), cross_attn_method="discrete", num_points=[2, 3, 4]).eval()
    deploy = RTDETRDeployModel(model)
    path = export_onnx(deploy, str(tmp_path / "dsp.onnx"), height, width, batch=2, opset=16)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert "GridSample" not in ops
    for result in verify_onnx(path, deploy, height, width, batches=(2,), threads=1):
        assert result.ok and result.label_mismatches == 0, result.summary()
