"""RTDETRTrainer: lazy loader + resume start, clipping, non-finite skipping, fp32 training, state, CUDA-graph marks."""

import copy
import logging
import math
import sys

import pytest
import torch

from neo_rtdetr.engine import RTDETRTrainer
from tests.engine.toy import ToyDetector, ToyLoader

TRAINER_LOGGER = "neo_rtdetr.engine.trainer"


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_iterator_is_lazy_and_loader_starts_at_resume_iteration():
    loader = ToyLoader()
    model = ToyDetector()
    trainer = RTDETRTrainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.01), precision="fp32")
    assert loader.num_iter_calls == 0, "the iterator must not be created in __init__"
    trainer.train(5, 8)  # as after resuming a checkpoint of iteration 4
    assert loader.set_start_calls == [5]
    assert loader.num_iter_calls == 1
    assert loader.served == [5, 6, 7]


def test_amp_is_disabled_on_cpu_with_one_log_line(caplog):
    model = ToyDetector()
    with caplog.at_level(logging.INFO, logger=TRAINER_LOGGER):
        trainer = RTDETRTrainer(model, ToyLoader(), torch.optim.SGD(model.parameters(), lr=0.01), precision="bf16")
    assert trainer.amp_enabled is False and trainer.grad_scaler is None
    assert sum("AMP (bf16) needs CUDA" in r.getMessage() for r in caplog.records) == 1


def test_invalid_precision_raises():
    model = ToyDetector()
    with pytest.raises(ValueError, match="precision"):
        RTDETRTrainer(model, ToyLoader(), torch.optim.SGD(model.parameters(), lr=0.01), precision="fp8")


def _manual_clipped_update(model, batch, lr, max_norm):
    """Reference: plain SGD step with a manual global-norm clip, on a copy of ``model``."""
    ref = copy.deepcopy(model)
    losses = ref(batch)
    sum(losses.values()).backward()
    grads = {k: p.grad.detach().clone() for k, p in ref.named_parameters()}
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values()))
    coef = min(1.0, max_norm / (norm + 1e-6))
    expected = {k: p.detach() - lr * coef * grads[k] for k, p in ref.named_parameters()}
    return expected, norm, coef


def test_clipping_bounds_the_update_like_a_manual_clip():
    loader = ToyLoader()
    model = ToyDetector()
    expected, norm, coef = _manual_clipped_update(model, loader.batch(0), lr=1.0, max_norm=0.1)
    assert coef < 0.5, "test set-up: the gradient must be large enough for clipping to act"
    before = _params(model)
    trainer = RTDETRTrainer(
        model, loader, torch.optim.SGD(model.parameters(), lr=1.0), precision="fp32", clip_grad_max_norm=0.1
    )
    trainer.train(0, 1)
    after = _params(model)
    for k in expected:
        torch.testing.assert_close(after[k], expected[k], rtol=1e-5, atol=1e-6)
    update_norm = math.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in after))
    assert update_norm == pytest.approx(0.1, rel=1e-3)  # lr 1 * clipped grad of norm 0.1
    logged = trainer.storage.history("grad_norm").values()
    assert logged[-1][0] == pytest.approx(norm, rel=1e-5)  # the norm before clipping


def test_without_clipping_the_update_is_the_raw_gradient():
    loader = ToyLoader()
    model = ToyDetector()
    expected, norm, _ = _manual_clipped_update(model, loader.batch(0), lr=1.0, max_norm=float("inf"))
    trainer = RTDETRTrainer(
        model, loader, torch.optim.SGD(model.parameters(), lr=1.0), precision="fp32", clip_grad_max_norm=None
    )
    trainer.train(0, 1)
    for k, v in _params(model).items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6)
    assert trainer.storage.history("grad_norm").values()[-1][0] == pytest.approx(norm, rel=1e-5)


def test_fp32_training_decreases_the_loss():
    model = ToyDetector()
    trainer = RTDETRTrainer(
        model, ToyLoader(), torch.optim.AdamW(model.parameters(), lr=1e-2), precision="fp32", clip_grad_max_norm=1.0
    )
    trainer.train(0, 150)
    values = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(values) == 150
    assert sum(values[-10:]) / 10 < 0.25 * sum(values[:5]) / 5


def test_nan_loss_step_is_skipped_and_logged_with_image_ids(caplog):
    loader = ToyLoader(nan_iters={1})
    model = ToyDetector()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trainer = RTDETRTrainer(model, loader, optimizer, precision="fp32")
    trainer.train(0, 1)
    good = _params(model)
    with caplog.at_level(logging.WARNING, logger=TRAINER_LOGGER):
        trainer.train(1, 2)  # the NaN batch
    for k, v in _params(model).items():
        assert torch.equal(v, good[k]), f"{k} changed on a skipped step"
    assert all(int(s["step"]) == 1 for s in optimizer.state.values()), "AdamW must not have stepped"
    assert trainer.nonfinite_count == 1 and trainer.last_step_skipped
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1
    ids = [d["image_id"] for d in loader.batch(1)]
    assert "iteration 1" in msgs[0] and str(ids) in msgs[0] and "loss_mse" in msgs[0] and "loss_l1" in msgs[0]
    # a good step resets the counter
    loader.nan_iters.clear()
    trainer.train(2, 3)
    assert trainer.nonfinite_count == 0 and not trainer.last_step_skipped


def test_nonfinite_gradient_with_finite_loss_is_skipped(caplog):
    model = ToyDetector()
    before = _params(model)
    trainer = RTDETRTrainer(
        model, ToyLoader(bad_grad_iters={0}), torch.optim.SGD(model.parameters(), lr=0.1), precision="fp32"
    )
    with caplog.at_level(logging.WARNING, logger=TRAINER_LOGGER):
        trainer.train(0, 1)
    assert all(torch.equal(v, before[k]) for k, v in _params(model).items())
    assert any("Non-finite gradient norm at iteration 0" in r.getMessage() for r in caplog.records)


def test_consecutive_nonfinite_steps_raise_after_the_limit():
    model = ToyDetector()
    trainer = RTDETRTrainer(
        model, ToyLoader(nan_iters=set(range(100))), torch.optim.SGD(model.parameters(), lr=0.1),
        precision="fp32", max_consecutive_nonfinite=3,
    )
    with pytest.raises(FloatingPointError, match="3 consecutive iterations") as info:
        trainer.train(0, 10)
    assert trainer.iter == 2  # raised at the third bad step, not before
    assert "image_ids=" in str(info.value)


def test_interleaved_good_steps_prevent_the_error():
    model = ToyDetector()
    nan = {0, 1, 3, 4, 6, 7}  # never 3 in a row
    trainer = RTDETRTrainer(
        model, ToyLoader(nan_iters=nan), torch.optim.SGD(model.parameters(), lr=0.01),
        precision="fp32", max_consecutive_nonfinite=3,
    )
    trainer.train(0, 9)
    assert trainer.iter == 9 and trainer.nonfinite_count == 0


def test_grad_scaler_path_unscales_before_clipping_and_skips_on_nan():
    # A CPU GradScaler exercises the fp16 code path (scale -> unscale_ -> clip -> step/update)
    # without CUDA; autocast stays off on CPU.
    loader = ToyLoader(nan_iters={1})
    model = ToyDetector()
    expected, _, _ = _manual_clipped_update(model, loader.batch(0), lr=1.0, max_norm=0.1)
    trainer = RTDETRTrainer(
        model, loader, torch.optim.SGD(model.parameters(), lr=1.0), precision="fp32", clip_grad_max_norm=0.1
    )
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer.train(0, 1)
    for k, v in _params(model).items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6)
    assert trainer.storage.history("loss_scale").values()[-1][0] == 1024.0
    good = _params(model)
    trainer.train(1, 2)  # NaN loss: skipped, scale reduced
    assert all(torch.equal(v, good[k]) for k, v in _params(model).items())
    assert trainer.grad_scaler.get_scale() == 512.0


def test_state_dict_round_trip():
    model = ToyDetector()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = RTDETRTrainer(model, ToyLoader(nan_iters={3}), optimizer, precision="fp32")
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    trainer.train(0, 4)  # iteration 3 is skipped -> count 1, scale 128
    state = trainer.state_dict()
    assert state["nonfinite_count"] == 1 and state["iteration"] == 4
    assert state["grad_scaler"]["scale"] == 128.0

    model2 = ToyDetector(seed=1)
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    trainer2 = RTDETRTrainer(model2, ToyLoader(), optimizer2, precision="fp32")
    trainer2.grad_scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    trainer2.load_state_dict(copy.deepcopy(state))
    assert trainer2.iter == 4 and trainer2.nonfinite_count == 1
    assert trainer2.grad_scaler.get_scale() == 128.0
    s1, s2 = optimizer.state_dict()["state"], optimizer2.state_dict()["state"]
    assert s1.keys() == s2.keys() and all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)


class _ShapedLosses(ToyDetector):
    """ToyDetector whose losses have other one-element shapes (or, with ``bad``, one that is not a scalar)."""

    def __init__(self, bad: bool = False):
        super().__init__()
        self.bad = bad

    def forward(self, batch):
        losses = super().forward(batch)
        losses["loss_mse"] = losses["loss_mse"].reshape(1)
        losses["loss_l1"] = losses["loss_l1"].reshape(1, 1)
        if self.bad:
            losses["loss_vec"] = torch.stack([losses["loss_l1"].reshape(()), losses["loss_l1"].reshape(())])
        return losses


def test_one_element_losses_of_any_shape_are_summed_and_logged():
    loader = ToyLoader()
    reference = ToyDetector()
    with torch.no_grad():
        expected = {k: float(v) for k, v in reference(loader.batch(0)).items()}
    model = _ShapedLosses()
    trainer = RTDETRTrainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.01), precision="fp32")
    trainer.train(0, 1)
    for key, value in expected.items():
        assert trainer.storage.history(key).values()[-1][0] == pytest.approx(value, rel=1e-6)
    assert trainer.storage.history("total_loss").values()[-1][0] == pytest.approx(sum(expected.values()), rel=1e-6)


def test_a_loss_with_several_elements_is_an_error_naming_it():
    model = _ShapedLosses(bad=True)
    trainer = RTDETRTrainer(model, ToyLoader(), torch.optim.SGD(model.parameters(), lr=0.01), precision="fp32")
    with pytest.raises(ValueError, match=r"loss 'loss_vec' has shape \(2,\)"):
        trainer.train(0, 1)


def _toy_trainer():
    model = ToyDetector()
    return RTDETRTrainer(model, ToyLoader(), torch.optim.SGD(model.parameters(), lr=1e-3), precision="fp32")


def test_every_step_is_marked_for_cudagraph_trees_once_they_are_loaded():
    from torch._inductor import cudagraph_trees

    before = cudagraph_trees.MarkStepBox.mark_step_counter
    _toy_trainer().train(0, 3)
    assert cudagraph_trees.MarkStepBox.mark_step_counter == before - 3


def test_steps_are_not_marked_before_cudagraph_trees_are_loaded(monkeypatch):
    # without the module no CUDA-graph tree exists; marking would only import it (seconds)
    monkeypatch.delitem(sys.modules, "torch._inductor.cudagraph_trees", raising=False)

    def fail():
        raise AssertionError("cudagraph_mark_step_begin called")

    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", fail)
    _toy_trainer().train(0, 2)
    assert "torch._inductor.cudagraph_trees" not in sys.modules
