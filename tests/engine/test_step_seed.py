"""StepSeedHook: the random numbers of iteration i depend only on (seed, rank, i)."""

import random
from types import SimpleNamespace

import numpy as np
import torch

from neo_rtdetr.engine.step_seed import StepSeedHook


def _draws(hook, iteration):
    hook.trainer = SimpleNamespace(iter=iteration)
    hook.before_step()
    return torch.rand(4).tolist(), np.random.rand(2).tolist(), random.random()


def test_same_iteration_same_numbers_whatever_happened_before():
    hook = StepSeedHook(7)
    first = _draws(hook, 12)
    torch.rand(1000), np.random.rand(5), random.random()  # an earlier iteration, a restart...: other draws
    assert _draws(StepSeedHook(7), 12) == first
    assert _draws(hook, 13) != first and _draws(StepSeedHook(8), 12) != first


def test_a_drawn_seed_is_saved_and_restored():
    hook = StepSeedHook(-1)
    state = hook.state_dict()
    restored = StepSeedHook(None)
    restored.load_state_dict(state)
    assert restored.seed == hook.seed and _draws(restored, 3) == _draws(hook, 3)
