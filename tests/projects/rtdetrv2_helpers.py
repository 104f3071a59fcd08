"""Shared builders of the RT-DETRv2 project tests: our v2 models from the project configs, HF RT-DETRv2 models."""

import torch
from torch import nn

from detectron2.config import LazyConfig, instantiate

from ..modeling.hf_oracle import randomize

V2_MODELS = "projects/RTDETRv2/configs/models/rtdetrv2_{}.py"
V2_SIZES = ["r18", "r34", "r50m", "r50", "r101"]


DERIVED_BUFFERS = ("num_points_scale", "n_points_scale", "anchors")


def randomize_v2(module: nn.Module, seed: int = 0) -> None:
    """:func:`randomize` every float parameter and buffer except the derived v2 buffers (offset scales, anchors)."""
    keep = {k: v.clone() for k, v in module.named_buffers() if k.endswith(DERIVED_BUFFERS)}
    randomize(module, seed=seed)
    with torch.no_grad():
        for k, v in module.named_buffers():
            if k in keep:
                v.copy_(keep[k])


def v2_model_config(size: str, **decoder_overrides):
    cfg = LazyConfig.load(V2_MODELS.format(size))
    for k, v in decoder_overrides.items():
        setattr(cfg.model.decoder, k, v)
    return cfg


def build_v2(size: str, *, num_classes=None, **decoder_overrides) -> nn.Module:
    cfg = v2_model_config(size, **decoder_overrides)
    if num_classes is not None:
        cfg.model.num_classes = num_classes
    return instantiate(cfg.model)


def hf_v2_r18(seed: int = 0, **overrides):
    """A random-weight HF ``RTDetrV2ForObjectDetection`` r18vd (80 classes, trainable BN, eager attention), float64."""
    import transformers

    from ..modeling.hf_oracle import hf_r18_kwargs

    kwargs = {**hf_r18_kwargs(), **overrides}
    cfg = transformers.RTDetrV2Config(num_labels=80, **kwargs)
    cfg._attn_implementation = "eager"  # SDPA + float64 + float32 mask is wrong in torch (hf_and_peers.md §1.7)
    torch.manual_seed(seed)
    hf = transformers.RTDetrV2ForObjectDetection(cfg)
    hf.config._attn_implementation = "eager"
    randomize_v2(hf, seed=seed + 1)
    return hf.double()
