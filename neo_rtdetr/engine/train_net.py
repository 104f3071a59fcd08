"""Training and evaluation driven by a LazyConfig: what tools/lazyconfig_train_net.py runs.

Config contract (see configs/common/train.py): ``model``, ``optimizer`` (its ``params.model`` is
filled here), ``lr_multiplier`` (its ``max_iter`` is filled here), ``dataloader.{datasets, train,
test, evaluator}`` and ``train.*``. Training is epoch-based: iterations per epoch come from the
train loader (dataset size // total batch size).
"""

import logging
import os
from typing import Dict, Optional, Sequence

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from detectron2.config import instantiate
from detectron2.engine import HookBase, create_ddp_model, hooks
from detectron2.engine.defaults import default_writers
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer
from neo_rtdetr.data.catalog import register_datasets_from_config
from neo_rtdetr.engine.compile import CUDA_GRAPH_MODES, compile_model
from neo_rtdetr.engine.ema import EMAHook, ModelEMA, unwrap_model
from neo_rtdetr.engine.host_threads import apply_cpu_threads
from neo_rtdetr.engine.loss_trace import LOSS_TRACE_FILE, LossTraceWriter
from neo_rtdetr.engine.preflight import check_evaluation_data, check_training_data
from neo_rtdetr.engine.profiler_hook import build_profiler_hook
from neo_rtdetr.engine.step_seed import StepSeedHook
from neo_rtdetr.engine.trainer import RTDETRTrainer

__all__ = [
    "resolve_device",
    "check_sync_bn_device",
    "compile_settings",
    "COMPILE_MODES",
    "build_model",
    "wrap_ddp",
    "do_test",
    "do_train",
    "TrainSchedule",
]

logger = logging.getLogger("neo_rtdetr")


def _device_of(cfg) -> str:
    """The device ``train.device`` resolves to: itself, or ``"cpu"`` when it asks for CUDA and there is none."""
    device = cfg.train.get("device", "cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    return device


def resolve_device(cfg) -> str:
    """``train.device``, falling back to CPU (said once) when CUDA is asked for but absent."""
    asked, device = cfg.train.get("device", "cuda"), _device_of(cfg)
    if device != asked:
        logger.warning("train.device=%s but CUDA is not available: running on CPU (AMP off)", asked)
    return device


def _not_on_cuda(cfg) -> Optional[str]:
    """None when the model would be on CUDA, else where it would be and why: ``'cpu' (train.device='cuda' but CUDA
    is not available)``."""
    device = _device_of(cfg)
    if str(device).startswith("cuda"):
        return None
    asked = cfg.train.get("device", "cuda")
    reason = f"train.device={asked!r}" if device == asked else f"train.device={asked!r} but CUDA is not available"
    return f"'{device}' ({reason})"


def check_sync_bn_device(cfg) -> None:
    """Refuse ``train.sync_bn`` for a multi-process run whose model would not be on CUDA, from the config alone.

    :func:`do_train` calls it first, so the refusal comes before the datasets, the model and the data loader
    are built; :func:`wrap_ddp` still checks the built model (for callers that build their own).

    Raises:
        ValueError: several processes, ``train.sync_bn`` and ``train.device`` not CUDA (or CUDA asked for but
            not available): PyTorch's SyncBatchNorm, and DDP around it, do not run on CPU.
    """
    if comm.get_world_size() <= 1 or not cfg.train.get("sync_bn", False):
        return
    not_cuda = _not_on_cuda(cfg)
    if not_cuda:
        raise ValueError(
            f"train.sync_bn=True needs CUDA, but the model would be on {not_cuda} with "
            f"{comm.get_world_size()} processes: PyTorch's SyncBatchNorm (and DDP around it) does not run on CPU. "
            "Set train.sync_bn=False for CPU (gloo) runs."
        )


#: ``train.compile.mode`` values (``torch.compile`` modes); the ones that record CUDA graphs need CUDA
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


def compile_settings(cfg) -> Optional[Dict]:
    """``train.compile`` checked from the config alone: None when it is off (or absent), else ``{"mode", "backend"}``.

    :func:`do_train` calls it first, before anything is built, and then compiles the model with
    :func:`~neo_rtdetr.engine.compile.compile_model` (backbone, encoder, decoder, criterion).

    Raises:
        ValueError: ``train.compile.enabled`` is not a bool; ``train.compile.mode`` is not one of
            :data:`COMPILE_MODES`; a mode other than None/"default" with a backend other than "inductor" (the
            other backends ignore it); ``train.compile.backend`` is not a registered ``torch.compile`` backend;
            a CUDA-graph mode ("reduce-overhead", "max-autotune") while the model would not be on CUDA.
    """
    opts = cfg.train.get("compile", None)
    if opts is None:
        return None
    enabled = opts.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ValueError(f"train.compile.enabled must be True or False, got {enabled!r}")
    if not enabled:
        return None
    mode, backend = opts.get("mode", None), opts.get("backend", "inductor")
    if mode not in COMPILE_MODES:
        raise ValueError(
            f"train.compile.mode={mode!r} is not a torch.compile mode; choose one of "
            + ", ".join(repr(m) for m in COMPILE_MODES)
            + (" (None is written null in a command-line override: train.compile.mode=null)"
               if str(mode).lower() == "none" else "")
        )
    if isinstance(backend, str):
        backends = torch._dynamo.list_backends(exclude_tags=())
        if backend not in backends:
            raise ValueError(f"train.compile.backend={backend!r} is not a torch.compile backend; known: {backends}")
    if mode not in (None, "default") and backend != "inductor":
        raise ValueError(
            f"train.compile.mode={mode!r} applies to backend 'inductor' only (train.compile.backend={backend!r} "
            "would ignore it): set train.compile.mode=null (None) or train.compile.backend=inductor"
        )
    not_cuda = _not_on_cuda(cfg) if mode in CUDA_GRAPH_MODES else None
    if not_cuda:
        raise ValueError(
            f"train.compile.mode={mode!r} records CUDA graphs and needs CUDA, but the model would be on "
            f"{not_cuda}. On CPU use train.compile.mode=null (None; or 'default' / "
            "'max-autotune-no-cudagraphs'), or train.compile.enabled=False."
        )
    return {"mode": mode, "backend": backend}


def build_model(cfg) -> torch.nn.Module:
    """Instantiate ``cfg.model`` on the configured device (SyncBN under DDP if ``train.sync_bn``).

    With several processes and ``train.sync_bn``, every ``BatchNorm*d`` becomes a ``SyncBatchNorm`` here,
    i.e. before the optimizer, the EMA copy and the DDP wrapper are built from the model.
    """
    register_datasets_from_config(cfg.dataloader.get("datasets"))
    model = instantiate(cfg.model)
    if comm.get_world_size() > 1:
        if cfg.train.get("sync_bn", False):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules()):
            logger.warning(
                "train.sync_bn=False with %d processes: each rank keeps its own BatchNorm running statistics "
                "(batch statistics over its own images only); checkpoints hold rank 0's, and each rank "
                "evaluates its shard with its own. The official recipe uses SyncBN.",
                comm.get_world_size(),
            )
    model.to(resolve_device(cfg))
    logger.info("Model:\n%s", model)
    return model


def do_test(cfg, model, *, tag: str = "") -> dict:
    """COCO evaluation of ``model`` on ``dataloader.test``; prints the AP table. Returns the results."""
    if "evaluator" not in cfg.dataloader:
        return {}
    register_datasets_from_config(cfg.dataloader.get("datasets"))
    was_training = model.training
    test_loader = instantiate(cfg.dataloader.test)  # loads (and validates) the evaluation dataset
    check_evaluation_data(cfg, unwrap_model(model))
    results = inference_on_dataset(model, test_loader, instantiate(cfg.dataloader.evaluator))
    model.train(was_training)
    if comm.is_main_process() and results:
        logger.info("Evaluation results%s:", f" ({tag})" if tag else "")
        print_csv_format(results)
    return results


class _UntaggedSaves:
    """A checkpointer view whose saves do not move the ``last_checkpoint`` tag (for model_best)."""

    def __init__(self, checkpointer: RTDETRCheckpointer):
        self._checkpointer = checkpointer

    def save(self, name: str, **kwargs) -> None:
        self._checkpointer.save(name, tag_last_checkpoint=False, **kwargs)

    def __getattr__(self, item):
        return getattr(self._checkpointer, item)


class TrainSchedule:
    """Epochs -> iterations: max_iter, eval and checkpoint periods."""

    def __init__(self, cfg, iters_per_epoch: int):
        if iters_per_epoch < 1:
            raise ValueError(
                f"the training set is smaller than one batch ({iters_per_epoch} iterations per epoch): "
                "lower dataloader.train.total_batch_size or add data"
            )
        self.iters_per_epoch = iters_per_epoch
        self.max_iter = int(cfg.train.max_iter or cfg.train.epochs * iters_per_epoch)
        # 0 (or None) = only at the end; a positive period is at least one iteration
        self.eval_period = self._period("eval_period_epochs", cfg.train.get("eval_period_epochs", 1))
        self.checkpoint_period = self._period("checkpoint_period_epochs", cfg.train.get("checkpoint_period_epochs", 1))

    @property
    def checkpoint_hook_period(self) -> int:
        """The period of detectron2's ``PeriodicCheckpointer`` (which also saves ``model_final`` at the end)."""
        return self.checkpoint_period or self.max_iter + 1

    def _period(self, key: str, epochs) -> int:
        """A period in epochs as iterations (0: only at the end)."""
        if epochs is None or epochs == 0:
            return 0
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not epochs > 0:
            raise ValueError(f"train.{key} must be a number of epochs >= 0 (0: only at the end), got {epochs!r}")
        return max(1, int(epochs * self.iters_per_epoch))


def wrap_ddp(model: torch.nn.Module, ddp_cfg) -> torch.nn.Module:
    """detectron2's ``create_ddp_model`` with ``train.ddp`` as keyword arguments, usable on CPU (gloo) too.

    detectron2 v0.6 passes ``device_ids=[local_rank]`` unless told otherwise, which DDP refuses for a
    CPU model; a model whose parameters are not on CUDA gets ``device_ids=None``.

    Raises:
        ValueError: the model has ``SyncBatchNorm`` layers (``train.sync_bn``) but is not on CUDA under
            several processes: PyTorch's SyncBatchNorm, and DDP around it, do not run on CPU.
    """
    kwargs = dict(ddp_cfg)
    param = next(model.parameters(), None)
    if comm.get_world_size() > 1 and param is not None and param.device.type != "cuda":
        if any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()):
            raise ValueError(
                f"train.sync_bn=True needs CUDA, but the model is on '{param.device}': PyTorch's SyncBatchNorm "
                "(and DDP around it) does not run on CPU. Set train.sync_bn=False for CPU (gloo) runs."
            )
        kwargs.setdefault("device_ids", None)
    return create_ddp_model(model, **kwargs)


def do_train(cfg, *, resume: bool = False, extra_hooks: Sequence[HookBase] = ()) -> None:
    """Train ``cfg`` with hooks: per-step seeding, EMA, LR schedule, periodic/best checkpoints,
    COCO eval, writers (and ``train.loss_trace``'s per-iteration loss log).

    A multi-process ``train.sync_bn`` run that would not be on CUDA is refused first
    (:func:`check_sync_bn_device`), before anything is built, and so is an invalid ``train.compile``
    (:func:`compile_settings`) or ``train.profile``. The process's intra-op CPU threads are set from
    ``train.cpu_threads`` (:func:`~neo_rtdetr.engine.host_threads.apply_cpu_threads`: 1 on CUDA by default).

    With ``train.compile.enabled`` the model's backbone, encoder, decoder and criterion are compiled
    (:func:`~neo_rtdetr.engine.compile.compile_model`) after the EMA copy is made and before the DDP wrapper: the
    EMA copy, which evaluation and ``model_best`` use, stays an eager model with its own weights (a deep copy of a
    compiled model would keep the decoder's and criterion's compile settings but not ``nn.Module.compile``'s).

    Before the first step the configuration is checked against the data
    (:func:`neo_rtdetr.engine.preflight.check_training_data`: class counts, usable annotations,
    images with more boxes than queries).

    Args:
        cfg: the LazyConfig.
        resume: continue from ``train.output_dir``'s last checkpoint when there is one.
        extra_hooks: more hooks, run after the built-in ones (e.g. measurements).
    """
    check_sync_bn_device(cfg)  # from the config alone, before anything is built
    apply_cpu_threads(cfg)
    compile_opts = compile_settings(cfg)
    profiler = build_profiler_hook(cfg.train.get("profile"), cfg.train.output_dir)
    model = build_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    check_training_data(cfg, model, train_loader)
    schedule = TrainSchedule(cfg, train_loader.iters_per_epoch)
    logger.info(
        "%d iterations per epoch, %d iterations in all, eval every %s, checkpoint every %s",
        schedule.iters_per_epoch, schedule.max_iter, schedule.eval_period or "end only",
        schedule.checkpoint_period or "end only",
    )

    ema = ModelEMA(model, decay=cfg.train.ema.decay, warmups=cfg.train.ema.warmups) if cfg.train.ema.enabled else None
    if compile_opts is not None:  # after the EMA copy (it stays eager), before DDP
        compiled = compile_model(model, decoder=True, criterion=True, **compile_opts)
        logger.info(
            "train.compile: %s compiled (mode=%s, backend=%s); the first step at every new input size compiles%s",
            ", ".join(compiled), compile_opts["mode"], compile_opts["backend"],
            "; the EMA copy used for evaluation stays eager" if ema is not None else "",
        )
    ddp_model = wrap_ddp(model, cfg.train.ddp)
    trainer = RTDETRTrainer(
        ddp_model,
        train_loader,
        optimizer,
        precision=cfg.train.amp.precision,
        amp=cfg.train.amp.enabled,
        clip_grad_max_norm=cfg.train.clip_grad.max_norm,
        max_consecutive_nonfinite=cfg.train.max_consecutive_nonfinite,
    )
    checkpointables = {"trainer": trainer}
    if ema is not None:
        checkpointables["ema"] = ema
    checkpointer = RTDETRCheckpointer(model, cfg.train.output_dir, **checkpointables)
    cfg.lr_multiplier.max_iter = schedule.max_iter
    eval_model = ema.module if ema is not None else model

    def test_and_save_results():
        return do_test(cfg, eval_model, tag="EMA weights" if ema is not None else "")

    trainer.register_hooks(
        [
            StepSeedHook(cfg.train.get("seed", 0)),
            hooks.IterationTimer(),
            EMAHook(ema) if ema is not None else None,
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            LossTraceWriter(os.path.join(cfg.train.output_dir, LOSS_TRACE_FILE))
            if cfg.train.get("loss_trace", False) else None,
            hooks.PeriodicCheckpointer(checkpointer, schedule.checkpoint_hook_period, max_iter=schedule.max_iter,
                                       max_to_keep=cfg.train.checkpointer.max_to_keep)
            if comm.is_main_process() else None,
            # eval_period 0 = only after the last iteration (EvalHook always evaluates at the end)
            hooks.EvalHook(schedule.eval_period or schedule.max_iter + 1, test_and_save_results),
            hooks.BestCheckpointer(schedule.eval_period or schedule.max_iter, _UntaggedSaves(checkpointer), "bbox/AP", mode="max")
            if comm.is_main_process() and "evaluator" in cfg.dataloader else None,
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, schedule.max_iter), period=cfg.train.log_period)
            if comm.is_main_process() else None,
            *extra_hooks,
            profiler,  # last: it covers whole iterations
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, schedule.max_iter)
