"""Single-process checks of the multi-process set-up in neo_rtdetr.engine.train_net: SyncBN conversion
(official recipe) before the optimizer, the EMA and DDP are built, and DDP wrapping of a CPU model.

A world size of 2 is simulated by patching detectron2's ``comm.get_world_size``; the real 2-process run
is tests/engine/test_distributed_gloo.py.
"""

import dataclasses
import logging

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.utils import comm

import neo_rtdetr.engine.train_net as train_net
from neo_rtdetr.data.catalog import register_synthetic_dataset
from tests.conftest import small_spec
from tests.log_records import log_records


def _norm_layers(model):
    return {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


@pytest.fixture
def cfg(synthetic_cache):
    cfg = LazyConfig.load("configs/rtdetr_tiny_synthetic_demo.py")
    cfg.dataloader.datasets = [L(register_synthetic_dataset)(cache_dir=synthetic_cache, **dataclasses.asdict(small_spec()))]
    cfg.dataloader.train.num_workers = 0
    cfg.train.device = "cpu"
    return cfg


@pytest.fixture
def two_ranks(monkeypatch):
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)


class _Stop(Exception):
    pass


def test_every_batchnorm_becomes_syncbn_under_several_processes(cfg, two_ranks):
    assert cfg.train.sync_bn  # the default, as in the official runtime.yml
    model = train_net.build_model(cfg)
    norms = _norm_layers(model)
    assert norms and set(norms.values()) == {"SyncBatchNorm"}
    # the same layers as the single-process model, and the same state-dict keys: checkpoints interchange
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(comm, "get_world_size", lambda: 1)
        plain = train_net.build_model(cfg)
    assert set(_norm_layers(plain)) == set(norms) and set(_norm_layers(plain).values()) == {"BatchNorm2d"}
    plain.load_state_dict(model.state_dict(), strict=True)


def test_one_process_keeps_batchnorm(cfg):
    assert set(_norm_layers(train_net.build_model(cfg)).values()) == {"BatchNorm2d"}


def test_sync_bn_off_under_several_processes_warns_about_per_rank_statistics(cfg, two_ranks):
    cfg.train.sync_bn = False
    with log_records(train_net.logger.name, logging.WARNING) as records:
        model = train_net.build_model(cfg)
    assert set(_norm_layers(model).values()) == {"BatchNorm2d"}
    assert any(r.levelno == logging.WARNING and "BatchNorm running statistics" in r.getMessage() for r in records)


def test_do_train_builds_optimizer_ema_and_ddp_from_the_syncbn_model(cfg, two_ranks, monkeypatch):
    seen = {}
    real_instantiate, real_ema = train_net.instantiate, train_net.ModelEMA

    def instantiate(c):
        out = real_instantiate(c)
        if isinstance(out, torch.optim.Optimizer):
            seen["optimizer"] = out
        return out

    class RecordingEMA(real_ema):
        def __init__(self, model, **kwargs):
            super().__init__(model, **kwargs)
            seen["ema"] = self

    def wrap_ddp(model, ddp_cfg):
        seen["ddp_input"] = model
        raise _Stop

    monkeypatch.setattr(train_net, "instantiate", instantiate)
    monkeypatch.setattr(train_net, "ModelEMA", RecordingEMA)
    monkeypatch.setattr(train_net, "wrap_ddp", wrap_ddp)
    # the CPU model stands in for a CUDA one here: the early SyncBN-on-CPU refusal is tested below
    monkeypatch.setattr(train_net, "check_sync_bn_device", lambda cfg: None)
    with pytest.raises(_Stop):
        train_net.do_train(cfg)
    model = seen["ddp_input"]
    assert set(_norm_layers(model).values()) == {"SyncBatchNorm"}
    assert set(_norm_layers(seen["ema"].module).values()) == {"SyncBatchNorm"}
    optimized = {id(p) for g in seen["optimizer"].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}  # the SyncBN weights are trained


def test_wrap_ddp_gives_a_cpu_model_no_device_ids(two_ranks, monkeypatch):
    calls = []
    monkeypatch.setattr(train_net, "create_ddp_model", lambda model, **kw: calls.append(kw) or model)
    ddp_cfg = {"broadcast_buffers": False, "find_unused_parameters": False, "fp16_compression": False}
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert train_net.wrap_ddp(model, ddp_cfg) is model
    assert calls[-1] == {**ddp_cfg, "device_ids": None}  # v0.6 would pass [local_rank]: DDP refuses it on CPU
    train_net.wrap_ddp(model, {**ddp_cfg, "device_ids": [0]})
    assert calls[-1]["device_ids"] == [0]  # an explicit choice is kept


def test_wrap_ddp_refuses_syncbn_on_cpu_with_a_clear_error(two_ranks):
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match=r"train.sync_bn=True needs CUDA.*train.sync_bn=False"):
        train_net.wrap_ddp(model, {"broadcast_buffers": False})


def test_wrap_ddp_is_a_no_op_for_one_process():
    model = torch.nn.SyncBatchNorm(3)  # allowed: SyncBN without peers is plain BN
    assert train_net.wrap_ddp(model, {"broadcast_buffers": False}) is model


@pytest.fixture
def build_calls(monkeypatch):
    """The expensive steps of ``do_train`` (dataset registration, model, data loader, any instantiate), recorded
    instead of run."""
    calls = []

    def recorder(name):
        def record(*args, **kwargs):
            calls.append(name)
            raise _Stop(name)
        return record

    monkeypatch.setattr(train_net, "register_datasets_from_config", recorder("register_datasets_from_config"))
    monkeypatch.setattr(train_net, "build_model", recorder("build_model"))
    monkeypatch.setattr(train_net, "instantiate", recorder("instantiate"))
    return calls


@pytest.mark.parametrize("device, cuda", [("cpu", True), ("cuda", False)], ids=["cpu", "cuda-absent"])
def test_do_train_refuses_syncbn_on_cpu_before_building_anything(cfg, two_ranks, build_calls, monkeypatch, device,
                                                                 cuda):
    assert cfg.train.sync_bn
    cfg.train.device = device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    with pytest.raises(ValueError, match=r"train.sync_bn=True needs CUDA.*train.sync_bn=False") as excinfo:
        train_net.do_train(cfg)
    assert build_calls == []  # neither the datasets, nor the model, nor the data loader were built
    message = str(excinfo.value)
    assert "'cpu'" in message and "2 processes" in message
    assert ("CUDA is not available" in message) == (not cuda)


@pytest.mark.parametrize("world_size, sync_bn, device, cuda", [
    (1, True, "cpu", False),   # one process: SyncBN is plain BN, no DDP
    (2, False, "cpu", False),  # no SyncBN: gloo on CPU is fine
    (2, True, "cuda", True),   # the official set-up
], ids=["one-process", "no-syncbn", "cuda"])
def test_the_early_syncbn_check_lets_the_other_set_ups_through(cfg, build_calls, monkeypatch, world_size, sync_bn,
                                                               device, cuda):
    monkeypatch.setattr(comm, "get_world_size", lambda: world_size)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg.train.sync_bn, cfg.train.device = sync_bn, device
    train_net.check_sync_bn_device(cfg)
    with pytest.raises(_Stop):
        train_net.do_train(cfg)
    assert build_calls == ["build_model"]  # do_train went on to build the model
