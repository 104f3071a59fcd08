"""``torch.compile`` of the parts of an RT-DETR model that gain from it, in place (state-dict keys unchanged).

The backbone and the hybrid encoder are convolution stacks with many small element-wise operations (frozen or
trainable batch norms, activations, residual adds, autocast casts): compiling them fuses those and cuts the
per-kernel launch cost, which dominates an eager training step on a fast GPU. Their input size is static per
batch; with multi-scale training each size is compiled once (the official list has 13 entries, 11 distinct sizes),
so the graph cache limit is raised accordingly. The decoder's computation (input projection, query selection, the
layers and heads) is compiled with its denoising queries padded to a fixed count
(``RTDETRTransformer.compile_body``): the number of denoising queries otherwise changes with the batch's box counts,
and every new count would be a new graph.

``nn.Module.compile`` is used, so parameters, buffers and state-dict keys stay where they are (checkpoints, EMA
and DDP are unaffected); a deep copy of a compiled module is a correct, independent module (PyTorch drops
``nn.Module.compile``'s compiled call when copying, so the copy's backbone and encoder run eagerly, while the
decoder's and criterion's compile settings are copied). Training (``train.compile``) compiles the model after its
EMA copy is made: the EMA stays eager.
"""

import importlib
import logging
from typing import List, Optional

import torch
from torch import nn

from .ema import unwrap_model

__all__ = ["compile_model"]

logger = logging.getLogger(__name__)

#: ``torch.compile`` modes that record CUDA graphs (inductor's cudagraph trees)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

#: graphs kept per compiled function: one per input size (the official multi-scale list has 11 distinct sizes)
MIN_CACHE_SIZE_LIMIT = 32


def compile_model(
    model: nn.Module,
    *,
    backbone: bool = True,
    encoder: bool = True,
    decoder: bool = False,
    criterion: bool = False,
    mode: Optional[str] = None,
    backend: str = "inductor",
) -> List[str]:
    """Compile the chosen parts of an :class:`~neo_rtdetr.modeling.RTDETR` (a DDP wrapper is unwrapped).

    Args:
        model: the model (modified in place).
        backbone / encoder: compile these with static shapes.
        decoder: compile the decoder's computation with static shapes (denoising queries padded to a fixed count;
            the groups are still drawn eagerly, so the random stream is the eager one).
        criterion: compile the criterion's loss terms (dynamic shapes, never CUDA graphs; the matching stays eager).
        mode: ``torch.compile`` mode (``None`` = default).
        backend: ``torch.compile`` backend (``"aot_eager"`` traces forward and backward graphs without generating
            code: the CPU tests use it to check the tracing).

    Returns:
        the names of the compiled submodules.
    """
    model = unwrap_model(model)
    cache = torch._dynamo.config
    if cache.cache_size_limit < MIN_CACHE_SIZE_LIMIT:
        logger.info("compile_model: raising torch._dynamo cache_size_limit %d -> %d (one graph per input size)",
                    cache.cache_size_limit, MIN_CACHE_SIZE_LIMIT)
        cache.cache_size_limit = MIN_CACHE_SIZE_LIMIT
    options = {"backend": backend} if mode is None else {"backend": backend, "mode": mode}
    if mode in CUDA_GRAPH_MODES:
        # loaded now, so that RTDETRTrainer marks every step as a new CUDA-graph-tree iteration from the first one on
        # (it marks steps only once this module is loaded: importing it costs seconds)
        importlib.import_module("torch._inductor.cudagraph_trees")
    done = []
    if backbone:
        model.backbone.compile(dynamic=False, **options)
        done.append("backbone")
    if encoder:
        model.encoder.compile(dynamic=False, **options)
        done.append("encoder")
    if decoder:
        model.decoder.compile_body(**options)
        done.append("decoder")
    if criterion:
        model.criterion.compile_losses(backend=backend)
        done.append("criterion")
    logger.info("compile_model: compiled %s", ", ".join(done) or "nothing")
    return done
