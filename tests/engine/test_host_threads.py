"""``train.cpu_threads``: the intra-op CPU threads of a training process (1 on CUDA by default, where the data
loader's workers need the cores), set by ``do_train`` before anything is built."""

import pytest
import torch
from omegaconf import OmegaConf

import neo_rtdetr.engine.train_net as train_net
from neo_rtdetr.engine.host_threads import apply_cpu_threads, resolve_cpu_threads
from neo_rtdetr.engine.train_net import do_train

from ..log_records import log_records
from .test_train_compile import _cfg


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.mark.parametrize("setting, on_cuda, env, expected", [
    (None, True, None, 1),  # automatic on CUDA: one thread
    (None, True, "", 1),  # an empty OMP_NUM_THREADS is unset
    (None, True, "6", None),  # the user's OMP_NUM_THREADS stands (PyTorch has read it)
    (None, False, None, None),  # on the CPU the model's operators are the work: PyTorch's default
    (3, True, None, 3), (3, False, "6", 3),  # an explicit count wins everywhere
])
def test_the_thread_count_follows_the_setting_the_device_and_the_environment(setting, on_cuda, env, expected):
    assert resolve_cpu_threads(setting, on_cuda=on_cuda, env_threads=env) == expected


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4"])
def test_a_bad_setting_is_refused_with_the_key(bad):
    with pytest.raises(ValueError, match=r"train\.cpu_threads must be a positive int"):
        resolve_cpu_threads(bad, on_cuda=True, env_threads=None)


def test_apply_sets_and_reports_the_count(restore_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    target = 2 if restore_threads != 2 else 3
    cfg = OmegaConf.create({"train": {"device": "cpu", "cpu_threads": target}})
    with log_records("neo_rtdetr") as records:
        assert apply_cpu_threads(cfg) == target
    assert torch.get_num_threads() == target
    assert any(f"intra-op CPU threads of this process: {target} (train.cpu_threads)" in r.getMessage() for r in records)
    # automatic on the CPU: left as it is
    cfg.train.cpu_threads = None
    assert apply_cpu_threads(cfg) == target


@pytest.mark.parametrize("cuda_available, env, expected_reason, one_thread", [
    (True, None, "automatic on CUDA", True),
    (False, None, "PyTorch's default on the CPU", False),  # train.device=cuda without CUDA: the run is on the CPU
    (True, "3", "OMP_NUM_THREADS", False),
])
def test_the_automatic_setting_on_a_cuda_config(cuda_available, env, expected_reason, one_thread, restore_threads,
                                                 monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    torch.set_num_threads(2)
    cfg = OmegaConf.create({"train": {"device": "cuda", "cpu_threads": None}})
    with log_records("neo_rtdetr") as records:
        threads = apply_cpu_threads(cfg)
    assert threads == torch.get_num_threads() == (1 if one_thread else 2)
    assert any(f"intra-op CPU threads of this process: {threads} ({expected_reason})" in r.getMessage()
               for r in records), [r.getMessage() for r in records]


def test_do_train_sets_the_threads_before_building_the_model(restore_threads, tmp_path, monkeypatch):
    seen = []

    def build_model(_cfg):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop after the thread count")

    monkeypatch.setattr(train_net, "build_model", build_model)
    target = 1 if restore_threads != 1 else 2
    with pytest.raises(RuntimeError, match="stop after the thread count"):
        do_train(_cfg(str(tmp_path), None, [f"train.cpu_threads={target}"]))
    assert seen == [target]
    with pytest.raises(ValueError, match=r"train\.cpu_threads"):
        do_train(_cfg(str(tmp_path), None, ["train.cpu_threads=0"]))
    assert seen == [target]  # refused before the model
