"""The RT-DETRv2 detector against HF transformers' ``RTDetrV2ForObjectDetection`` (same random weights, float64).

HF's v2 port computes the official v2 function (per-point offset scale buffer, offset_scale 0.5, "discrete" with the
width/height clamp already fixed) with the v1 differences of ``tests/modeling/hf_oracle.py`` (row-major position
embedding like ours, detached box chain: gradients only). One pair of models serves every test: the sampling method
and the denoising switch are read at run time by both implementations.
"""

import pytest
import torch

from neo_rtdetr.checkpoint.convert import reconcile_state_dict
from neo_rtdetr.checkpoint.hf_rtdetr_keys import convert_hf_rtdetr_state_dict
from neo_rtdetr.modeling.decoder.rtdetr_decoder import RTDETRTransformer

from ..modeling.hf_oracle import as_detectron2_batch, hf_loss_terms, hf_targets
from .rtdetrv2_helpers import build_v2

pytest.importorskip("transformers")
TOL = 1e-5
STORED = (320, 320)  # our eval_spatial_size: eval at exactly this size reads the anchor buffers


@pytest.fixture(scope="module")
def pair(hf_v2_r18_model):
    hf = hf_v2_r18_model
    ours = build_v2("r18", eval_spatial_size=list(STORED)).double()
    state, report = reconcile_state_dict(convert_hf_rtdetr_state_dict(hf.state_dict()), ours)
    ours.load_state_dict(state, strict=True)
    yield hf, ours, report
    _set_method(hf, ours, "default")
    hf.eval()


def _set_method(hf, ours, method):
    for layer in hf.model.decoder.layers:
        layer.encoder_attn.method = method
    for layer in ours.decoder.decoder.layers:
        layer.cross_attn.method = method


def _eval_compare(hf, ours, h, w, seed=0):
    hf.eval()
    ours.eval()
    x = torch.rand(1, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = hf(pixel_values=x)
        out = ours.forward_network(x)
    assert out["pred_logits"].shape == ref.logits.shape == (1, 300, 80)
    assert ref.logits.std() > 0.1 and ref.pred_boxes.std() > 0.01  # not a trivial comparison
    assert (out["pred_logits"] - ref.logits).abs().max().item() <= TOL
    assert (out["pred_boxes"] - ref.pred_boxes).abs().max().item() <= TOL
    return out


def test_conversion_fills_only_the_derived_buffers(pair):
    _, ours, report = pair
    # HF stores no anchors; everything else (incl. the n_points_scale buffers) comes from the HF weights
    assert sorted(report.derived) == ["decoder.anchors", "decoder.valid_mask"]
    assert not report.reinitialized
    renamed = {k for _, k in report.renamed}
    assert "encoder.input_proj.0.conv.weight" in renamed and "decoder.enc_output.proj.weight" in renamed


@pytest.mark.parametrize("hw", [STORED, (256, 384)], ids=["stored_size", "non_square"])
def test_eval_outputs_equal_hf(pair, hw, monkeypatch):
    hf, ours, _ = pair
    calls = []
    compute = RTDETRTransformer._generate_anchors  # the v1 implementation: computes (or reads its cache)

    def spy(self, *args, **kwargs):
        calls.append(args)
        return compute(self, *args, **kwargs)

    monkeypatch.setattr(RTDETRTransformer, "_generate_anchors", spy)
    _eval_compare(hf, ours, *hw)
    # the stored anchors serve their own size; any other size computes its own (no "eval size baked in")
    assert (len(calls) == 0) == (hw == STORED)


def test_discrete_sampling_equals_hf_on_a_non_square_input(pair):
    hf, ours, _ = pair
    _set_method(hf, ours, "discrete")
    try:
        discrete = _eval_compare(hf, ours, 256, 384, seed=1)
        _set_method(hf, ours, "default")
        with torch.no_grad():
            x = torch.rand(1, 3, 256, 384, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
            bilinear = ours.forward_network(x)
        assert (discrete["pred_logits"] - bilinear["pred_logits"]).abs().max() > 1e-3  # really another sampling
    finally:
        _set_method(hf, ours, "default")


def test_training_losses_equal_hf_without_denoising(pair):
    hf, ours, _ = pair
    hf.config.num_denoising = 0
    ours.decoder.num_denoising = 0
    hf.train()
    ours.train()
    try:
        x = torch.rand(2, 3, 256, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        labels = hf_targets([3, 5])
        ref = hf(pixel_values=x, labels=labels)
        losses = ours(as_detectron2_batch(x, labels))
    finally:
        hf.config.num_denoising = 100
        ours.decoder.num_denoising = 100
        hf.eval()
        ours.eval()
    L = 3
    hf_terms = hf_loss_terms(ref.loss_dict, L)
    assert set(hf_terms) == set(losses), (sorted(hf_terms), sorted(losses))
    assert len(losses) == 3 * (1 + (L - 1) + 1)
    for k in losses:
        assert abs(losses[k].item() - hf_terms[k].item()) <= 1e-6 * max(1.0, abs(hf_terms[k].item())), k
    assert abs(sum(losses.values()).item() - ref.loss.item()) <= 1e-6 * ref.loss.item()
