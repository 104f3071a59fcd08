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

import logging
import random

import numpy as np
import torch

from detectron2.engine import HookBase
from detectron2.utils import comm

from neo_rtdetr.data.build import _TAG_STEP, _derive_seed

__all__ = ["StepSeedHook", "step_seed"]

logger = logging.getLogger(__name__)


def step_seed(seed: int, rank: int, iteration: int) -> int:
    """The seed of ``iteration`` on ``rank``: a 63-bit int derived from the three values (with the data
    pipeline's derivation, under its own domain tag)."""
    return _derive_seed(seed, _TAG_STEP, rank, iteration)


class StepSeedHook(HookBase):
    """Seeds torch, numpy and ``random`` before every training step from (seed, rank, iteration).

    Register it first, so that nothing draws random numbers between the seeding and the step.
    The base seed is part of the trainer's checkpoint (``state_dict``), so a run started with a
    random seed (``seed < 0`` or None) resumes with the same one.
    """

    def __init__(self, seed=0):
        """
        Args:
            seed: base seed (>= 0); None or a negative value draws one at random (logged).
        """
        if seed is None or int(seed) < 0:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
            self._drawn = True
        else:
            self._drawn = False
        self.seed = int(seed)

    def before_train(self) -> None:
        if self._drawn:
            logger.info(f"StepSeedHook: train.seed is negative, drew the base seed {self.seed} (saved in checkpoints)")

    def before_step(self) -> None:
        s = step_seed(self.seed, comm.get_rank(), self.trainer.iter)
        torch.manual_seed(s)  # also seeds every CUDA device
        np.random.seed(s & 0xFFFFFFFF)
        random.seed(s)

    def state_dict(self):
        return {"seed": self.seed}

    def load_state_dict(self, state_dict) -> None:
        self.seed = int(state_dict["seed"])
        self._drawn = False
