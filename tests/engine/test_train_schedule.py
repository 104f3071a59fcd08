"""TrainSchedule: epochs -> iterations for max_iter and the eval / checkpoint periods (0 = only at the end)."""

import pytest
from omegaconf import OmegaConf

from detectron2.engine import hooks

from neo_rtdetr.engine.train_net import TrainSchedule


def _schedule(iters_per_epoch=10, **train):
    base = dict(epochs=3, max_iter=None, eval_period_epochs=1, checkpoint_period_epochs=1)
    return TrainSchedule(OmegaConf.create({"train": {**base, **train}}), iters_per_epoch)


def test_periods_in_epochs_become_iterations():
    s = _schedule(eval_period_epochs=2, checkpoint_period_epochs=0.5)
    assert (s.max_iter, s.eval_period, s.checkpoint_period) == (30, 20, 5)
    assert _schedule(max_iter=7).max_iter == 7


@pytest.mark.parametrize("value", [0, None])
def test_zero_period_means_only_at_the_end(value):
    s = _schedule(eval_period_epochs=value, checkpoint_period_epochs=value)
    assert (s.eval_period, s.checkpoint_period) == (0, 0)


def test_a_tiny_positive_period_is_one_iteration_not_end_only():
    assert _schedule(eval_period_epochs=0.01, checkpoint_period_epochs=0.01).checkpoint_period == 1
    assert _schedule(eval_period_epochs=0.01).eval_period == 1


@pytest.mark.parametrize("value", [-1, "two", True])
def test_bad_periods_are_refused(value):
    with pytest.raises(ValueError, match="checkpoint_period_epochs"):
        _schedule(checkpoint_period_epochs=value)


class _RecordingCheckpointer:
    path_manager = None  # (read by the hook; used only with max_to_keep)

    def __init__(self):
        self.saved = []

    def save(self, name, **_):
        self.saved.append(name)


def _saved_names(schedule):
    ckpt = _RecordingCheckpointer()
    hook = hooks.PeriodicCheckpointer(ckpt, schedule.checkpoint_hook_period, max_iter=schedule.max_iter)
    for it in range(schedule.max_iter):
        hook.step(it)
    return ckpt.saved


def test_checkpoint_period_zero_saves_only_the_final_model():
    # (it used to become a period of 1: a checkpoint after every iteration)
    assert _saved_names(_schedule(checkpoint_period_epochs=0)) == ["model_final"]


def test_checkpoint_every_epoch_and_at_the_end():
    assert _saved_names(_schedule(checkpoint_period_epochs=1)) == [
        "model_0000009", "model_0000019", "model_0000029", "model_final"]
