"""Shared by the tests that compare two ways of computing the same training step (losses and gradients)."""

import copy
from typing import Dict, Tuple

import torch
from torch import Tensor

__all__ = ["randomized_tiny_model", "loss_and_gradients", "assert_same_losses_and_gradients"]


def randomized_tiny_model(num_classes: int = 6, seed: int = 1):
    """The tiny model (6 classes by default) in training mode with random non-trivial weights and BN statistics
    (``randomize``): the common starting point of two ways of computing a step."""
    from .hf_oracle import randomize
    from .test_rtdetr import tiny_model

    torch.manual_seed(0)
    model = tiny_model(num_classes=num_classes)
    randomize(model, seed=seed)
    return model.train()


def loss_and_gradients(model, batch, seed: int) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """One forward/backward of ``model`` on a copy of ``batch`` after ``torch.manual_seed(seed)`` (the denoising
    draws): the detached loss terms and every parameter's gradient (then cleared)."""
    torch.manual_seed(seed)
    losses = model(copy.deepcopy(batch))
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in losses.items()}, grads


def assert_same_losses_and_gradients(got, ref, *, loss_rtol=1e-5, grad_rtol=1e-4) -> None:
    """``got`` and ``ref`` (results of :func:`loss_and_gradients`) hold the same terms and parameters with equal
    values. The gradients' absolute tolerance is 1e-6 of the largest gradient: some gradients are zero up to rounding
    (~1e-7)."""
    (losses, grads), (ref_losses, ref_grads) = got, ref
    assert losses.keys() == ref_losses.keys()
    for k in ref_losses:
        torch.testing.assert_close(losses[k], ref_losses[k], rtol=loss_rtol, atol=1e-6, msg=k)
    assert grads.keys() == ref_grads.keys()
    atol = 1e-6 * max(float(g.abs().max()) for g in ref_grads.values())
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=grad_rtol, atol=atol, msg=n)
