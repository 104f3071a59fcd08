"""Converting official rtdetrv2_pytorch (``ema.module``) and Hugging Face RT-DETRv2 weights
(tools/convert_checkpoint.py).

Official files are simulated in the official v2 layout (our v2 model's state dict, whose names are checked against
the documented official ones in test_rtdetrv2_decoder.py) and in the v1-named variant; Hugging Face folders with a
random-weight ``RTDetrV2ForObjectDetection`` saved by ``save_pretrained``.
"""

import copy
import json
import os
import shutil

import pytest
import torch

from neo_rtdetr.checkpoint.convert import convert_checkpoint, reconcile_state_dict, verify_detectron2_checkpoint

from ..checkpoint.test_convert_checkpoint import _tool_main
from .rtdetrv2_helpers import build_v2, randomize_v2

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_V2 = os.path.join(REPO, "projects/RTDETRv2/configs/models/rtdetrv2_tiny.py")
R18_V2 = os.path.join(REPO, "projects/RTDETRv2/configs/models/rtdetrv2_r18.py")


@pytest.fixture(scope="module")
def official_v2(tmp_path_factory):
    """An official-layout v2 solver file of the tiny model: ``ema.module`` (sd_ema) differs from ``model``."""
    folder = tmp_path_factory.mktemp("official_v2")
    model = build_v2("tiny")
    randomize_v2(model, seed=1)
    sd_model = {k: v.clone() for k, v in model.state_dict().items()}
    randomize_v2(model, seed=2)
    sd_ema = {k: v.clone() for k, v in model.state_dict().items()}
    path = str(folder / "rtdetrv2_tiny_ema.pth")
    torch.save({"model": sd_model, "ema": {"module": sd_ema, "updates": 7, "warmups": 2000}, "last_epoch": 119}, path)
    return dict(path=path, sd_ema=sd_ema, folder=folder)


def test_official_v2_ema_file_converts_with_the_tool(official_v2, tmp_path, capsys):
    out = tmp_path / "out" / "tiny_v2.pth"
    rc = _tool_main(["--source", "official", "--input", official_v2["path"], "--config-file", TINY_V2,
                     "--output", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "[ema.module (EMA weights)], 80 classes" in stdout and "derived buffers" not in stdout
    raw = torch.load(str(out), map_location="cpu", weights_only=True)["model"]
    assert set(raw) == set(official_v2["sd_ema"])
    for k, v in official_v2["sd_ema"].items():
        assert torch.equal(raw[k], v), k
    model = build_v2("tiny")
    verify_detectron2_checkpoint(str(out), model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, official_v2["sd_ema"][k]), k


def test_v1_names_missing_buffers_and_other_anchor_sizes_are_bridged(official_v2):
    sd = official_v2["sd_ema"]
    model = build_v2("tiny")
    # the same weights with v1 child names, without the derived v2 buffers (an official v1 / HF-like layout)
    v1_named = {}
    for k, v in sd.items():
        if k in ("decoder.anchors", "decoder.valid_mask") or k.endswith("num_points_scale"):
            continue
        k = k.replace(".conv.", ".0.").replace(".norm.", ".1.") if k.startswith("encoder.input_proj.") else k
        k = k.replace("enc_output.proj.", "enc_output.0.").replace("enc_output.norm.", "enc_output.1.")
        v1_named[k] = v
    state, report = reconcile_state_dict(v1_named, model)
    assert set(state) == set(sd)
    for k in sd:
        assert torch.equal(state[k], sd[k]), k
    assert len(report.renamed) == 3 * 6 + 4  # 3 levels x (conv weight + 5 BN entries), enc_output Linear + LayerNorm
    assert sorted(report.derived) == ["decoder.anchors", "decoder.decoder.layers.0.cross_attn.num_points_scale",
                                      "decoder.decoder.layers.1.cross_attn.num_points_scale", "decoder.valid_mask"]
    # anchors stored for another eval size (e.g. a 1088 x 1920 run) are replaced by the model's own
    other = dict(sd, **{"decoder.anchors": torch.zeros(1, 42, 4), "decoder.valid_mask": torch.ones(1, 42, 1).bool()})
    state, report = reconcile_state_dict(other, model)
    assert torch.equal(state["decoder.anchors"], model.state_dict()["decoder.anchors"])
    assert sorted(report.derived) == ["decoder.anchors", "decoder.valid_mask"]


def test_anchors_of_a_transposed_eval_size_are_replaced_by_the_models():
    """[160, 128] and [128, 160] anchors have the same shape but other values: the model's own are kept."""
    source, target = build_v2("tiny", eval_spatial_size=[160, 128]), build_v2("tiny", eval_spatial_size=[128, 160])
    sd, own = source.state_dict(), target.state_dict()
    assert sd["decoder.anchors"].shape == own["decoder.anchors"].shape
    assert not torch.equal(sd["decoder.anchors"], own["decoder.anchors"])
    state, report = reconcile_state_dict(sd, target)
    assert torch.equal(state["decoder.anchors"], own["decoder.anchors"])
    assert torch.equal(state["decoder.valid_mask"], own["decoder.valid_mask"])
    assert "decoder.anchors" in report.derived and "derived buffers" in str(report)
    # anchors of the same eval size are the model's too, and not reported
    _, same = reconcile_state_dict(own, target)
    assert same.derived == [] and str(same) == "exact match"


def test_other_points_per_level_with_the_same_total_are_refused(official_v2):
    """[2, 4, 6] and [4, 4, 4] have the same offset shapes; only num_points_scale tells them apart."""
    model = build_v2("tiny", num_points=[2, 4, 6])
    with pytest.raises(ValueError, match=r"points per level \[4, 4, 4\] vs model \[2, 4, 6\]"):
        convert_checkpoint("official", official_v2["path"], model)


def test_agnostic_checkpoint_reports_its_real_class_count(tmp_path):
    model = build_v2("tiny", query_select_method="agnostic")
    path = str(tmp_path / "agnostic.pth")
    torch.save({"ema": {"module": model.state_dict()}}, path)
    _, report = convert_checkpoint("official", path, build_v2("tiny", query_select_method="agnostic"))
    assert report.checkpoint_num_classes == 80  # not the 1 row of the agnostic encoder head


@pytest.fixture(scope="module")
def hf_v2_folder(hf_v2_r18_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_v2_r18")
    hf = copy.deepcopy(hf_v2_r18_model).float().eval()
    hf.save_pretrained(str(folder))
    return folder


def test_hf_v2_folder_converts_to_the_same_outputs(hf_v2_folder, hf_v2_r18_model, tmp_path, capsys):
    assert json.load(open(hf_v2_folder / "config.json"))["model_type"] == "rt_detr_v2"
    out = tmp_path / "rtdetrv2_r18.pth"
    rc = _tool_main(["--source", "hf", "--input", str(hf_v2_folder), "--config-file", R18_V2, "--output", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "[model.safetensors], 80 classes" in stdout
    assert "took 2 derived buffers from the model: decoder.anchors, decoder.valid_mask" in stdout
    assert "matched 22 keys between the v1 (.0/.1) and v2" in stdout  # 3 x 6 encoder input_proj + 4 enc_output
    ours = build_v2("r18")
    verify_detectron2_checkpoint(str(out), ours)
    ours.double().eval()
    x = torch.rand(1, 3, 160, 224, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        ref = hf_v2_r18_model.eval()(pixel_values=x)
        got = ours.forward_network(x)
    assert ref.logits.std() > 0.1
    # the saved weights are float32 roundings of the float64 oracle's
    torch.testing.assert_close(got["pred_logits"], ref.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(got["pred_boxes"], ref.pred_boxes, rtol=0, atol=1e-4)


def test_hf_v2_config_disagreeing_with_the_model_is_refused(hf_v2_folder, tmp_path):
    folder = tmp_path / "discrete"
    shutil.copytree(hf_v2_folder, folder)
    cfg = json.load(open(folder / "config.json"))
    cfg["decoder_method"] = "discrete"
    json.dump(cfg, open(folder / "config.json", "w"))
    with pytest.raises(ValueError, match="does not match the model config") as e:
        convert_checkpoint("hf", str(folder), build_v2("r18"))
    assert "decoder_method: HF 'discrete' vs model 'default' (decoder.cross_attn_method)" in str(e.value)
    # a discrete-sampling model takes it (same weights as any sampling method)
    state, _ = convert_checkpoint("hf", str(folder), build_v2("r18", cross_attn_method="discrete"))
    assert state["decoder.decoder.layers.0.cross_attn.num_points_scale"].eq(0.25).all()

    cfg["decoder_method"], cfg["decoder_n_points"] = "default", 3
    json.dump(cfg, open(folder / "config.json", "w"))
    with pytest.raises(ValueError, match=r"decoder_n_points: HF 3 vs model 4 \(decoder.num_points\)"):
        convert_checkpoint("hf", str(folder), build_v2("r18"))


def test_stored_anchors_convert_into_a_model_without_an_eval_size():
    """A model with eval_spatial_size=None has no anchor buffers (it computes anchors per input size): the stored
    ones are left out and reported, not refused as unexpected keys."""
    source, target = build_v2("tiny", eval_spatial_size=[160, 128]), build_v2("tiny", eval_spatial_size=None)
    assert "decoder.anchors" not in target.state_dict()
    state, report = reconcile_state_dict(source.state_dict(), target)
    assert set(state) == set(target.state_dict())
    assert {"decoder.anchors", "decoder.valid_mask"} <= set(report.derived)
    target.load_state_dict(state, strict=True)
