"""RTDETRCheckpointer: full-state round trip under weights_only, atomic saves, EMA-first inference load."""

import argparse
import logging
import os

import pytest
import torch
from detectron2.engine import hooks
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ConstantParamScheduler, MultiStepParamScheduler

import neo_rtdetr.checkpoint.checkpointer as ckpt_module
from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer, UnsafeCheckpointError
from neo_rtdetr.engine import EMAHook, ModelEMA, RTDETRTrainer
from tests.engine.toy import ToyDetector, ToyLoader


def _trained(tmp_path, iters=3):
    model = ToyDetector()
    ema = ModelEMA(model, decay=0.9, warmups=5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trainer = RTDETRTrainer(model, ToyLoader(), optimizer, precision="fp32")
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=64.0)  # fp16 scaler state in the file
    sched = WarmupParamScheduler(MultiStepParamScheduler([1.0, 0.1], milestones=[2], num_updates=10), 0.001, 0.1)
    trainer.register_hooks([EMAHook(ema), hooks.LRScheduler(scheduler=sched)])
    trainer.train(0, iters)
    return model, ema, optimizer, trainer


def _files(folder):
    return sorted(os.listdir(folder))


def test_full_training_state_round_trip_loads_with_weights_only(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    model, ema, optimizer, trainer = _trained(tmp_path)
    RTDETRCheckpointer(model, str(tmp_path), trainer=trainer, ema=ema).save("model_final", note="extra")
    assert _files(tmp_path) == ["last_checkpoint", "model_final.pth"]

    model2 = ToyDetector(seed=5)
    ema2 = ModelEMA(model2)
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    trainer2 = RTDETRTrainer(model2, ToyLoader(), optimizer2, precision="fp32")
    trainer2.grad_scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    sched_hook = hooks.LRScheduler(scheduler=LRMultiplier(optimizer2, ConstantParamScheduler(1.0), 10))
    trainer2.register_hooks([sched_hook])
    extra = RTDETRCheckpointer(model2, str(tmp_path), trainer=trainer2, ema=ema2).resume_or_load("", resume=True)

    assert calls == [True]  # our own file loads with weights_only=True
    assert extra == {"note": "extra"}
    assert trainer2.iter == trainer.iter
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v), k
    assert ema2.updates == ema.updates
    assert trainer2.grad_scaler.get_scale() == trainer.grad_scaler.get_scale() == 64.0
    assert optimizer2.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    saved_last_epoch = trainer._hooks[1].scheduler.last_epoch
    assert saved_last_epoch == 3 and sched_hook.scheduler.last_epoch == saved_last_epoch  # LR hook state


def test_crash_during_save_keeps_previous_checkpoint_and_tag(tmp_path, monkeypatch):
    model, ema, _, trainer = _trained(tmp_path, iters=1)
    checkpointer = RTDETRCheckpointer(model, str(tmp_path), trainer=trainer, ema=ema)
    checkpointer.save("model_0000000")
    with open(tmp_path / "model_0000000.pth", "rb") as f:
        good_bytes = f.read()

    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")  # half-written file, then the "kill"
        raise RuntimeError("simulated crash during serialisation")

    monkeypatch.setattr(ckpt_module.torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        checkpointer.save("model_0000000")  # overwrite of the same name
    with pytest.raises(RuntimeError, match="simulated crash"):
        checkpointer.save("model_0000001")  # a new name
    monkeypatch.setattr(ckpt_module.torch, "save", real_save)

    assert _files(tmp_path) == ["last_checkpoint", "model_0000000.pth"], "no temp file may remain"
    with open(tmp_path / "model_0000000.pth", "rb") as f:
        assert f.read() == good_bytes
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000000.pth")
    RTDETRCheckpointer(ToyDetector()).load(str(tmp_path / "model_0000000.pth"))  # still loadable


def test_crash_while_writing_the_tag_keeps_the_old_tag(tmp_path, monkeypatch):
    model = ToyDetector()
    checkpointer = RTDETRCheckpointer(model, str(tmp_path))
    checkpointer.save("a")
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(dst) == "last_checkpoint":
            raise OSError("simulated kill before rename")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated kill"):
        checkpointer.save("b")
    monkeypatch.setattr(ckpt_module.os, "replace", real_replace)
    assert (tmp_path / "last_checkpoint").read_text() == "a.pth"
    assert _files(tmp_path) == ["a.pth", "b.pth", "last_checkpoint"]


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path):
    stale = tmp_path / ".model_0000009.pth.abc123.neo_rtdetr_tmp"
    stale.write_bytes(b"truncated")
    RTDETRCheckpointer(ToyDetector(), str(tmp_path)).save("model_0000010")
    assert _files(tmp_path) == ["last_checkpoint", "model_0000010.pth"]


def _two_weight_file(path, with_ema=True):
    model_a, model_b = ToyDetector(seed=1), ToyDetector(seed=2)
    data = {"model": model_a.state_dict()}
    if with_ema:
        data["ema"] = {"module": model_b.state_dict(), "updates": 42}
    torch.save(data, path)
    return model_a, model_b


def _equal_weights(m1, m2):
    return all(torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())


def test_load_for_inference_prefers_ema_weights(tmp_path, caplog):
    path = str(tmp_path / "ckpt.pth")
    model_a, model_b = _two_weight_file(path)
    target = ToyDetector(seed=9)
    with caplog.at_level(logging.INFO):
        RTDETRCheckpointer(target).load_for_inference(path)
    assert _equal_weights(target, model_b) and not _equal_weights(target, model_a)
    assert any("EMA weights" in r.getMessage() and "42 updates" in r.getMessage() for r in caplog.records)

    target2 = ToyDetector(seed=9)
    RTDETRCheckpointer(target2).load_for_inference(path, prefer_ema=False)
    assert _equal_weights(target2, model_a)
    # the usual load() keeps loading "model"
    target3 = ToyDetector(seed=9)
    RTDETRCheckpointer(target3).load(path)
    assert _equal_weights(target3, model_a)


def test_load_for_inference_without_ema_uses_model(tmp_path):
    path = str(tmp_path / "plain.pth")
    model_a, _ = _two_weight_file(path, with_ema=False)
    target = ToyDetector(seed=9)
    RTDETRCheckpointer(target).load_for_inference(path)
    assert _equal_weights(target, model_a)


def test_ema_only_file_loads_as_model(tmp_path):
    # official RT-DETRv2 "*_ema.pth" files hold only {"ema": {"module": ..., "updates": ...}}
    source = ToyDetector(seed=4)
    path = str(tmp_path / "ema_only.pth")
    torch.save({"ema": {"module": source.state_dict(), "updates": 7}}, path)
    target = ToyDetector(seed=9)
    RTDETRCheckpointer(target).load(path)
    assert _equal_weights(target, source)


def test_foreign_file_with_pickled_objects_gives_a_clear_error(tmp_path):
    path = str(tmp_path / "foreign.pth")
    torch.save({"model": ToyDetector().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True") as info:
        RTDETRCheckpointer(ToyDetector()).load(path)
    assert "foreign.pth" in str(info.value) and "Namespace" in str(info.value)
    # explicit opt-in for trusted files
    target = ToyDetector(seed=9)
    extra = RTDETRCheckpointer(target, weights_only=False).load(path)
    assert isinstance(extra["args"], argparse.Namespace)
