"""Key map from Hugging Face transformers' RT-DETR (v1) and RT-DETRv2 state dicts to ours.

Our module names are the official rtdetr_pytorch names (``backbone.*``, ``encoder.*``,
``decoder.*``), so an official checkpoint needs no renaming; a Hugging Face one is renamed by the
rules below (the inverse of the map in the HF conversion script, composed with transformers v5's
own renames, plus the v4 hub names). Attention projections are stored by HF as separate
q/k/v matrices and by us (``nn.MultiheadAttention``) as one ``in_proj`` matrix: they are
concatenated in q, k, v order. RT-DETRv2 adds one buffer per decoder layer,
``encoder_attn.n_points_scale`` (official v2: ``cross_attn.num_points_scale``). The Sequential
children that the official v2 layout names (encoder ``input_proj.{i}.conv/norm``, decoder
``enc_output.proj/norm``) come out with the v1 index names (``.0``/``.1``);
:func:`neo_rtdetr.checkpoint.convert.reconcile_state_dict` matches them to the target model.
"""

import re
from typing import Dict, List, Tuple

import torch

__all__ = ["convert_hf_rtdetr_state_dict"]

# (HF regex, our replacement). Applied to keys without the leading "model." and in order; the first
# matching rule wins.
_RULES: List[Tuple[str, str]] = [
    # backbone (PResNet-vd)
    (r"^backbone\.model\.embedder\.embedder\.(\d)\.convolution\.", "backbone.conv1.conv1_{k1}.conv."),
    (r"^backbone\.model\.embedder\.embedder\.(\d)\.normalization\.", "backbone.conv1.conv1_{k1}.norm."),
    (r"^backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.convolution\.",
     "backbone.res_layers.\\1.blocks.\\2.branch2{abc3}.conv."),
    (r"^backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.normalization\.",
     "backbone.res_layers.\\1.blocks.\\2.branch2{abc3}.norm."),
    (r"^backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.1\.convolution\.",
     "backbone.res_layers.\\1.blocks.\\2.short.conv.conv."),
    (r"^backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.1\.normalization\.",
     "backbone.res_layers.\\1.blocks.\\2.short.conv.norm."),
    (r"^backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
     "backbone.res_layers.\\1.blocks.\\2.short.conv."),
    (r"^backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
     "backbone.res_layers.\\1.blocks.\\2.short.norm."),
    # hybrid encoder
    (r"^encoder_input_proj\.(\d+)\.([01])\.", "encoder.input_proj.\\1.\\2."),
    (r"^encoder\.(?:aifi|encoder)\.(\d+)\.layers\.(\d+)\.self_attn\.(?:o_proj|out_proj)\.",
     "encoder.encoder.\\1.layers.\\2.self_attn.out_proj."),
    (r"^encoder\.(?:aifi|encoder)\.(\d+)\.layers\.(\d+)\.self_attn_layer_norm\.", "encoder.encoder.\\1.layers.\\2.norm1."),
    (r"^encoder\.(?:aifi|encoder)\.(\d+)\.layers\.(\d+)\.final_layer_norm\.", "encoder.encoder.\\1.layers.\\2.norm2."),
    (r"^encoder\.(?:aifi|encoder)\.(\d+)\.layers\.(\d+)\.(?:mlp\.)?fc([12])\.", "encoder.encoder.\\1.layers.\\2.linear\\3."),
    (r"^encoder\.(lateral_convs|fpn_blocks|downsample_convs|pan_blocks)\.", "encoder.\\1."),
    # decoder
    (r"^decoder_input_proj\.(\d+)\.0\.", "decoder.input_proj.\\1.conv."),
    (r"^decoder_input_proj\.(\d+)\.1\.", "decoder.input_proj.\\1.norm."),
    (r"^decoder\.layers\.(\d+)\.self_attn\.(?:o_proj|out_proj)\.", "decoder.decoder.layers.\\1.self_attn.out_proj."),
    (r"^decoder\.layers\.(\d+)\.self_attn_layer_norm\.", "decoder.decoder.layers.\\1.norm1."),
    (r"^decoder\.layers\.(\d+)\.encoder_attn\.n_points_scale$",
     "decoder.decoder.layers.\\1.cross_attn.num_points_scale"),
    (r"^decoder\.layers\.(\d+)\.encoder_attn\.", "decoder.decoder.layers.\\1.cross_attn."),
    (r"^decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", "decoder.decoder.layers.\\1.norm2."),
    (r"^decoder\.layers\.(\d+)\.(?:mlp\.)?fc([12])\.", "decoder.decoder.layers.\\1.linear\\2."),
    (r"^decoder\.layers\.(\d+)\.final_layer_norm\.", "decoder.decoder.layers.\\1.norm3."),
    (r"^decoder\.query_pos_head\.", "decoder.query_pos_head."),
    (r"^decoder\.class_embed\.(\d+)\.", "decoder.dec_score_head.\\1."),
    (r"^decoder\.bbox_embed\.(\d+)\.", "decoder.dec_bbox_head.\\1."),
    (r"^(denoising_class_embed|enc_output|enc_score_head|enc_bbox_head)\.", "decoder.\\1."),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]
# q/k/v projections: (HF regex, our prefix of the fused nn.MultiheadAttention).
_QKV = [
    (re.compile(r"^encoder\.(?:aifi|encoder)\.(\d+)\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$"),
     "encoder.encoder.{0}.layers.{1}.self_attn.in_proj_{3}"),
    (re.compile(r"^decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$"),
     "decoder.decoder.layers.{0}.self_attn.in_proj_{2}"),
]


def _rename(key: str) -> str:
    for pattern, repl in _COMPILED:
        m = pattern.match(key)
        if m is None:
            continue
        repl = repl.replace("{k1}", str(int(m.group(1)) + 1) if "{k1}" in repl else "")
        if "{abc3}" in repl:
            repl = repl.replace("{abc3}", "abc"[int(m.group(3))])
        return pattern.sub(repl, key, count=1)
    raise KeyError(key)


def convert_hf_rtdetr_state_dict(hf_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a Hugging Face ``RTDetrForObjectDetection`` / ``RTDetrV2ForObjectDetection`` state dict to
    neo_rtdetr's (official) names.

    Args:
        hf_state: the HF state dict (``model.*`` keys; transformers v4 or v5 names).

    Returns:
        A new state dict with our names. ``num_batches_tracked`` entries are kept (our non-frozen
        BatchNorms have them too); HF's duplicated top-level ``class_embed``/``bbox_embed`` (v4 hub
        checkpoints, tied to the decoder's) are dropped.

    Raises:
        KeyError: naming every HF key no rule maps, or a q/k/v projection that is incomplete.
    """
    out: Dict[str, torch.Tensor] = {}
    qkv: Dict[str, Dict[str, torch.Tensor]] = {}
    unknown = []
    for full_key, value in hf_state.items():
        key = full_key[len("model."):] if full_key.startswith("model.") else full_key
        if re.match(r"^(class_embed|bbox_embed)\.\d+\.", key):
            continue  # tied copies of decoder.class_embed / decoder.bbox_embed
        for pattern, target in _QKV:
            m = pattern.match(key)
            if m:
                groups = m.groups()
                which = groups[-2]
                qkv.setdefault(target.format(*groups), {})[which] = value
                break
        else:
            try:
                out[_rename(key)] = value
            except KeyError:
                unknown.append(full_key)
    if unknown:
        raise KeyError(f"{len(unknown)} Hugging Face RT-DETR keys have no mapping: {unknown[:20]}")
    for target, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"incomplete q/k/v projection for {target}: have {sorted(parts)}")
        out[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out
