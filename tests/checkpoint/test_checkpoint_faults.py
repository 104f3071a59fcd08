"""Checkpoint faults: a process SIGKILLed between writing the temporary file and renaming it
leaves the previous checkpoint loadable and tagged; a checkpoint of another model size is a clear
error instead of a half-loaded model; an RT-DETRv2 checkpoint loads into a model with another (or no)
eval_spatial_size, which keeps its own anchors."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from neo_rtdetr.checkpoint.checkpointer import CheckpointMismatchError, RTDETRCheckpointer
from tests.engine.toy import ToyDetector

_SAVER = textwrap.dedent("""
    import os, sys, time
    import torch
    import neo_rtdetr.checkpoint.checkpointer as ck
    from tests.engine.toy import ToyDetector

    folder = sys.argv[1]
    model = ToyDetector()
    checkpointer = ck.RTDETRCheckpointer(model, folder)
    checkpointer.save("model_0000009")            # a complete checkpoint, tagged
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    real_replace = os.replace
    def replace_then_hang(src, dst):
        if dst.endswith("model_0000019.pth"):     # the temporary file is complete: the "kill" comes now
            open(os.path.join(folder, "READY"), "w").close()
            time.sleep(600)
        real_replace(src, dst)
    ck.os.replace = replace_then_hang
    checkpointer.save("model_0000019")
""")


def test_sigkill_between_temp_write_and_rename_keeps_the_previous_checkpoint(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "READY").exists():
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    names = sorted(os.listdir(tmp_path))
    temps = [n for n in names if n.endswith(".neo_rtdetr_tmp")]
    assert len(temps) == 1 and temps[0].startswith(".model_0000019.pth.")  # the interrupted save's complete temp file
    assert "model_0000019.pth" not in names
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"

    # --resume picks the previous checkpoint, which loads completely
    fresh = ToyDetector(seed=3)
    checkpointer = RTDETRCheckpointer(fresh, str(tmp_path))
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    checkpointer.resume_or_load("", resume=True)
    for k, v in ToyDetector().state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    checkpointer.save("model_0000029")  # the next save cleans up the stale temporary file
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".neo_rtdetr_tmp")]


def _model(depth=18, num_classes=3):
    cfg = LazyConfig.load("configs/common/models/rtdetr_tiny.py")
    cfg.model.num_classes = num_classes
    cfg.model.backbone.depth = depth
    torch.manual_seed(0)
    return instantiate(cfg.model)


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "r18.pth")
    torch.save({"model": _model().state_dict()}, path)
    return path


def test_checkpoint_of_another_model_size_is_a_clear_error(r18_file):
    r34 = _model(depth=34)
    for load in (lambda c: c.load(r18_file), lambda c: c.load_for_inference(r18_file),
                 lambda c: c.resume_or_load(r18_file, resume=False)):
        with pytest.raises(CheckpointMismatchError) as excinfo:
            load(RTDETRCheckpointer(r34))
        message = str(excinfo.value)
        assert message.startswith(f"{r18_file}: the checkpoint does not fit the model")
        assert "model tensors are not in the checkpoint" in message and "backbone.res_layers" in message
        assert "another model size" in message
    wider_cfg = LazyConfig.load("configs/common/models/rtdetr_tiny.py")
    wider_cfg.model.num_classes = 3
    wider_cfg.model.encoder.hidden_dim = 96
    wider_cfg.model.decoder.hidden_dim = 96
    wider = instantiate(wider_cfg.model)
    with pytest.raises(CheckpointMismatchError, match=r"tensors have another shape \(.*\(64,\) in the checkpoint, \(96,\) in the model"):
        RTDETRCheckpointer(wider).load(r18_file)


def test_only_a_class_count_difference_is_loaded_for_fine_tuning(r18_file):
    five = _model(num_classes=5)
    fresh_heads = {k: v.clone() for k, v in five.state_dict().items() if "score_head" in k or "denoising_class" in k}
    RTDETRCheckpointer(five).load(r18_file)  # no error: the class heads keep their fresh initialisation
    source = torch.load(r18_file, weights_only=True)["model"]
    state = five.state_dict()
    for k, v in state.items():
        if k in fresh_heads:
            assert torch.equal(v, fresh_heads[k]), k
        else:
            assert torch.equal(v, source[k]), k


def _build_v2(num_classes):
    from tests.projects.rtdetrv2_helpers import build_v2

    torch.manual_seed(0)
    return build_v2("tiny", num_classes=num_classes)


@pytest.mark.parametrize("build", [lambda n: _model(num_classes=n), _build_v2], ids=["v1", "v2"])
def test_one_class_dependent_key_pattern_for_the_fit_check_and_the_converter(build, tmp_path):
    import neo_rtdetr.checkpoint.checkpointer as checkpointer_module
    from neo_rtdetr.checkpoint import convert

    assert checkpointer_module.CLASS_DEPENDENT_KEYS is convert.CLASS_DEPENDENT_KEYS  # a single definition
    three, five = build(3), build(5)
    sd3, sd5 = three.state_dict(), five.state_dict()
    class_shaped = {k for k in sd3 if sd3[k].shape != sd5[k].shape}
    assert len(class_shaped) == 7  # enc head (w, b), 2 decoder layers x (w, b), denoising embedding
    assert {k for k in sd3 if convert.CLASS_DEPENDENT_KEYS.match(k)} == class_shaped
    # both users of the pattern accept exactly that difference
    path = str(tmp_path / "three.pth")
    torch.save({"model": sd3}, path)
    RTDETRCheckpointer(five).load(path)
    state, report = convert.reconcile_state_dict(sd3, build(5), allow_num_classes_change=True)
    assert sorted(report.reinitialized) == sorted(class_shaped) and set(state) == set(sd5)


def test_mismatch_error_lists_keys_with_the_shared_id_formatter():
    from fvcore.common.checkpoint import _IncompatibleKeys

    import neo_rtdetr.checkpoint.checkpointer as checkpointer_module
    from neo_rtdetr.data import validation

    assert checkpointer_module.format_ids is validation.format_ids  # no private copy of the listing
    missing = [f"backbone.layer{i}.weight" for i in range(9)]
    with pytest.raises(CheckpointMismatchError) as excinfo:
        checkpointer_module.check_checkpoint_fits(_IncompatibleKeys(missing, ["extra.weight"], []))
    message = str(excinfo.value)
    assert "9 model tensors are not in the checkpoint (" + ", ".join(missing[:6]) + ", ... (3 more))" in message
    assert "1 checkpoint tensors are not in the model (extra.weight)" in message


@pytest.fixture(scope="module")
def v2_160x128_file(tmp_path_factory):
    """A tiny RT-DETRv2 checkpoint saved by the checkpointer with eval_spatial_size [160, 128]: "model" and
    "ema.module" (other values), both holding that size's decoder.anchors / valid_mask."""
    from neo_rtdetr.engine import ModelEMA
    from tests.projects.rtdetrv2_helpers import build_v2, randomize_v2

    folder = str(tmp_path_factory.mktemp("v2_ckpt"))
    model = build_v2("tiny", eval_spatial_size=[160, 128])
    randomize_v2(model, seed=1)
    ema = ModelEMA(model)
    randomize_v2(ema.module, seed=2)
    RTDETRCheckpointer(model, folder, ema=ema).save("model_final")
    saved = torch.load(os.path.join(folder, "model_final.pth"), weights_only=True)
    assert saved["model"]["decoder.anchors"].shape == (1, 20 * 16 + 10 * 8 + 5 * 4, 4)
    return dict(path=os.path.join(folder, "model_final.pth"), model=saved["model"], ema=saved["ema"]["module"])


@pytest.mark.parametrize("eval_size", [[128, 160], [192, 192], None], ids=["transposed", "other", "none"])
@pytest.mark.parametrize("how", ["init_checkpoint", "load_for_inference"])
def test_v2_checkpoint_loads_whatever_the_eval_spatial_size(v2_160x128_file, eval_size, how, caplog):
    from tests.projects.rtdetrv2_helpers import build_v2

    target = build_v2("tiny", eval_spatial_size=eval_size)
    own = {k: v.clone() for k, v in target.state_dict().items() if k in ("decoder.anchors", "decoder.valid_mask")}
    assert bool(own) == (eval_size is not None)
    with caplog.at_level(logging.INFO):
        if how == "init_checkpoint":  # what train_net does with train.init_checkpoint
            RTDETRCheckpointer(target, "").resume_or_load(v2_160x128_file["path"], resume=False)
            expected = v2_160x128_file["model"]
        else:
            RTDETRCheckpointer(target).load_for_inference(v2_160x128_file["path"])
            expected = v2_160x128_file["ema"]
    state = target.state_dict()
    assert set(state) == set(expected) - {"decoder.anchors", "decoder.valid_mask"} | set(own)
    for k, v in state.items():
        assert torch.equal(v, own[k] if k in own else expected[k]), k  # the model's own anchors, the file's weights
    messages = [r.getMessage() for r in caplog.records]
    dropped = [m for m in messages if "Not loading decoder.anchors, decoder.valid_mask" in m]
    assert len(dropped) == 1 and "eval_spatial_size" in dropped[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "anchors" in r.getMessage()]
