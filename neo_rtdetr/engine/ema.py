"""Model EMA with RT-DETR's decay warm-up, as a detectron2 checkpointable and hook.

The official ``src/optim/ema.py::ModelEMA`` keeps a copy of the model and, after every
iteration, updates every floating-point entry of its state dict (parameters **and** buffers such
as BatchNorm running statistics) as ``ema = d * ema + (1 - d) * model`` with

    d(n) = decay * (1 - exp(-n / warmups))

where ``n`` is the number of updates so far (1 at the first update). Non-float entries (e.g.
``num_batches_tracked``) are left untouched, as in the official code. Evaluation and the
inference checkpoint use the EMA weights.
"""

import contextlib
import copy
import logging
import math
from typing import Any, Dict, Iterator, Optional

import torch
from torch import nn

from detectron2.engine import HookBase

from neo_rtdetr.checkpoint.checkpointer import (
    CheckpointMismatchError,
    describe_mismatch,
    drop_anchor_buffers,
    is_anchor_buffer,
)
from neo_rtdetr.utils.profiling import phase

__all__ = ["ModelEMA", "EMAHook", "ema_weights_for_eval", "unwrap_model"]

logger = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return ``model.module`` for DDP / DataParallel wrappers, else ``model``."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


class ModelEMA:
    """Exponential moving average of a model's state dict, with RT-DETR's decay warm-up.

    Usable as a detectron2/fvcore checkpointable: ``state_dict()`` returns
    ``{"module": <ema state dict>, "updates": n, "decay": d, "warmups": w}`` (the official
    layout plus the two hyper-parameters), and ``load_state_dict`` restores the weights and the
    update count exactly, so ``Checkpointer(model, dir, ema=ema)`` resumes the EMA.

    Attributes:
        module: the EMA copy of the model (eval mode, ``requires_grad=False``); evaluate it directly.
        updates: number of updates performed so far.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9999, warmups: int = 2000):
        """
        Args:
            model: the model to track (a DDP wrapper is unwrapped). Create the EMA after moving the
                model to its device; the copy lives on the same device.
            decay: asymptotic decay.
            warmups: time constant of the decay warm-up in updates (``<= 0`` disables warm-up).
        """
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ModelEMA: decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.warmups = int(warmups)
        self.updates = 0

    def decay_at(self, n: int) -> float:
        """The decay used by the ``n``-th update (``n >= 1``)."""
        if self.warmups <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-n / self.warmups))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the EMA one step towards ``model`` (call once per optimizer step)."""
        self.updates += 1
        d = self.decay_at(self.updates)
        ema_floats, model_floats = self._float_pairs(unwrap_model(model))
        if not ema_floats:
            return
        if hasattr(torch, "_foreach_lerp_"):
            torch._foreach_lerp_(ema_floats, model_floats, 1.0 - d)  # ema + (1 - d) * (model - ema)
        else:  # pragma: no cover - old torch
            torch._foreach_mul_(ema_floats, d)
            torch._foreach_add_(ema_floats, model_floats, alpha=1.0 - d)

    def _float_pairs(self, model: nn.Module):
        """The floating-point state entries of the EMA and of ``model``, paired by state-dict key.

        ``state_dict()`` of a detector walks every module and detaches every tensor (milliseconds of host
        time per call, every step). The entries are resolved once per tracked model to the dicts that hold them (the
        owners' ``_parameters``/``_buffers``); each step reads the current tensor objects from those dicts, so a
        parameter or buffer that was reassigned since is still tracked. The tensors are used as they are (the
        update runs under ``no_grad``): no per-entry ``detach`` (R50, 694 entries: 0.66 ms per step on the development
        machine's CPU, where the detaching loop took 2.5 ms).

        If the model is on another device than the EMA (moved after the EMA was built, or at any later step; the
        first entry is compared, every step), the EMA copy is moved there once instead of copying every tensor
        across devices at every step. An entry whose dtype or device differs from the EMA's is converted.
        """
        if getattr(self, "_owners_of", None) is not model:
            self._resolve_owners(model)
        ema_floats = [owner[name] for owner, name in self._ema_slots]
        model_floats = [owner[name] for owner, name in self._model_slots]
        if ema_floats and ema_floats[0].device != model_floats[0].device:
            logger.info(f"ModelEMA: moving the EMA copy to {model_floats[0].device}, like the model.")
            self.module.to(model_floats[0].device)
            self._resolve_owners(model)
            ema_floats = [owner[name] for owner, name in self._ema_slots]
        for i, (v, src) in enumerate(zip(ema_floats, model_floats)):
            if src.dtype != v.dtype or src.device != v.device:
                model_floats[i] = src.to(device=v.device, dtype=v.dtype)
        return ema_floats, model_floats

    def _resolve_owners(self, model: nn.Module) -> None:
        owners = [
            (_owner(self.module, k), _owner(model, k)) for k, v in self.module.state_dict().items()
            if v.dtype.is_floating_point
        ]
        self._ema_slots = [(getattr(mod, kind), name) for (mod, kind, name), _ in owners]
        self._model_slots = [(getattr(mod, kind), name) for _, (mod, kind, name) in owners]
        self._owners_of = model

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Set the EMA weights to ``model``'s (all entries) without counting an update."""
        self.module.load_state_dict(unwrap_model(model).state_dict())

    def state_dict(self) -> Dict[str, Any]:
        return {
            "module": self.module.state_dict(),
            "updates": self.updates,
            "decay": self.decay,
            "warmups": self.warmups,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the EMA weights and update count. ``decay``/``warmups`` keep the constructor
        values (the config wins); a difference from the saved ones is logged.

        The rule of :class:`~neo_rtdetr.checkpoint.checkpointer.RTDETRCheckpointer` for the model applies: the
        derived RT-DETRv2 anchor buffers (functions of ``eval_spatial_size``) are never loaded, the EMA keeps its
        own, so a run resumed with another ``eval_spatial_size`` loads. Every other entry must match exactly.

        Raises:
            CheckpointMismatchError: (a ``ValueError``) the saved EMA weights miss entries of the model, have
                others, or tensors of another shape; nothing is loaded then.
        """
        state, dropped = drop_anchor_buffers(state_dict["module"])
        _check_ema_state_fits(state, self.module.state_dict())
        if dropped:
            logger.info(
                f"ModelEMA: not loading {', '.join(dropped)} from the checkpoint: they are derived from the "
                "config's eval_spatial_size, the EMA keeps its own."
            )
        # strict=False only for the EMA's own anchor buffers: everything else was checked above
        self.module.load_state_dict(state, strict=False)
        self.updates = int(state_dict.get("updates", 0))
        for key in ("decay", "warmups"):
            if key in state_dict and float(state_dict[key]) != float(getattr(self, key)):
                logger.warning(
                    f"ModelEMA: checkpoint has {key}={state_dict[key]}, keeping the configured "
                    f"{key}={getattr(self, key)}."
                )
        logger.info(f"ModelEMA: loaded EMA weights after {self.updates} updates.")


def _check_ema_state_fits(state: Dict[str, Any], own: Dict[str, Any]) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state`` has exactly ``own``'s entries and shapes.

    ``own``'s derived anchor buffers may be absent from ``state`` (dropped by :func:`drop_anchor_buffers`).
    """
    missing = [k for k in own if k not in state and not is_anchor_buffer(k)]
    unexpected = [k for k in state if k not in own]
    shapes = [
        (k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and isinstance(own[k], torch.Tensor) and v.shape != own[k].shape
    ]
    if not (missing or unexpected or shapes):
        return
    raise CheckpointMismatchError(
        "ModelEMA: the checkpoint's EMA weights (ema.module) do not fit the model: "
        + describe_mismatch(shapes, missing, unexpected) + ". "
        "Resume with the config the run was trained with; only the derived anchor buffers (eval_spatial_size) "
        "may differ."
    )


def _owner(module: nn.Module, key: str):
    """(submodule, "_parameters" or "_buffers", attribute name) that holds state-dict entry ``key``."""
    *path, name = key.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    if name in owner._parameters:
        return owner, "_parameters", name
    if name in owner._buffers:
        return owner, "_buffers", name
    raise KeyError(f"ModelEMA: state-dict entry {key!r} is neither a parameter nor a buffer of its module")


class EMAHook(HookBase):
    """Updates a :class:`ModelEMA` after every training step.

    Register it **before** the checkpointer and evaluation hooks (hooks run in registration order)
    so that checkpoints and evaluations see the EMA of the current step. Steps that the trainer
    skipped (``trainer.last_step_skipped``, e.g. non-finite loss) do not update the EMA.

    In ``before_train`` of a fresh run (``ema.updates == 0``) the EMA is re-copied from the model,
    so weights loaded into the model after the EMA was created (``init_checkpoint``) are tracked.
    """

    def __init__(self, ema: ModelEMA, *, model: Optional[nn.Module] = None):
        """
        Args:
            ema: the EMA to update.
            model: the model to track; defaults to ``trainer.model``.
        """
        self.ema = ema
        self._model = model

    def _tracked(self) -> nn.Module:
        return self._model if self._model is not None else self.trainer.model

    def before_train(self) -> None:
        if self.ema.updates == 0:
            self.ema.copy_from(self._tracked())

    def after_step(self) -> None:
        if getattr(self.trainer, "last_step_skipped", False):
            return
        with phase("ema update"):
            self.ema.update(self._tracked())
        self.trainer.storage.put_scalar("ema_decay", self.ema.decay_at(self.ema.updates), smoothing_hint=False)


@contextlib.contextmanager
def ema_weights_for_eval(ema: ModelEMA, model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily load the EMA weights into ``model`` (e.g. for an ``EvalHook`` that evaluates
    ``trainer.model``); the training weights are restored on exit, even after an exception.

    Simpler alternative: evaluate ``ema.module`` directly.

    Yields:
        ``model`` (unwrapped) holding the EMA weights.
    """
    target = unwrap_model(model)
    backup = {k: v.detach().clone() for k, v in target.state_dict().items()}
    was_training = target.training
    try:
        target.load_state_dict(ema.module.state_dict())
        yield target
    finally:
        target.load_state_dict(backup)
        target.train(was_training)
