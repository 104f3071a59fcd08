"""StepSeedHook: the random numbers of iteration i depend only on (seed, rank, i)."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
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


def test_seed_follows_the_data_pipelines_rule():
    """train.seed seeds the data pipeline too: the same None -> 0 and the same refusal of negative seeds (a drawn
    seed would make the sample order, and so a resume, irreproducible)."""
    assert StepSeedHook(None).seed == 0
    assert _draws(StepSeedHook(None), 3) == _draws(StepSeedHook(0), 3)
    with pytest.raises(ValueError, match=">= 0"):
        StepSeedHook(-1)
    assert StepSeedHook(3).state_dict() == {}  # nothing in checkpoints: the config's seed is the truth after a resume


def test_step_seeds_use_the_data_pipelines_derivation_and_tags():
    from neo_rtdetr.data import build
    from neo_rtdetr.engine.step_seed import step_seed

    tags = [build._TAG_PERMUTATION, build._TAG_SAMPLE, build._TAG_MULTI_SCALE, build._TAG_STEP]
    assert len(set(tags)) == len(tags)  # one place, distinct domains
    for seed, rank, iteration in [(0, 0, 0), (42, 1, 7), (123456789, 3, 90000), (2**32 - 1, 0, 1)]:
        assert step_seed(seed, rank, iteration) == build._derive_seed(seed, build._TAG_STEP, rank, iteration)
    # the values of the original implementation: checkpoints resume with the same random streams
    assert [step_seed(0, 0, 0), step_seed(42, 1, 7), step_seed(123456789, 3, 90000), step_seed(2**32 - 1, 0, 1)] == [
        8050335724093666056, 6973471991827467849, 3804019565522922736, 6960670051411648202]
