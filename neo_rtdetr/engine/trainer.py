"""RTDETRTrainer: detectron2's SimpleTrainer with AMP (bf16/fp16), global grad-norm clipping,
non-finite-step skipping and a lazily created, resumable data-loader iterator.

detectron2 v0.6's ``AMPTrainer`` is fp16-only, uses the deprecated ``torch.cuda.amp`` API,
asserts CUDA and has no clipping; its ``SimpleTrainer`` creates the loader iterator in
``__init__`` (before a resume could tell the loader where to start). This trainer fixes all of
that while keeping v0.6's hook/metrics/checkpoint contract (``_write_metrics(loss_dict, data_time)``,
``state_dict()`` with ``iteration``/``hooks``/``optimizer``).
"""

import logging
import sys
import time
from typing import Any, Dict, Iterator, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

from detectron2.engine import SimpleTrainer
from detectron2.engine.train_loop import TrainerBase

from neo_rtdetr.utils.profiling import phase

__all__ = ["RTDETRTrainer"]

logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _model_device_type(model: nn.Module) -> str:
    for p in model.parameters():
        return p.device.type
    for b in model.buffers():
        return b.device.type
    return "cpu"


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _loss_scalar(key: str, value: torch.Tensor) -> torch.Tensor:
    """A loss term as a 0-dim fp32 tensor: shape [] or any one-element shape (e.g. [1] from a custom model)."""
    if value.numel() != 1:
        raise ValueError(
            f"RTDETRTrainer: loss {key!r} has shape {tuple(value.shape)}; every loss must be a scalar (one element)"
        )
    return value.float().reshape(())


def _mark_cudagraph_step() -> None:
    """``torch.compiler.cudagraph_mark_step_begin()`` (a new iteration for CUDA-graph trees) when they can exist.

    CUDA-graph trees (``torch.compile`` mode "reduce-overhead") live in ``torch._inductor.cudagraph_trees``;
    marking a step there decrements a counter (microseconds). Until something has imported that module no tree
    exists, and the call would only import it (1-3 s once, on a CPU run too): then nothing is done.
    """
    if "torch._inductor.cudagraph_trees" in sys.modules:
        torch.compiler.cudagraph_mark_step_begin()


class RTDETRTrainer(SimpleTrainer):
    """Single-optimizer trainer for RT-DETR-style models that return a dict of scalar losses.

    One step: next batch -> forward (under ``torch.autocast`` when AMP is active) -> sum the
    losses in fp32 -> backward (scaled with a ``GradScaler`` for fp16) -> unscale -> global
    grad-norm clipping over all trainable parameters -> optimizer step. The total grad norm
    (before clipping) is logged as ``grad_norm`` every step, and ``loss_scale`` with fp16.

    A step whose total loss or grad norm is not finite is skipped (no optimizer update, no loss
    metrics) with a WARNING naming the iteration, the batch's ``image_id``\\ s and the loss terms.
    After ``max_consecutive_nonfinite`` skipped steps in a row a ``FloatingPointError`` is raised;
    any good step resets the count. With fp16, a gradient overflow is such a skipped step too
    (the scaler lowers its scale); isolated overflows are normal, long runs of them are not.
    Under DDP the skip decision is all-reduced, so every rank skips the same steps.

    Every step starts with ``torch.compiler.cudagraph_mark_step_begin()`` once CUDA-graph trees are in use (a
    model compiled with ``mode="reduce-overhead"``, see ``train.compile``): the graphs' outputs of the previous step
    may then be overwritten, and the trees need not guess where an iteration begins.

    ``trainer.last_step_skipped`` tells hooks (e.g. :class:`~neo_rtdetr.engine.EMAHook`)
    whether the last step was skipped.

    The data-loader iterator is created at the first ``run_step``. In ``before_train``, if the
    loader has ``set_start_iter``, it is called with ``self.start_iter`` (the resume iteration)
    so a resumed run continues the exact batch sequence.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        *,
        precision: str = "bf16",
        amp: bool = True,
        clip_grad_max_norm: Optional[float] = 0.1,
        max_consecutive_nonfinite: int = 10,
    ):
        """
        Args:
            model: module that takes a batch (list of dicts) and returns a dict of scalar losses
                (or one scalar tensor) in training mode. May be DDP-wrapped.
            data_loader: iterable of batches; optionally with ``set_start_iter(int)``.
            optimizer: a torch optimizer over the model's parameters.
            precision: autocast dtype when AMP is active: "bf16", "fp16" or "fp32".
            amp: enable mixed precision. Only active on CUDA; on CPU it is switched off with one
                log line (the forward then runs in fp32).
            clip_grad_max_norm: max global L2 norm of the gradients (RT-DETR: 0.1); ``None`` or
                ``<= 0`` disables clipping (the norm is still computed and logged).
            max_consecutive_nonfinite: raise after this many skipped steps in a row.
        """
        if precision not in _DTYPES:
            raise ValueError(f"RTDETRTrainer: precision must be one of {sorted(_DTYPES)}, got {precision!r}")
        if max_consecutive_nonfinite < 1:
            raise ValueError("RTDETRTrainer: max_consecutive_nonfinite must be >= 1")
        # Not SimpleTrainer.__init__: v0.6 creates the data-loader iterator there.
        TrainerBase.__init__(self)
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_iter: Optional[Iterator] = None
        self.optimizer = optimizer

        self.precision = precision
        self.clip_grad_max_norm = (
            float(clip_grad_max_norm) if clip_grad_max_norm is not None and clip_grad_max_norm > 0 else None
        )
        self.max_consecutive_nonfinite = int(max_consecutive_nonfinite)
        self.device_type = _model_device_type(model)
        self.amp_enabled = bool(amp) and precision != "fp32"
        if self.amp_enabled and self.device_type != "cuda":
            logger.info(
                f"RTDETRTrainer: AMP ({precision}) needs CUDA; the model is on '{self.device_type}', "
                "so AMP is disabled and training runs in fp32."
            )
            self.amp_enabled = False
        self.autocast_dtype = _DTYPES[precision]
        self.grad_scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler("cuda") if self.amp_enabled and precision == "fp16" else None
        )
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.nonfinite_count = 0
        self.last_step_skipped = False
        logger.info(
            f"RTDETRTrainer: device={self.device_type}, amp={self.amp_enabled}"
            + (f" ({precision})" if self.amp_enabled else "")
            + f", grad clip max norm={self.clip_grad_max_norm}, "
            f"max consecutive non-finite steps={self.max_consecutive_nonfinite}"
        )

    # ----------------------------------------------------------------------------- data loading
    @property
    def _data_loader_iter(self) -> Iterator:
        """The data-loader iterator, created on first use (v0.6 creates it in ``__init__``)."""
        if self._data_iter is None:
            self._data_iter = iter(self.data_loader)
        return self._data_iter

    @_data_loader_iter.setter
    def _data_loader_iter(self, value: Optional[Iterator]) -> None:
        self._data_iter = value

    def before_train(self) -> None:
        set_start_iter = getattr(self.data_loader, "set_start_iter", None)
        if callable(set_start_iter):
            set_start_iter(self.start_iter)
            # An iterator made before (e.g. by an earlier train() call) would ignore the new start.
            self._data_iter = None
            logger.info(f"RTDETRTrainer: data loader starts at iteration {self.start_iter}.")
        super().before_train()

    # ----------------------------------------------------------------------------- one step
    def _autocast(self):
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype, enabled=self.amp_enabled)

    def _grad_norm_and_clip(self) -> torch.Tensor:
        params = [p for p in self._params if p.grad is not None]
        if not params:
            return torch.zeros(())
        if self.clip_grad_max_norm is not None:
            return torch.nn.utils.clip_grad_norm_(params, self.clip_grad_max_norm)
        get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
        if get_total_norm is not None:
            return get_total_norm([p.grad for p in params])
        return torch.nn.utils.clip_grad_norm_(params, float("inf"))

    def run_step(self) -> None:
        assert self.model.training, "[RTDETRTrainer] model was changed to eval mode!"
        _mark_cudagraph_step()
        start = time.perf_counter()
        with phase("data"):
            data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with phase("forward"), self._autocast():
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        values = torch.stack([_loss_scalar(k, v) for k, v in loss_dict.items()])
        losses = values.sum()

        self.optimizer.zero_grad(set_to_none=True)
        # Always backward, even for a non-finite loss: DDP ranks must join the gradient all-reduce.
        with phase("backward"):
            if self.grad_scaler is not None:
                self.grad_scaler.scale(losses).backward()
                self.grad_scaler.unscale_(self.optimizer)
            else:
                losses.backward()
        with phase("grad clip"):
            grad_norm = self._grad_norm_and_clip().detach().to(losses.device, torch.float32)

        bad = torch.stack([~torch.isfinite(losses.detach()), ~torch.isfinite(grad_norm)]).float()
        if _world_size() > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        # the step's one host transfer: skip flags, loss terms and grad norm together
        with phase("host transfer"):
            host = torch.cat([bad, values.detach(), grad_norm.reshape(1)]).cpu()
        loss_bad, grad_bad = bool(host[0]), bool(host[1])
        host_losses = dict(zip(loss_dict, host[2:-1].unbind()))
        grad_norm_value = float(host[-1])

        if loss_bad or grad_bad:
            self._skip_step(data, host_losses, grad_norm_value, loss_bad)
            return

        self.nonfinite_count = 0
        self.last_step_skipped = False
        self._write_metrics(host_losses, data_time)
        storage = self.storage
        storage.put_scalar("grad_norm", grad_norm_value)
        with phase("optimizer"):
            if self.grad_scaler is not None:
                storage.put_scalar("loss_scale", float(self.grad_scaler.get_scale()), smoothing_hint=False)
                self.grad_scaler.step(self.optimizer)
                self.grad_scaler.update()
            else:
                self.optimizer.step()

    def _skip_step(self, data: Any, loss_dict: Mapping[str, torch.Tensor], grad_norm: float, loss_bad: bool) -> None:
        self.nonfinite_count += 1
        self.last_step_skipped = True
        scale_note = ""
        if self.grad_scaler is not None:
            old = self.grad_scaler.get_scale()
            self.grad_scaler.update()  # records the overflow; lowers the scale when grads are inf
            scale_note = f", fp16 loss scale {old:g} -> {self.grad_scaler.get_scale():g}"
        if isinstance(data, (list, tuple)):
            image_ids = [d.get("image_id") if isinstance(d, Mapping) else None for d in data]
        else:
            image_ids = "unknown (batch is not a list of dicts)"
        terms = {k: float(v.detach()) for k, v in loss_dict.items()}
        what = "loss" if loss_bad else "gradient norm"
        logger.warning(
            f"Non-finite {what} at iteration {self.iter}: optimizer step skipped "
            f"({self.nonfinite_count}/{self.max_consecutive_nonfinite} in a row{scale_note}). "
            f"image_ids={image_ids}; total_loss={sum(terms.values())}; grad_norm={grad_norm}; "
            f"loss terms={terms}"
        )
        self.storage.put_scalar("nonfinite_skips", float(self.nonfinite_count), smoothing_hint=False)
        if self.nonfinite_count >= self.max_consecutive_nonfinite:
            raise FloatingPointError(
                f"Training diverged: {self.nonfinite_count} consecutive iterations (last: {self.iter}) had a "
                f"non-finite {what}. Last batch image_ids={image_ids}, loss terms={terms}, "
                f"grad_norm={grad_norm}. Lower the learning rate, check the data/annotations of these images, "
                f"or use precision='bf16'/'fp32' instead of fp16."
            )

    # ----------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        ret["nonfinite_count"] = self.nonfinite_count
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.nonfinite_count = int(state_dict.get("nonfinite_count", 0))
        if self.grad_scaler is not None:
            if "grad_scaler" in state_dict:
                self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
            else:
                logger.warning("RTDETRTrainer: checkpoint has no 'grad_scaler' state; the fp16 scaler starts fresh.")
        elif "grad_scaler" in state_dict:
            logger.info("RTDETRTrainer: ignoring the checkpoint's 'grad_scaler' state (not training in fp16).")
