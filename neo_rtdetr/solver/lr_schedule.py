"""Learning-rate multiplier of the RT-DETR recipe: linear warm-up, then constant (or step decay)."""

from typing import Sequence

from fvcore.common.param_scheduler import LinearParamScheduler, MultiStepParamScheduler

__all__ = ["build_lr_multiplier"]


def build_lr_multiplier(
    *,
    max_iter: int,
    warmup_iters: int = 2000,
    warmup_factor: float = 0.001,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
):
    """The multiplier detectron2's ``LRScheduler`` hook applies to every parameter group's lr.

    The official recipe (v2, and Paddle v1) warms up linearly over 2000 iterations and then keeps
    the lr constant (its MultiStepLR milestone, epoch 1000, is never reached).

    Args:
        max_iter: total training iterations (filled in by the train script from the epochs).
        warmup_iters: linear warm-up length in iterations (capped at ``max_iter``).
        warmup_factor: multiplier at iteration 0.
        milestones: iterations at which the lr is multiplied by ``gamma`` (empty: constant).
        gamma: decay factor at each milestone.
    """
    from detectron2.solver import WarmupParamScheduler

    if max_iter <= 0:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    milestones = sorted(int(m) for m in milestones if 0 < int(m) < max_iter)
    if milestones:
        values = [gamma**i for i in range(len(milestones) + 1)]
        scheduler = MultiStepParamScheduler(values=values, milestones=milestones, num_updates=max_iter)
    else:
        # (fvcore's ConstantParamScheduler rejects where == 1.0, reached after the last step)
        scheduler = MultiStepParamScheduler(values=[1.0], milestones=[], num_updates=max_iter)
    if max_iter < 2:
        return scheduler if warmup_iters <= 0 else LinearParamScheduler(warmup_factor, 1.0)
    if warmup_iters <= 0:  # no warm-up; the composite scheduler still handles the final where == 1.0
        warmup_factor, warmup_iters = 1.0, 1
    # a run shorter than the warm-up warms up over the whole run
    warmup_iters = min(warmup_iters, max_iter - 1)
    return WarmupParamScheduler(scheduler, warmup_factor, warmup_iters / max_iter, "linear")
