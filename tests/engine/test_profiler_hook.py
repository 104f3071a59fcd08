"""``train.profile``: the TrainingProfiler hook profiles exactly the asked iterations of a real training run
(``do_train`` on CPU) and writes the per-step summary and a Chrome trace."""

import gzip
import json
import os
import re

import pytest
import torch
from detectron2.engine import HookBase

from neo_rtdetr.engine.profiler_hook import TrainingProfiler
import neo_rtdetr.engine.train_net as train_net
from neo_rtdetr.engine.train_net import do_train

from ..log_records import log_records
from .test_train_compile import _cfg


def _run(out, cache, overrides):
    with log_records("neo_rtdetr.engine.profiler_hook") as records:
        do_train(_cfg(out, cache, overrides))
    return [r.getMessage() for r in records]


def _calls_per_step(text, name):
    m = re.search(rf"^## {re.escape(name)}\s+([\d.]+)\s+(\d+)$", text, re.M)
    assert m, f"no '## {name}' row in\n{text}"
    return float(m.group(1)), int(m.group(2))


def test_profiles_the_asked_iterations_of_a_training_run(synthetic_cache, tmp_path):
    messages = _run(str(tmp_path), synthetic_cache, [
        "train.max_iter=5", "train.profile.enabled=True", "train.profile.start_iter=2", "train.profile.iters=2"])
    prof_dir = tmp_path / "profile"
    assert sorted(os.listdir(prof_dir)) == ["profile_iter2-3.txt", "profile_iter2-3_trace.json.gz"]
    text = (prof_dir / "profile_iter2-3.txt").read_text()
    assert text.startswith("==== training iterations 2-3 (2 steps)") and ", CPU" in text.splitlines()[0]
    # the trainer's phases, the EMA hook's and the model's parts, once per step (per-step means over the 2 profiled steps)
    for name in ("data", "forward", "backward", "grad clip", "host transfer", "optimizer", "ema update",
                 "backbone", "encoder", "decoder", "criterion"):
        host_ms, calls = _calls_per_step(text, name)
        assert calls == 1 and host_ms > 0, (name, host_ms, calls)
    # the forward's parts lie inside it
    assert _calls_per_step(text, "backbone")[0] < _calls_per_step(text, "forward")[0]
    assert re.search(r"^wall per step \(synchronized\)\s+[\d.]+ ms$", text, re.M)
    assert "sorted by cpu_time_total" in text
    # the trace holds exactly the 2 profiled steps
    with gzip.open(prof_dir / "profile_iter2-3_trace.json.gz", "rt") as f:
        events = json.load(f)["traceEvents"]
    assert sum(e.get("name") == "## forward" for e in events) == 2
    assert any("TrainingProfiler: wrote" in m and "## forward" in m for m in messages)


def test_a_window_past_the_end_writes_what_was_recorded(synthetic_cache, tmp_path):
    messages = _run(str(tmp_path), synthetic_cache, [
        "train.max_iter=4", "train.profile.enabled=True", "train.profile.start_iter=3", "train.profile.iters=5",
        "train.profile.trace=False",
        "train.ema.enabled=False"])  # (the final evaluation then runs the trained model, whose parts are marked)
    assert any("the profile will be shorter" in m for m in messages), messages
    assert os.listdir(tmp_path / "profile") == ["profile_iter3-3.txt"]  # the last iteration only, no trace
    text = (tmp_path / "profile" / "profile_iter3-3.txt").read_text()
    # closed with that iteration, before the final evaluation (which would add backbone calls of its own)
    for name in ("forward", "backbone", "decoder"):
        assert _calls_per_step(text, name)[1] == 1, name


def test_a_crash_inside_the_window_keeps_its_exception_and_writes_the_profile(synthetic_cache, tmp_path):
    class _Boom(HookBase):
        def after_step(self):
            if self.trainer.iter == 2:
                raise RuntimeError("boom at 2")

    with pytest.raises(RuntimeError, match="boom at 2"):
        do_train(_cfg(str(tmp_path), synthetic_cache, [
            "train.max_iter=6", "train.profile.enabled=True", "train.profile.start_iter=1", "train.profile.iters=4",
            "train.profile.trace=False"]), extra_hooks=[_Boom()])
    # iteration 1 finished, iteration 2 did not: the profile is written and the profiler is off again
    assert os.listdir(tmp_path / "profile") == ["profile_iter1-1.txt"]
    assert not torch.autograd.profiler._is_profiler_enabled


@pytest.mark.parametrize("override, key", [
    ("train.profile.start_iter=-1", "start_iter"), ("train.profile.iters=0", "iters"),
    ("train.profile.iters=2.5", "iters"), ("train.profile.trace=yes", "trace"), ("train.profile.enabled=1", "enabled"),
])
def test_bad_settings_are_refused_before_anything_is_built(override, key, tmp_path, monkeypatch):
    def build_model(_cfg):
        raise AssertionError("the model was built before train.profile was checked")

    monkeypatch.setattr(train_net, "build_model", build_model)
    with pytest.raises(ValueError, match=rf"train\.profile\.{key} must be"):
        do_train(_cfg(str(tmp_path), None, ["train.profile.enabled=True", override]))


def test_the_hook_refuses_a_bad_window(tmp_path):
    with pytest.raises(ValueError, match="start_iter must be >= 0 and iters >= 1"):
        TrainingProfiler(start_iter=0, iters=0, output_dir=str(tmp_path))
