"""Per-iteration seeding of the global random generators, so that a resumed run draws exactly the
random numbers an uninterrupted run draws.

The model draws random numbers from torch's global generator during training (the contrastive
denoising groups' label flips and box noise, as in the official code). A checkpoint does not hold
that generator's state, and a restarted process re-seeds it from ``train.seed``, so after
``--resume`` the denoising noise would differ from the uninterrupted run's. :class:`StepSeedHook`
re-seeds torch (CPU and CUDA), numpy and ``random`` before every step from
(seed, rank, iteration): the random stream of iteration ``i`` depends on nothing else, on every
rank, whatever happened before. The data pipeline has its own per-sample seeds
(:mod:`neo_rtdetr.data.build`).
"""

import random

import numpy as np
import torch

from detectron2.engine import HookBase
from detectron2.utils import comm

from neo_rtdetr.data.build import _TAG_STEP, _check_seed, _derive_seed

__all__ = ["StepSeedHook", "step_seed"]


def step_seed(seed: int, rank: int, iteration: int) -> int:
    """The seed of ``iteration`` on ``rank``: a 63-bit int derived from the three values (with the data
    pipeline's derivation, under its own domain tag)."""
    return _derive_seed(seed, _TAG_STEP, rank, iteration)


class StepSeedHook(HookBase):
    """Seeds torch, numpy and ``random`` before every training step from (seed, rank, iteration).

    Register it first, so that nothing draws random numbers between the seeding and the step. The base seed is
    ``train.seed``, the data pipeline's seed too (same rule: None is 0, negative is refused): it is not stored in
    checkpoints, so a resumed run with another ``train.seed`` changes the model's and the data's streams together.
    """

    def __init__(self, seed=0):
        """
        Args:
            seed: base seed (>= 0; None means 0).
        """
        self.seed = _check_seed(seed)

    def before_step(self) -> None:
        s = step_seed(self.seed, comm.get_rank(), self.trainer.iter)
        torch.manual_seed(s)  # also seeds every CUDA device
        np.random.seed(s & 0xFFFFFFFF)
        random.seed(s)
