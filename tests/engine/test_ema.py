"""ModelEMA / EMAHook: warm-up decay formula, BN buffers, DDP unwrapping, hook behaviour, resume."""

import math

import pytest
import torch
from torch import nn

from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer
from neo_rtdetr.engine import EMAHook, ModelEMA, RTDETRTrainer, ema_weights_for_eval
from tests.engine.toy import ToyDetector, ToyLoader


def test_warmup_decay_values_match_the_formula():
    ema = ModelEMA(nn.Linear(1, 1), decay=0.9999, warmups=2000)
    for n in (1, 10, 2000, 10000):
        assert ema.decay_at(n) == pytest.approx(0.9999 * (1 - math.exp(-n / 2000)), rel=1e-12)
    assert ModelEMA(nn.Linear(1, 1), decay=0.9, warmups=0).decay_at(1) == 0.9


def test_ema_after_n_updates_matches_an_independent_computation():
    model = nn.Linear(3, 2)
    decay, warmups = 0.9, 3
    ema = ModelEMA(model, decay=decay, warmups=warmups)
    expected = {k: v.detach().double().clone() for k, v in model.state_dict().items()}
    for n in range(1, 7):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        d = decay * (1 - math.exp(-n / warmups))
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v.double()
    assert ema.updates == 6
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v.double(), expected[k], rtol=1e-6, atol=1e-6)


def test_ema_includes_batchnorm_running_statistics():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    ema = ModelEMA(model, decay=0.5, warmups=0)
    old_mean = ema.module[1].running_mean.clone()
    old_tracked = ema.module[1].num_batches_tracked.clone()
    model.train()
    model(torch.randn(16, 4) * 3 + 2)  # changes running_mean/var of the model only
    ema.update(model)
    expected = 0.5 * old_mean + 0.5 * model[1].running_mean
    torch.testing.assert_close(ema.module[1].running_mean, expected)
    assert not torch.equal(ema.module[1].running_mean, old_mean)
    # integer buffers are not averaged (official behaviour)
    assert torch.equal(ema.module[1].num_batches_tracked, old_tracked)


def test_ema_copy_is_frozen_eval_and_unwraps_data_parallel():
    model = ToyDetector()
    wrapped = nn.DataParallel(model)  # CPU-only: a plain wrapper with ``.module``
    ema = ModelEMA(wrapped, decay=0.5, warmups=0)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert set(ema.module.state_dict()) == set(model.state_dict())  # no "module." prefix
    with torch.no_grad():
        model.decoder.linear.bias.fill_(2.0)
    start = ema.module.decoder.linear.bias.clone()
    ema.update(wrapped)
    torch.testing.assert_close(ema.module.decoder.linear.bias, 0.5 * start + 1.0)


def test_ema_hook_updates_each_good_step_and_skips_bad_ones():
    model = ToyDetector()
    ema = ModelEMA(model, decay=0.9, warmups=0)
    trainer = RTDETRTrainer(
        model, ToyLoader(nan_iters={2}), torch.optim.SGD(model.parameters(), lr=0.05), precision="fp32"
    )
    trainer.register_hooks([EMAHook(ema)])
    trainer.train(0, 4)
    assert ema.updates == 3  # iteration 2 was skipped
    assert trainer.storage.history("ema_decay").values()[-1][0] == pytest.approx(0.9)


def test_ema_hook_recopies_weights_loaded_after_ema_creation():
    model = ToyDetector()
    ema = ModelEMA(model, decay=0.9999, warmups=2000)
    with torch.no_grad():  # e.g. init_checkpoint loaded into the model after building the EMA
        for p in model.parameters():
            p.add_(1.0)
    trainer = RTDETRTrainer(model, ToyLoader(), torch.optim.SGD(model.parameters(), lr=0.0), precision="fp32")
    trainer.register_hooks([EMAHook(ema)])
    trainer.train(0, 0)  # only before_train/after_train
    for k, v in model.state_dict().items():
        assert torch.equal(ema.module.state_dict()[k], v), k


def test_ema_weights_for_eval_swaps_and_restores():
    model = ToyDetector()
    ema = ModelEMA(model)
    with torch.no_grad():
        ema.module.decoder.linear.weight.fill_(7.0)
    train_weight = model.decoder.linear.weight.clone()
    model.train()
    with ema_weights_for_eval(ema, model) as m:
        assert torch.all(m.decoder.linear.weight == 7.0)
    assert torch.equal(model.decoder.linear.weight, train_weight)
    assert model.training


def test_ema_state_survives_save_and_resume(tmp_path):
    model = ToyDetector()
    ema = ModelEMA(model, decay=0.99, warmups=10)
    trainer = RTDETRTrainer(model, ToyLoader(), torch.optim.AdamW(model.parameters(), lr=1e-2), precision="fp32")
    trainer.register_hooks([EMAHook(ema)])
    trainer.train(0, 5)
    RTDETRCheckpointer(model, str(tmp_path), trainer=trainer, ema=ema).save("model_0000004")
    saved = {k: v.clone() for k, v in ema.module.state_dict().items()}

    model2 = ToyDetector(seed=3)
    ema2 = ModelEMA(model2, decay=0.99, warmups=10)
    trainer2 = RTDETRTrainer(model2, ToyLoader(), torch.optim.AdamW(model2.parameters(), lr=1e-2), precision="fp32")
    hook2 = EMAHook(ema2)
    trainer2.register_hooks([hook2])
    RTDETRCheckpointer(model2, str(tmp_path), trainer=trainer2, ema=ema2).resume_or_load("", resume=True)
    assert ema2.updates == 5 and trainer2.iter == 5  # train() ends with iter = max_iter
    for k, v in ema2.module.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # the resumed EMA is not overwritten from the model at before_train
    hook2.before_train()
    assert all(torch.equal(v, saved[k]) for k, v in ema2.module.state_dict().items())


def test_ema_tracks_tensors_reassigned_after_the_first_update():
    """The per-step path caches where each entry lives, not the tensor objects: a buffer or parameter that is
    replaced between updates (e.g. a re-registered anchor buffer) is still what the EMA moves towards."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.5, warmups=0)
    ema.update(model)
    model[1].running_mean = torch.full((2,), 4.0)
    model[0].weight = nn.Parameter(torch.full((2, 2), 2.0))
    before_mean = ema.module[1].running_mean.clone()
    before_w = ema.module[0].weight.clone()
    ema.update(model)
    torch.testing.assert_close(ema.module[1].running_mean, 0.5 * before_mean + 0.5 * 4.0)
    torch.testing.assert_close(ema.module[0].weight, 0.5 * before_w + 0.5 * 2.0)


def test_ema_follows_a_model_moved_after_the_first_update(monkeypatch):
    """The device check runs every step (first entry only): a model moved after the first update takes the EMA
    copy with it once, instead of a cross-device copy of every tensor at every step (here the 'meta' device)."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.5, warmups=0)
    ema.update(model)
    moves = []
    real_to = nn.Module.to

    def counting_to(self, *args, **kwargs):
        moves.append(args)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", counting_to)
    model.to("meta")
    ema.update(model)
    ema.update(model)
    assert len(moves) == 2  # the model's move, then the EMA's, once
    assert all(v.device.type == "meta" for v in ema.module.state_dict().values())
