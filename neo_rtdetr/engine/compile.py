"""``torch.compile`` of the parts of an RT-DETR model that gain from it, in place (state-dict keys unchanged).

The backbone and the hybrid encoder are convolution stacks with many small element-wise operations (frozen or
trainable batch norms, activations, residual adds, autocast casts): compiling them fuses those and cuts the
per-kernel launch cost, which dominates an eager training step on a fast GPU. Their input size is static per
batch; with multi-scale training each size is compiled once (13 sizes in the official recipe), so the graph cache
limit is raised accordingly. The decoder layers see a query count that changes with the batch (denoising groups),
so they are compiled with dynamic shapes.

``nn.Module.compile`` is used, so parameters, buffers and state-dict keys stay where they are (checkpoints, EMA
and DDP are unaffected); a deep copy of a compiled module is a correct, independent module.
"""

import logging
from typing import List, Optional

import torch
from torch import nn

from .ema import unwrap_model

__all__ = ["compile_model"]

logger = logging.getLogger(__name__)

#: graphs kept per compiled function: one per input size (the official multi-scale list has 13 sizes)
MIN_CACHE_SIZE_LIMIT = 32


def compile_model(
    model: nn.Module,
    *,
    backbone: bool = True,
    encoder: bool = True,
    decoder_layers: bool = False,
    mode: Optional[str] = None,
) -> List[str]:
    """Compile the chosen parts of an :class:`~neo_rtdetr.modeling.RTDETR` (a DDP wrapper is unwrapped).

    Args:
        model: the model (modified in place).
        backbone / encoder: compile these with static shapes.
        decoder_layers: compile every decoder layer with dynamic shapes (one graph serves all layers).
        mode: ``torch.compile`` mode (``None`` = default).

    Returns:
        the names of the compiled submodules.
    """
    model = unwrap_model(model)
    cache = torch._dynamo.config
    if cache.cache_size_limit < MIN_CACHE_SIZE_LIMIT:
        logger.info("compile_model: raising torch._dynamo cache_size_limit %d -> %d (one graph per input size)",
                    cache.cache_size_limit, MIN_CACHE_SIZE_LIMIT)
        cache.cache_size_limit = MIN_CACHE_SIZE_LIMIT
    done = []
    if backbone:
        model.backbone.compile(dynamic=False, mode=mode)
        done.append("backbone")
    if encoder:
        model.encoder.compile(dynamic=False, mode=mode)
        done.append("encoder")
    if decoder_layers:
        for i, layer in enumerate(model.decoder.decoder.layers):
            layer.compile(dynamic=True, mode=mode)
        done.append(f"decoder.decoder.layers (x{len(model.decoder.decoder.layers)})")
    logger.info("compile_model: compiled %s", ", ".join(done) or "nothing")
    return done
