"""GPU-only checks (marked `gpu`; CI deselects them, run on a GPU machine with `pytest -m gpu`)."""

import pytest
import torch

from detectron2.config import LazyConfig, instantiate

from neo_rtdetr.data.dataset_mapper import RTDETRDatasetMapper

pytestmark = pytest.mark.gpu


def _model(name="r50"):
    torch.manual_seed(0)
    return instantiate(LazyConfig.load(f"configs/common/models/rtdetr_{name}.py").model).cuda()


def test_bf16_inference_matches_fp32_features():
    """bf16 autocast changes the backbone+encoder features by no more than bf16 rounding allows.

    (Detections of a randomly initialised model are near-ties, so they are not compared here; the
    benchmark compares trained detections.)
    """
    model = _model().eval()
    x = [{"image": torch.randint(0, 256, (3, 640, 640), dtype=torch.uint8, device="cuda")} for _ in range(2)]
    images = model.preprocess_image(x).tensor
    with torch.no_grad():
        feats = [model.backbone(images)[k] for k in ("res3", "res4", "res5")]
        ref = model.encoder(feats)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast = model.encoder([model.backbone(images)[k] for k in ("res3", "res4", "res5")])
            out = model.forward_network(images)
    for a, b in zip(ref, fast):
        rel = (a - b.float()).norm() / a.norm()
        assert rel < 0.05, rel
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_boxes"]).all()


def test_bf16_training_step_on_cuda():
    from tests.modeling.test_rtdetr import make_inputs

    model = _model("r18").train()
    batch = make_inputs([(640, 640)] * 4, [3, 0, 12, 1], num_classes=80)
    for b in batch:
        b["image"] = b["image"].cuda()
        b["instances"] = b["instances"].to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = model(batch)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------------------- performance paths
@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
def test_triton_msda_matches_reference_on_cuda(value_dtype):
    """The fused kernels vs the grid_sample reference at R50 sizes (3 levels, 8 heads, 4 points), fwd and bwd."""
    from neo_rtdetr.modeling.decoder.ms_deform_attn import multi_scale_deformable_attention as ref
    from neo_rtdetr.modeling.decoder.ms_deform_attn_triton import ms_deform_attn_triton as tri

    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(80, 64), (40, 32), (20, 16)]  # non-square
    B, nH, Dh, Q, L, P = 4, 8, 32, 500, 3, 4
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, nH, Dh, device="cuda", generator=g).to(value_dtype).requires_grad_()
    loc = (torch.rand(B, Q, nH, L, P, 2, device="cuda", generator=g) * 1.2 - 0.1).requires_grad_()
    w = torch.rand(B, Q, nH, L, P, device="cuda", generator=g).softmax(-1).requires_grad_()
    out = tri(value, shapes, loc, w)
    gout = torch.randn(out.shape, device="cuda", generator=g).to(out.dtype)
    grads = torch.autograd.grad(out, (value, loc, w), gout)
    v64, l64, w64 = (t.detach().double().requires_grad_() for t in (value, loc, w))
    r = ref(v64, shapes, l64, w64)
    rgrads = torch.autograd.grad(r, (v64, l64, w64), gout.double())
    rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
    tol = 1e-2 if value_dtype == torch.bfloat16 else 1e-5
    assert rel(out, r) < tol
    assert rel(grads[0], rgrads[0]) < tol and rel(grads[1], rgrads[1]) < 1e-4 and rel(grads[2], rgrads[2]) < 1e-4


def test_triton_and_reference_cores_give_the_same_training_losses():
    from neo_rtdetr.modeling.decoder.ms_deform_attn import multi_scale_deformable_attention
    from tests.modeling.test_rtdetr import make_inputs

    model = _model("r18").train()
    batch = make_inputs([(320, 320)] * 2, [3, 5], num_classes=80)
    for b in batch:
        b["image"] = b["image"].cuda()
    torch.manual_seed(1)
    fast = model(batch)
    for layer in model.decoder.decoder.layers:
        layer.cross_attn.ms_deformable_attn_core = multi_scale_deformable_attention
    torch.manual_seed(1)
    ref = model(batch)
    for k in ref:
        assert abs(float(fast[k]) - float(ref[k])) <= 1e-4 * max(1.0, abs(float(ref[k]))), k


def test_fast_inference_cuda_graphs_replay_the_eager_result():
    from neo_rtdetr.engine.fast_inference import FastInference

    model = _model("r50").eval()
    fast = FastInference(model, dtype=torch.bfloat16, max_graphs=2)
    x = [{"image": torch.randint(0, 256, (3, 640, 640), dtype=torch.uint8, device="cuda")} for _ in range(2)]
    images = fast.net.preprocess_image(x).tensor
    eager = fast._network(images)  # the same deployed bf16 network, without graphs
    for _ in range(2):  # capture, then replay
        graphed = fast.run_network(images)
        for a, b in zip(eager, graphed):
            assert torch.equal(a, b)
    # another shape gets its own graph; the LRU keeps max_graphs
    for hw in ((480, 640), (320, 320)):
        xs = [{"image": torch.randint(0, 256, (3, *hw), dtype=torch.uint8, device="cuda")}]
        out = fast(xs)
        assert out[0]["instances"].image_size == hw
    assert len(fast._graphs) == 2


def test_compiled_fast_inference_gives_the_same_detections():
    """FastInference(compile=True) (inductor kernels inside the CUDA graph) vs the uncompiled FastInference, fp32:
    the same top detections (the order of near-ties may differ) and the same sorted scores."""
    from neo_rtdetr.engine.fast_inference import FastInference
    from neo_rtdetr.utils.detection_agreement import detection_agreement

    model = _model("r18").eval()
    x = [{"image": torch.randint(0, 256, (3, 640, 640), dtype=torch.uint8, device="cuda")} for _ in range(2)]
    ref = FastInference(model, dtype=torch.float32)(x)
    compiled = FastInference(model, dtype=torch.float32, compile=True)
    for _ in range(2):  # compile + capture, then replay
        got = compiled(x)
    for r, g in zip(ref, got):
        r, g = r["instances"], g["instances"]
        torch.testing.assert_close(g.scores.sort().values, r.scores.sort().values, rtol=0, atol=1e-3)
        assert detection_agreement(r, g, top_k=100, iou_threshold=0.9, score_tolerance=1e-3) >= 0.95


def test_to_device_is_asynchronous_and_exact():
    """Host tensors reach the GPU through pinned memory without a stream synchronisation."""
    from neo_rtdetr.utils.host_to_device import to_device

    torch.cuda.synchronize()
    a = torch.randn(4096, 4096, device="cuda")
    busy = a @ a  # queue GPU work
    for _ in range(10):
        busy = busy @ a
    host = torch.arange(1000, dtype=torch.int64)
    event = torch.cuda.Event()
    event.record()
    out = to_device(host, torch.device("cuda"), torch.int32)
    assert not event.query()  # the matrix products were still running: the copy did not wait for them
    torch.cuda.synchronize()
    assert out.dtype == torch.int32 and torch.equal(out.cpu(), host.to(torch.int32))


@pytest.mark.parametrize("mode", ["reduce-overhead"])
def test_compiled_training_computes_the_eager_gradients(mode, monkeypatch):
    """compile_model(decoder=True, criterion=True) (inductor on CUDA; ``reduce-overhead``: CUDA graphs) against the
    eager model, fp32 without TF32, over AdamW steps at two alternating input sizes. Before every step the compiled
    model gets the eager model's weights (copied in place, as an optimizer writes them), so each step compares the
    gradients of the same weights: a graph that kept stale parameters or buffers, or that mixed up the two sizes'
    recordings, would give other gradients. Not bit-equal (inductor reorders float sums): same losses within 1e-3,
    gradients within 1e-2 relative norm, cosine (in float64) > 0.9999. (Without the weight copy, two fp32 trainings
    drift apart from rounding alone: the top-k query selection and the matching are discrete, see docs/performance.md,
    runs J-M.)"""
    import copy

    from neo_rtdetr.engine.compile import compile_model
    from tests.modeling.test_rtdetr import make_inputs

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # (restored after the test)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)  # the tiny model (R18 backbone, narrow 2-layer decoder): minutes less to compile than R18
    eager = instantiate(LazyConfig.load("configs/common/models/rtdetr_tiny.py").model).cuda().train()
    compiled = copy.deepcopy(eager)
    compile_model(compiled, decoder=True, criterion=True, mode=mode)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (eager, compiled)]
    sizes = [(256, 256), (320, 256), (256, 256), (320, 256), (256, 256)]
    for step, (h, w) in enumerate(sizes):
        batch = make_inputs([(h, w)] * 2, [3, 5 + step], num_classes=80, seed=step)
        for b in batch:
            b["image"] = b["image"].cuda()
        with torch.no_grad():
            compiled.load_state_dict(eager.state_dict())
        results = []
        for model, opt in zip((eager, compiled), opts):
            torch.compiler.cudagraph_mark_step_begin()
            torch.manual_seed(100 + step)
            losses = model(copy.deepcopy(batch))
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()
            opt.step()
            results.append(({k: float(v.detach()) for k, v in losses.items()}, grads))
        (ref, ref_grad), (got, got_grad) = results
        for k in ref:
            assert abs(got[k] - ref[k]) <= 1e-3 * max(1.0, abs(ref[k])), (step, k, got[k], ref[k])
        rel = float((got_grad - ref_grad).norm() / ref_grad.norm())
        cosine = float(torch.nn.functional.cosine_similarity(got_grad, ref_grad, dim=0))
        assert rel < 1e-2 and cosine > 0.9999, (step, rel, cosine)


class _ConstantImageMapper(RTDETRDatasetMapper):
    """No files: a constant 32x32 image whose value is the image id."""

    def _read_image(self, dataset_dict):
        return torch.full((32, 32, 3), dataset_dict["image_id"], dtype=torch.uint8).numpy()


def test_packed_batches_arrive_pinned_through_the_loader():
    """With CUDA the train loader pins each worker's packed batch once: every tensor of the batch is a pinned view."""
    from detectron2.data import transforms as T

    from neo_rtdetr.data.build import build_rtdetr_train_loader

    dicts = [{"file_name": f"{i}.png", "image_id": i, "height": 32, "width": 32, "annotations": [
        {"bbox": [4.0, 4.0, 10.0, 12.0], "bbox_mode": 1, "category_id": 0, "iscrowd": 0}]} for i in range(4)]
    loader = build_rtdetr_train_loader(dataset=dicts, mapper=_ConstantImageMapper(is_train=True,
                                       augmentations=[T.Resize((32, 32))]), total_batch_size=2, num_workers=1, seed=0)
    batch = next(iter(loader))
    tensors = [t for d in batch for t in (d["image"], d["instances"].gt_classes, d["instances"].gt_boxes.tensor)]
    assert all(t.is_pinned() for t in tensors)
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
    assert [int(d["image"][0, 0, 0]) for d in batch] == [d["image_id"] for d in batch]
