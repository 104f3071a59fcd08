"""tools/convert_checkpoint.py and the conversion library (neo_rtdetr.checkpoint.convert).

Official files are simulated with our own randomly initialised models (same key layout); Hugging
Face folders with a random-weight ``RTDetrForObjectDetection`` saved by ``save_pretrained``.
"""

import argparse
import copy
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer

from neo_rtdetr.checkpoint.convert import (
    CLASS_DEPENDENT_KEYS,
    CONVERTER_AUTHOR,
    build_model_from_config,
    convert_checkpoint,
    save_detectron2_checkpoint,
)

from ..modeling.hf_oracle import build_hf_detector, build_ours, randomize

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "convert_checkpoint.py")
TINY = "configs/common/models/rtdetr_tiny.py"
R18 = "configs/common/models/rtdetr_r18.py"
R50 = "configs/common/models/rtdetr_r50.py"


def _run_tool(*args):
    return subprocess.run(
        [sys.executable, TOOL, *args], cwd=REPO, capture_output=True, text=True, timeout=240
    )


def _tool_main(argv):
    """tools/convert_checkpoint.py's main() in this process (saves the interpreter start-up of a subprocess)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_convert_checkpoint_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main(argv)


def _d2_incompatible(model, path):
    """What DetectionCheckpointer.load does (read the file, load the model), keeping the result it only logs."""
    checkpointer = DetectionCheckpointer(model)
    return checkpointer._load_model(checkpointer._load_file(path))


def _assert_clean(incompatible):
    assert incompatible.missing_keys == []
    assert incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []


def _assert_state_equal(model, expected, keys=None):
    current = model.state_dict()
    for k in keys if keys is not None else expected:
        assert torch.equal(current[k], expected[k]), k


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny model + official-style files: EMA file (sd_b != sd_a) and a 'model'-only file with a non-tensor object."""
    folder = tmp_path_factory.mktemp("official")
    model = build_ours("tiny")
    randomize(model, seed=1)
    sd_a = {k: v.clone() for k, v in model.state_dict().items()}
    randomize(model, seed=2)
    sd_b = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(sd_a["decoder.enc_score_head.weight"], sd_b["decoder.enc_score_head.weight"])
    ema_file = str(folder / "ema.pth")
    torch.save({"model": sd_a, "ema": {"module": sd_b, "updates": 5}, "last_epoch": 71}, ema_file)
    model_only = str(folder / "model_only.pth")
    # like an official solver file that also pickled its argparse namespace: weights_only=True refuses it
    torch.save({"model": sd_a, "args": argparse.Namespace(epochs=72)}, model_only)
    return dict(model=model, sd_a=sd_a, sd_b=sd_b, ema_file=ema_file, model_only=model_only, folder=folder)


@pytest.fixture(scope="module")
def hf_r18(tmp_path_factory):
    """A random-weight HF r18 in fp32, saved with save_pretrained, and our r18 model converted from it."""
    folder = tmp_path_factory.mktemp("hf_r18")
    hf = build_hf_detector("r18", seed=3).float().eval()
    hf.save_pretrained(str(folder))
    ours = build_ours("r18")
    state, report = convert_checkpoint("hf", str(folder), ours)
    return dict(hf=hf, folder=folder, ours=ours, state=state, report=report)


# ------------------------------------------------------------------------------------------- (a)
def test_official_ema_preferred_and_loads_with_detection_checkpointer(tiny, tmp_path, caplog):
    model, sd_b = tiny["model"], tiny["sd_b"]
    state, report = convert_checkpoint("official", tiny["ema_file"], model)
    assert report.origin.startswith("ema.module") and not report.unsafe_pickle
    assert report.checkpoint_num_classes == 80 and not report.reinitialized
    assert set(state) == set(model.state_dict())
    for k in state:
        assert torch.equal(state[k], sd_b[k]), k

    out = save_detectron2_checkpoint(state, str(tmp_path / "model.pth"), source="official", num_classes=80,
                                     verify_model=model)
    assert os.listdir(tmp_path) == ["model.pth"]  # no temporary file left behind
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert set(raw) == {"model", "__author__", "source", "num_classes"}
    assert (raw["__author__"], raw["source"], raw["num_classes"]) == (CONVERTER_AUTHOR, "official", 80)

    randomize(model, seed=7)  # scramble, so that loading must bring the EMA weights back
    assert not torch.equal(model.state_dict()["decoder.enc_score_head.weight"], sd_b["decoder.enc_score_head.weight"])
    _assert_clean(_d2_incompatible(model, out))
    _assert_state_equal(model, sd_b)

    # the public entry point, too: nothing logged about missing / unexpected keys
    randomize(model, seed=8)
    with caplog.at_level(logging.WARNING):
        extra = DetectionCheckpointer(model).load(out)
    assert extra["num_classes"] == 80 and extra["source"] == "official"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
    _assert_state_equal(model, sd_b)


def test_official_model_only_file_and_unsafe_pickle_policy(tiny, tmp_path):
    model, sd_a = tiny["model"], tiny["sd_a"]
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_checkpoint("official", tiny["model_only"], model, allow_unsafe_pickle=False)
    state, report = convert_checkpoint("official", tiny["model_only"], model)
    assert report.origin == "model" and report.unsafe_pickle
    for k in state:
        assert torch.equal(state[k], sd_a[k]), k
    out = save_detectron2_checkpoint(state, str(tmp_path / "m.pth"), source="official", num_classes=80)
    randomize(model, seed=9)
    _assert_clean(_d2_incompatible(model, out))
    _assert_state_equal(model, sd_a)


# ------------------------------------------------------------------------------------------- (b)
def test_hf_folder_converts_to_same_outputs(hf_r18, tmp_path):
    hf, ours, state, report = hf_r18["hf"], hf_r18["ours"], hf_r18["state"], hf_r18["report"]
    assert report.source == "hf" and report.origin == "model.safetensors"
    assert report.checkpoint_num_classes == 80 and not report.reinitialized
    out = save_detectron2_checkpoint(state, str(tmp_path / "r18.pth"), source="hf", num_classes=80, verify_model=ours)

    randomize(ours, seed=11)
    _assert_clean(_d2_incompatible(ours, out))
    # compared in float64 (both models cast after loading): in float32 the encoder's top-k order of near-tied
    # scores depends on the library's rounding (transformers 5.24 swaps two queries that 5.17 did not)
    ours.double().eval()
    hf64 = copy.deepcopy(hf).double().eval()
    x = torch.rand(1, 3, 160, 192, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        ref = hf64(pixel_values=x)
        got = ours.forward_network(x)
    ours.float()
    assert got["pred_logits"].dtype == torch.float64 and ref.logits.shape == got["pred_logits"].shape == (1, 300, 80)
    assert ref.logits.std() > 0.1 and ref.pred_boxes.std() > 0.01  # not a trivial comparison
    torch.testing.assert_close(got["pred_logits"], ref.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(got["pred_boxes"], ref.pred_boxes, rtol=0, atol=1e-4)

    # the same weights as pytorch_model.bin give the same state dict
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    shutil.copy(hf_r18["folder"] / "config.json", bin_folder / "config.json")
    torch.save(hf.state_dict(), bin_folder / "pytorch_model.bin")
    state2, report2 = convert_checkpoint("hf", str(bin_folder), ours)
    assert report2.origin == "pytorch_model.bin" and set(state2) == set(state)
    for k in state:
        assert torch.equal(state2[k], state[k]), k


# ------------------------------------------------------------------------------------------- (c)
def test_num_classes_change_cli_reinitialises_only_class_heads(tiny, tmp_path):
    sd_b = tiny["sd_b"]
    out = tmp_path / "five.pth"
    proc = _run_tool("--source", "official", "--input", tiny["ema_file"], "--config-file", TINY,
                     "--output", str(out), "--num-classes", "5")
    assert proc.returncode == 0, proc.stderr
    assert "--num-classes overrides the config's 80" in proc.stdout
    raw = torch.load(str(out), map_location="cpu", weights_only=True)
    state = raw["model"]
    assert raw["num_classes"] == 5 and raw["source"] == "official" and raw["__author__"] == CONVERTER_AUTHOR
    class_keys = sorted(k for k in state if CLASS_DEPENDENT_KEYS.match(k))
    assert len(class_keys) == 7  # enc head (2) + 2 decoder layers x (w, b) + denoising embedding
    _, report = convert_checkpoint("official", tiny["ema_file"], build_model_from_config(TINY, num_classes=5),
                                   num_classes=5)
    assert f"reconciled with the model: {report}\n" in proc.stdout  # the report's own text, not a re-wording
    for k in class_keys:
        assert k in proc.stdout  # the tool names every re-initialised tensor
        rows = 6 if "denoising" in k else 5
        assert state[k].shape[0] == rows, k
        assert not torch.equal(state[k], sd_b[k][:rows]), k  # fresh, not sliced from the checkpoint
    others = [k for k in state if k not in class_keys]
    assert set(state) == set(sd_b) and len(others) > 400
    for k in others:
        assert torch.equal(state[k], sd_b[k]), k

    five = build_model_from_config(TINY, num_classes=5)
    randomize(five, seed=12)
    _assert_clean(_d2_incompatible(five, str(out)))
    _assert_state_equal(five, state)

    # without --num-classes a class-count mismatch is refused, and the message says how to allow it
    with pytest.raises(ValueError, match="--num-classes") as e:
        convert_checkpoint("official", tiny["ema_file"], five)
    assert "decoder.enc_score_head.weight" in str(e.value)
    # a file that does not fit the verification model is not written (atomic write + verify)
    with pytest.raises(ValueError, match="shape mismatch"):
        save_detectron2_checkpoint(sd_b, str(tmp_path / "bad.pth"), source="official", num_classes=80, verify_model=five)
    assert sorted(os.listdir(tmp_path)) == ["five.pth"]


# ------------------------------------------------------------------------------------------- (d)
def test_r18_weights_with_r50_config_are_refused_cli(hf_r18, tmp_path, capsys):
    official = tmp_path / "r18_official.pth"
    torch.save({"ema": {"module": hf_r18["state"], "updates": 1}}, official)
    out = tmp_path / "out" / "r50.pth"
    rc = _tool_main(["--source", "official", "--input", str(official), "--config-file", R50, "--output", str(out)])
    err = capsys.readouterr().err
    assert rc != 0
    assert "error: checkpoint does not fit the model" in err
    assert "missing (" in err and "unexpected (" in err
    assert "encoder.fpn_blocks.0.conv3.conv.weight" in err  # an r18 (expansion 0.5) key r50 lacks
    assert not out.exists() and (not out.parent.exists() or os.listdir(out.parent) == [])


def test_hf_config_disagreeing_with_model_config_is_refused(hf_r18):
    r50 = build_model_from_config(R50)
    with pytest.raises(ValueError, match="does not match the model config") as e:
        convert_checkpoint("hf", str(hf_r18["folder"]), r50)
    msg = str(e.value)
    assert "decoder_layers: HF 3 vs model 6" in msg
    assert "backbone depth: HF ResNet18-vd vs model PResNet50" in msg
    assert "encoder_in_channels" in msg

    # the right architecture but another class count: refused unless --num-classes asks for it
    r18_five = build_model_from_config(R18, num_classes=5)
    with pytest.raises(ValueError, match=r"num_labels: HF 80 vs model 5 .*--num-classes"):
        convert_checkpoint("hf", str(hf_r18["folder"]), r18_five)
    state, report = convert_checkpoint("hf", str(hf_r18["folder"]), r18_five, num_classes=5)
    assert len(report.reinitialized) == 9  # enc head + 3 decoder layers x (w, b) + denoising embedding
    assert state["decoder.dec_score_head.2.weight"].shape == (5, 256)
    assert torch.equal(state["decoder.dec_bbox_head.2.layers.2.weight"], hf_r18["state"]["decoder.dec_bbox_head.2.layers.2.weight"])


def test_corrupt_and_non_checkpoint_inputs_give_clear_errors(tiny, tmp_path):
    model = tiny["model"]
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        convert_checkpoint("official", str(corrupt), model)
    with pytest.raises(ValueError, match="weights_only=True"):
        convert_checkpoint("official", str(corrupt), model, allow_unsafe_pickle=False)

    not_ckpt = tmp_path / "dict.pth"
    torch.save({"epoch": 3, "note": "hello"}, not_ckpt)
    with pytest.raises(ValueError, match="not an official RT-DETR checkpoint"):
        convert_checkpoint("official", str(not_ckpt), model)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], a_list)
    with pytest.raises(ValueError, match="not a dict"):
        convert_checkpoint("official", str(a_list), model)
    with pytest.raises(FileNotFoundError):
        convert_checkpoint("official", str(tmp_path / "missing.pth"), model)

    with pytest.raises(FileNotFoundError, match="config.json"):
        convert_checkpoint("hf", str(tmp_path), model)  # a folder, but not an HF one
    with pytest.raises(ValueError, match="folder"):
        convert_checkpoint("hf", str(not_ckpt), model)
    with pytest.raises(ValueError, match="use --source hf"):
        convert_checkpoint("official", str(tmp_path), model)
