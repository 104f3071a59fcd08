"""ONNX export of the deployable RT-DETR (tools/export_onnx.py, neo_rtdetr/export)."""

import importlib.util
import os

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.config import LazyConfig, instantiate

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer  # noqa: E402
from neo_rtdetr.export import RTDETRDeployModel, check_export_size  # noqa: E402
from neo_rtdetr.export.onnx_export import (  # noqa: E402
    BOX_ATOL_REL,
    SCORE_ATOL,
    compare_detections,
    create_session,
    export_onnx,
    onnx_io_shapes,
    run_onnxruntime,
    verify_onnx,
)
from neo_rtdetr.modeling.encoder.csp_rep import RepVggBlock  # noqa: E402

CONFIG = "configs/rtdetr_tiny_synthetic_demo.py"
PHOTO = os.path.abspath("tests/assets/coco_val2017_000000039769.png")


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make every part of the random-init model data-dependent: the official init zeroes the last box-head
    layers and the deformable-attention offset/weight projections (boxes would be the anchors, sampling
    fixed), gives all classes nearly the same score, and fresh BN statistics make the RepVgg fusion trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and float(p.abs().max()) == 0.0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        # spread the class logits (the init gives near-equal scores, whose top-k order is arbitrary)
        for name, p in model.named_parameters():
            if "score_head" in name and name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            m.weight.copy_(1.0 + 0.1 * torch.randn(m.num_features, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        # calibrate the BN statistics on random images, as training would: without it the eval-mode activations
        # shrink layer after layer and the outputs hardly depend on the image
        model.eval()
        for m in bns:
            m.train()
        x = torch.rand(4, 3, 64, 96, generator=g)
        model.forward_network((x * 255 - model.pixel_mean) / model.pixel_std)
        for m in bns:
            m.momentum = 0.1
    return model.eval()


def _tiny_model(**overrides) -> nn.Module:
    cfg = LazyConfig.load(CONFIG)
    for k, v in overrides.items():
        setattr(cfg.model, k, v)
    torch.manual_seed(0)
    model = _randomize(instantiate(cfg.model))
    assert model.num_classes == 6
    return model


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny_model()


def _load_tool():
    spec = importlib.util.spec_from_file_location("export_onnx_tool", os.path.abspath("tools/export_onnx.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------- deploy model
@pytest.mark.parametrize(
    "pixel", [dict(), dict(input_format="BGR", pixel_mean=(103.5, 116.3, 123.7), pixel_std=(57.4, 57.1, 58.4))]
)
def test_deploy_model_matches_detectron2_inference(pixel):
    """[0, 1] RGB in, (labels, xyxy pixel boxes, scores) out == RTDETR's Detectron2 inference on the uint8 image
    (any pixel_mean/std / input_format), with the RepVgg blocks fused in a copy."""
    model = _tiny_model(**pixel)
    deploy = RTDETRDeployModel(model)
    fused = [b for b in deploy.model.modules() if isinstance(b, RepVggBlock)]
    assert fused and all(b.deployed for b in fused)
    assert not any(b.deployed for b in model.modules() if isinstance(b, RepVggBlock))  # the original is untouched
    g = torch.Generator().manual_seed(3)
    rgb = torch.randint(0, 256, (2, 3, 96, 160), generator=g, dtype=torch.uint8)
    orig = [(150, 250), (96, 320)]  # (h, w) the detections are mapped to
    inputs = []
    for img, (h, w) in zip(rgb, orig):
        image = img.flip(0) if pixel.get("input_format") == "BGR" else img
        inputs.append({"image": image, "height": h, "width": w})
    with torch.no_grad():
        expected = model(inputs)
        sizes = torch.tensor([[w, h] for h, w in orig], dtype=torch.float32)
        labels, boxes, scores = deploy(rgb.float() / 255.0, sizes)
    assert labels.dtype == torch.int64 and labels.shape == (2, 50) and boxes.shape == (2, 50, 4)
    for i, (h, w) in enumerate(orig):
        inst = expected[i]["instances"]
        assert len(inst) == 50
        # detector_postprocess clips; the deploy output does not (official)
        clipped = torch.min(boxes[i].clamp(min=0), torch.tensor([w, h, w, h], dtype=torch.float32))
        assert not torch.equal(clipped, boxes[i])  # some boxes do cross the border: the clip is exercised
        ref = (inst.pred_classes[None], inst.pred_boxes.tensor[None], inst.scores[None])
        # the RepVgg fusion reorders float32 sums like another runtime does: same tolerances as for ONNX
        res = compare_detections(ref, (labels[i : i + 1], clipped[None], scores[i : i + 1]), [[w, h]])
        assert res.ok and res.tie_swaps <= 2, res.summary()
        assert float(scores[i].max() - scores[i].min()) > 0.03  # scores are spread: the order is meaningful
        assert float(boxes[i].std()) > 1.0  # boxes are data-dependent, not collapsed


def test_check_export_size_suggests_next_multiple():
    check_export_size(1088, 1920)
    check_export_size(640, 640)
    with pytest.raises(ValueError, match="1080 -> 1088"):
        check_export_size(1080, 1920)
    with pytest.raises(ValueError, match="width 650 -> 672"):
        check_export_size(640, 650)


# ----------------------------------------------------------------------------------------------- export
def _assert_dynamic_batch(path, height, width):
    shapes = onnx_io_shapes(path)
    assert set(shapes) == {"images", "orig_target_sizes", "labels", "boxes", "scores"}
    assert isinstance(shapes["images"][0], str) and shapes["images"][1:] == [3, height, width]
    assert isinstance(shapes["orig_target_sizes"][0], str) and shapes["orig_target_sizes"][1:] == [2]
    for name in ("labels", "boxes", "scores"):
        assert isinstance(shapes[name][0], str), (name, shapes[name])  # dynamic batch, not baked in
        assert shapes[name][1] == 50, (name, shapes[name])  # static top-k
    assert shapes["boxes"][2] == 4


def test_export_dynamic_batch_matches_pytorch(tiny_model, tmp_path):
    height, width = 128, 128
    deploy = RTDETRDeployModel(tiny_model)
    with torch.no_grad():
        x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(5))
        sizes = torch.tensor([[width, height], [2 * width, height]], dtype=torch.float32)
        before = deploy(x, sizes)
    path = export_onnx(deploy, str(tmp_path / "m.onnx"), height, width, batch=2, opset=17)

    _assert_dynamic_batch(path, height, width)
    import onnx

    onnx.checker.check_model(path)

    # the export left the eager model (and its anchor / position-embedding caches) intact
    with torch.no_grad():
        after = deploy(x, sizes)
    for a, b in zip(before, after):
        assert torch.equal(a, b)

    sess = create_session(path, threads=2)
    results = verify_onnx(sess, deploy, height, width, batches=(1, 3))
    assert [r.batch for r in results] == [1, 3]
    for r in results:
        assert r.ok, r.summary()
        assert r.label_mismatches == 0

    # direct check at batch 3, with per-image sizes
    x3 = torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(9))
    s3 = torch.tensor([[width, height], [640, 480], [1920, 1080]], dtype=torch.float32)
    with torch.no_grad():
        ref = deploy(x3, s3)
    got = run_onnxruntime(sess, x3.numpy(), s3.numpy())
    assert got[0].dtype == np.int64 and got[0].shape == (3, 50)
    assert got[1].dtype == np.float32 and got[1].shape == (3, 50, 4) and got[2].shape == (3, 50)
    np.testing.assert_allclose(got[2], ref[2].numpy(), atol=SCORE_ATOL, rtol=0)  # sorted: robust to tie swaps
    res = compare_detections(ref, got, s3)
    assert res.ok and res.tie_swaps <= 2, res.summary()
    # the numbers the tolerances rest on (see onnx_export.py): well inside them
    assert res.scores_max_abs < SCORE_ATOL / 4 and res.boxes_max_rel < BOX_ATOL_REL / 10, res.summary()
    # boxes follow each image's own size
    assert float(got[1][2].max()) > 300 and float(got[1][0].max()) <= 2 * width
    # and the comparison has teeth: BGR-swapped inputs are reported as a mismatch
    bad = run_onnxruntime(sess, x3.flip(1).numpy(), s3.numpy())
    assert not compare_detections(ref, bad, s3).ok


def test_size_caches_stay_real_under_torch_export():
    """torch.export (the first step of the dynamo ONNX exporter) traces with fake tensors: the AIFI
    position-embedding cache and the decoder's anchor cache must neither keep nor serve them."""
    from neo_rtdetr.modeling.decoder.rtdetr_decoder import RTDETRTransformer
    from neo_rtdetr.modeling.encoder import position_embedding as pe

    decoder = RTDETRTransformer(num_classes=3, hidden_dim=32, num_queries=4, feat_channels=(32,), feat_strides=(8,),
                                num_levels=1, nhead=4, num_layers=1, dim_feedforward=32, num_denoising=0).eval()

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = decoder

        def forward(self, x):
            h, w = x.shape[-2:]
            pos = pe.build_2d_sincos_position_embedding(h, w, 32, 10000.0, device=x.device, dtype=x.dtype)
            anchors, valid = self.decoder._generate_anchors([(h, w)], device=x.device)
            return x.flatten(2).transpose(1, 2) + pos, torch.where(valid, anchors, torch.zeros_like(anchors))

    probe = Probe()
    x = torch.randn(2, 32, 3, 5)
    pe._cached.cache_clear()
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(probe, (x,), dynamic_shapes=({0: batch},), strict=False)
    assert pe._cached.cache_info().currsize == 0 and len(decoder._anchor_cache) == 0  # nothing cached while tracing
    eager = probe(x)
    assert all(type(t) is torch.Tensor for t in eager)  # real tensors, not fakes left in a cache
    expected_pos = pe._compute(3, 5, 32, 10000.0)
    torch.testing.assert_close(eager[0], x.flatten(2).transpose(1, 2) + expected_pos, atol=0, rtol=0)
    exported = program.module()(torch.cat([x, x]))
    torch.testing.assert_close(exported[0], torch.cat([eager[0], eager[0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(exported[1], eager[1], atol=1e-6, rtol=0)
    assert pe._cached.cache_info().currsize == 1 and len(decoder._anchor_cache) == 1  # eager calls still cache


# ------------------------------------------------------------------------------------------- comparison
def test_compare_detections_accepts_tie_swaps_only():
    labels = np.array([[1, 2, 3, 4]])
    boxes = np.array([[[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2], [3, 3, 9, 9]]], dtype=np.float32)
    scores = np.array([[0.9, 0.5, 0.5003, 0.1]], dtype=np.float32)
    sizes = np.array([[100.0, 50.0]])
    ref = (labels, boxes, scores)
    assert compare_detections(ref, ref, sizes).ok

    # positions 1 and 2 have scores tied within SCORE_ATOL (5e-4): swapped order is fine
    swapped = (labels[:, [0, 2, 1, 3]], boxes[:, [0, 2, 1, 3]], scores[:, [0, 2, 1, 3]])
    res = compare_detections(ref, swapped, sizes)
    assert res.ok and res.tie_swaps == 2 and res.label_mismatches == 0 and res.cutoff_ties == 0

    # a swap of clearly different scores, a wrong label, a moved box or a score error are failures
    order = [1, 0, 2, 3]
    assert not compare_detections(ref, (labels[:, order], boxes[:, order], scores[:, order]), sizes).ok
    assert compare_detections(ref, (labels + np.array([[1, 0, 0, 0]]), boxes, scores), sizes).label_mismatches == 1
    # the last detection ties with the top-k cut-off: another one of the same score may replace it
    res = compare_detections(ref, (labels + np.array([[0, 0, 0, 1]]), boxes, scores), sizes)
    assert res.ok and res.cutoff_ties == 1 and res.tie_swaps == 0

    moved = boxes.copy()
    moved[0, 0, 2] += 0.5  # 0.5 px of a 100 px wide image = 5e-3 > 1e-4
    assert not compare_detections(ref, (labels, moved, scores), sizes).ok
    assert compare_detections(ref, (labels, boxes + 0.003, scores), sizes).ok  # 6e-5 of the image side
    assert not compare_detections(ref, (labels, boxes, scores + np.float32(1e-3)), sizes).ok
    assert compare_detections(ref, (labels, boxes, scores + np.float32(2e-4)), sizes).ok

    # all scores tied (e.g. an untrained model): at most max(2, k/10) cut-off replacements are accepted, so two
    # unrelated outputs do not pass
    k = 40
    flat = np.full((1, k), 0.01, dtype=np.float32)
    rng = np.random.default_rng(0)
    a = (rng.integers(0, 6, (1, k)), rng.uniform(0, 50, (1, k, 4)).astype(np.float32), flat)
    b = (rng.integers(0, 6, (1, k)), rng.uniform(0, 50, (1, k, 4)).astype(np.float32), flat)
    res = compare_detections(a, b, sizes)
    assert not res.ok and res.cutoff_ties == 4 and res.label_mismatches == k - 4


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_exports_and_verifies_non_square(tiny_model, tmp_path, capsys, monkeypatch):
    ckpt_dir = tmp_path / "ckpt"
    RTDETRCheckpointer(tiny_model, str(ckpt_dir)).save("model")
    tool = _load_tool()
    out = tmp_path / "tiny_96x160.onnx"
    rc = tool.main([
        "--config-file", CONFIG, "--checkpoint", str(ckpt_dir / "model.pth"), "--output", str(out),
        "--size", "96", "160", "--batch", "2", "--check-batches", "3", "1", "--image", PHOTO,
    ])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    assert "batch 3: labels equal" in captured.out and "batch 1: labels equal" in captured.out
    assert "max abs difference" in captured.out
    _assert_dynamic_batch(str(out), 96, 160)

    # a graph that does not match the PyTorch model fails the check (exit 1): verify the file against other
    # (random) weights, the export itself skipped
    import neo_rtdetr.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "export_onnx", lambda model, path, *a, **k: path)
    torch.manual_seed(123)
    rc = tool.main(["--config-file", CONFIG, "--output", str(out), "--size", "96", "160", "--check-batches", "1"])
    captured = capsys.readouterr()
    assert rc == 1, captured.out + captured.err[-2000:]
    assert "FAIL" in captured.out and "differ from PyTorch" in captured.err


def test_cli_rejects_bad_sizes(tmp_path, capsys):
    tool = _load_tool()
    rc = tool.main(["--config-file", CONFIG, "--output", str(tmp_path / "x.onnx"), "--size", "1080", "1920"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "height 1080 -> 1088" in err and "multiples of 32" in err
    assert not (tmp_path / "x.onnx").exists()
