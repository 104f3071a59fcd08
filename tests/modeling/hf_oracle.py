"""Hugging Face transformers' RT-DETR as the numerical oracle (built offline, random weights).

HF computes the same function as the official code (shared/docs/hf_and_peers.md §0) except for the
non-square position embedding before v5 (ours and HF >= 5 are row-major), the detached box chain
between decoder layers (gradients only) and eval_idx (HF always decodes to the last layer).
"""

import torch
from torch import nn

from detectron2.config import LazyConfig, instantiate

from neo_rtdetr.checkpoint.convert import reconcile_state_dict
from neo_rtdetr.checkpoint.hf_rtdetr_keys import convert_hf_rtdetr_state_dict


def randomize(module: nn.Module, seed: int = 0) -> None:
    """Random values for every float parameter and buffer, scaled to keep activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif t.dim() == 1 and name.endswith("weight"):  # BN / LayerNorm scale
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() == 1:  # biases, running means
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * t[0].numel() ** -0.5)


def hf_r18_kwargs() -> dict:
    """HF config arguments of the official r18vd (v1 and v2): basic blocks, 3 decoder layers, trainable BN."""
    from transformers.models.rt_detr.configuration_rt_detr_resnet import RTDetrResNetConfig

    return dict(
        backbone_config=RTDetrResNetConfig(
            hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic", out_indices=[2, 3, 4]
        ),
        encoder_in_channels=[128, 256, 512],
        hidden_expansion=0.5,
        decoder_layers=3,
        freeze_backbone_batch_norms=False,  # official r18: trainable BN
    )


def hf_config(size: str, **overrides):
    """HF RTDetrConfig of the official r18vd / r50vd (80 classes), eager attention."""
    import transformers

    if size == "r18":
        kwargs = hf_r18_kwargs()
    elif size == "r50":
        kwargs = {}
    else:
        raise ValueError(size)
    cfg = transformers.RTDetrConfig(num_labels=80, **{**kwargs, **overrides})
    cfg._attn_implementation = "eager"  # SDPA + float64 + float32 mask is wrong in torch (docs §1.7)
    return cfg


def build_hf_detector(size: str, seed: int = 0, **overrides):
    import transformers

    torch.manual_seed(seed)
    hf = transformers.RTDetrForObjectDetection(hf_config(size, **overrides))
    hf.config._attn_implementation = "eager"
    randomize(hf, seed=seed + 1)
    return hf.double()


def build_ours(size: str, **decoder_overrides):
    cfg = LazyConfig.load(f"configs/common/models/rtdetr_{size}.py")
    for k, v in decoder_overrides.items():
        setattr(cfg.model.decoder, k, v)
    return instantiate(cfg.model)


def load_hf_into(ours: nn.Module, hf: nn.Module):
    state, report = reconcile_state_dict(convert_hf_rtdetr_state_dict(hf.state_dict()), ours)
    ours.load_state_dict(state, strict=True)
    return report


def hf_targets(n_per_image, seed: int = 0):
    """HF-style float64 training targets: ``class_labels`` in [0, 80), normalised cxcywh ``boxes`` inside the image."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for n in n_per_image:
        cxcy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05
        targets.append({"class_labels": torch.randint(0, 80, (n,), generator=g), "boxes": torch.cat([cxcy, wh], 1)})
    return targets


def as_detectron2_batch(x: torch.Tensor, targets):
    """The ``list[dict]`` our models take for HF's ``pixel_values`` in [0, 1] and ``labels``."""
    from detectron2.structures import Instances

    from neo_rtdetr.modeling.meta_arch.rtdetr import TARGET_BOXES_FIELD

    batch = []
    for image, t in zip(x, targets):
        inst = Instances(tuple(image.shape[-2:]))
        inst.gt_classes = t["class_labels"]
        inst.set(TARGET_BOXES_FIELD, t["boxes"])
        batch.append({"image": image * 255.0, "instances": inst})
    return batch


def hf_loss_terms(loss_dict, num_decoder_layers: int):
    """HF's weighted loss terms under our names: HF calls the encoder (query-selection) terms
    ``_aux_{L-1}``, we call them ``_enc_0``."""
    rename = {f"_aux_{num_decoder_layers - 1}": "_enc_0"}
    terms = {}
    for k, v in loss_dict.items():
        base = next(b for b in ("loss_vfl", "loss_bbox", "loss_giou") if k == b or k.startswith(b + "_"))
        suffix = k[len(base):]
        terms[base + rename.get(suffix, suffix)] = v
    return terms
