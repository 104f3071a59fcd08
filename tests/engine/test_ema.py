"""ModelEMA / EMAHook: warm-up decay formula, BN buffers, DDP unwrapping, hook behaviour, resume."""

import logging
import math
import os
import re

import pytest
import torch
from torch import nn

from neo_rtdetr.checkpoint.checkpointer import CheckpointMismatchError, RTDETRCheckpointer
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


def test_ema_keeps_its_dtype_when_the_model_changes_its_own():
    """An entry whose dtype differs from the EMA's (here the whole model converted to float64 after the first
    update) is converted for the update: the EMA stays float32 and still moves towards the model."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.5, warmups=0)
    ema.update(model)
    model.double()
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    before = ema.module[0].weight.clone()
    ema.update(model)
    assert ema.module[0].weight.dtype == torch.float32
    torch.testing.assert_close(ema.module[0].weight, 0.5 * before + 1.5)


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


@pytest.fixture(scope="module")
def v2_160x128_resume(tmp_path_factory):
    """A tiny RT-DETRv2 run saved with eval_spatial_size [160, 128] (model and EMA with different random values,
    7 EMA updates): the folder, and the saved EMA state (holding that size's decoder.anchors / valid_mask)."""
    from tests.projects.rtdetrv2_helpers import build_v2, randomize_v2

    folder = str(tmp_path_factory.mktemp("v2_resume"))
    model = build_v2("tiny", eval_spatial_size=[160, 128])
    randomize_v2(model, seed=1)
    ema = ModelEMA(model)
    randomize_v2(ema.module, seed=2)
    ema.updates = 7
    RTDETRCheckpointer(model, folder, ema=ema).save("model_0000006")
    saved = {k: v.clone() for k, v in ema.module.state_dict().items()}
    assert saved["decoder.anchors"].shape == (1, 20 * 16 + 10 * 8 + 5 * 4, 4)
    return folder, saved


_ANCHOR_KEYS = ("decoder.anchors", "decoder.valid_mask")


@pytest.mark.parametrize("eval_size", [[128, 160], [192, 192], None], ids=["transposed", "other", "none"])
def test_ema_resumes_a_v2_run_whose_eval_spatial_size_changed(v2_160x128_resume, eval_size, caplog):
    """The EMA follows the checkpointer's rule for the model: the derived anchor buffers are not loaded (another
    shape: no size-mismatch error; same shape but other values: not silently overwritten; absent from the model:
    no unexpected-key error), every other entry and the update count are restored."""
    from tests.projects.rtdetrv2_helpers import build_v2

    folder, saved = v2_160x128_resume
    model = build_v2("tiny", eval_spatial_size=eval_size)
    ema = ModelEMA(model)
    own = {k: v.clone() for k, v in ema.module.state_dict().items() if k in _ANCHOR_KEYS}
    assert bool(own) == (eval_size is not None)
    with caplog.at_level(logging.INFO):
        RTDETRCheckpointer(model, folder, ema=ema).resume_or_load("", resume=True)
    assert ema.updates == 7
    state = ema.module.state_dict()
    assert set(state) == set(saved) - set(_ANCHOR_KEYS) | set(own)
    for k, v in state.items():
        assert torch.equal(v, own[k] if k in own else saved[k]), k
    dropped = [r.getMessage() for r in caplog.records if "ModelEMA: not loading decoder.anchors" in r.getMessage()]
    assert len(dropped) == 1 and "eval_spatial_size" in dropped[0]


def test_ema_resume_with_another_num_classes_is_a_clear_error(v2_160x128_resume):
    """Only the anchor buffers are exempt: the class-dependent heads that the model's own load tolerates (their
    shapes differ) still make the EMA load fail, naming the file and the tensors, before anything is loaded."""
    from tests.projects.rtdetrv2_helpers import build_v2

    folder, saved = v2_160x128_resume
    num_classes = saved["decoder.enc_score_head.weight"].shape[0] + 1
    model = build_v2("tiny", num_classes=num_classes, eval_spatial_size=[160, 128])
    ema = ModelEMA(model)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as excinfo:
        RTDETRCheckpointer(model, folder, ema=ema).resume_or_load("", resume=True)
    message = str(excinfo.value)
    assert message.startswith(os.path.join(folder, "model_0000006.pth") + ": ModelEMA: ")
    classes = num_classes - 1
    assert "7 tensors have another shape (decoder.denoising_class_embed.weight: " in message
    head = f"decoder.enc_score_head.weight: ({classes}, 64) in the checkpoint, ({num_classes}, 64) in the model"
    assert head in message
    assert "eval_spatial_size" in message
    assert ema.updates == 0
    assert all(torch.equal(v, before[k]) for k, v in ema.module.state_dict().items())


def test_ema_load_names_missing_and_unexpected_entries():
    ema = ModelEMA(ToyDetector())
    state = ema.state_dict()
    module = dict(state["module"])
    missing = sorted(module)[0]
    del module[missing]
    module["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=(
        rf"1 model tensors are not in the checkpoint \({re.escape(missing)}\); "
        r"1 checkpoint tensors are not in the model \(extra\.weight\)"
    )):
        ModelEMA(ToyDetector(seed=3)).load_state_dict({**state, "module": module})
