"""Epoch-based schedule: the train script turns epochs into iterations from the dataset size and the
total batch size, and fills ``lr_multiplier.max_iter``."""

from detectron2.config import LazyCall as L

from neo_rtdetr.solver.lr_schedule import build_lr_multiplier

lr_multiplier = L(build_lr_multiplier)(max_iter=None, warmup_iters=2000, warmup_factor=0.001, milestones=())
