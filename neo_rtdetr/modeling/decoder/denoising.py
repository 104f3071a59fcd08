"""Contrastive denoising (CDN) query groups for RT-DETR training (DINO-style).

Follows the official ``get_contrastive_denoising_training_group`` (rtdetr_pytorch), including the order, shapes
and dtypes of its random draws, so the same global torch seed gives the same groups as the official code and as
Hugging Face transformers. Differences, all outside the default-config happy path:

* a batch without any box does not return None (which removes ``denoising_class_embed`` from the graph and
  hangs DDP, official issue #672); as in the official v2 fix (#684) it builds one group of one padded slot
  (positive + negative query, box centre 0.5 size 0.1, label = padding index) that has no positives;
* the box reference is always ``inverse_sigmoid``-ed (official v1 skipped it when ``box_noise_scale <= 0``);
* everything is created on ``class_embed``'s device (no hard-coded ``.cuda()``);
* optionally (``pad_multiple``) the query count is padded to a fixed bucket, so that a compiled decoder sees one
  shape whatever the batch's box counts (see :func:`get_contrastive_denoising_training_group`).
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid
from ...utils.host_to_device import to_device
from ...utils.target_slots import target_slots

__all__ = ["get_contrastive_denoising_training_group"]

# The official code draws its noise in torch's default dtype (float32); we fix float32 so that the draws do
# not depend on the model dtype (a float64 or bfloat16 model gets the same groups for the same seed).
_NOISE_DTYPE = torch.float32


def get_contrastive_denoising_training_group(
    targets: Sequence[Dict[str, Tensor]],
    num_classes: int,
    num_queries: int,
    class_embed: nn.Embedding,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    pad_multiple: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Tensor, Dict]:
    """Build the noised ground-truth queries of contrastive denoising training.

    With M = max #boxes per image, there are G = max(1, num_denoising // M) groups of 2M queries each: the first
    M of a group are positives (box noise < half the box size), the next M negatives (noise in [1, 2) x half the
    size); slots beyond an image's own boxes are padding (label ``num_classes`` = the embedding's padding row).
    Labels are flipped to a random class with probability ``label_noise_ratio / 2``.

    Args:
        targets: per image ``labels`` LongTensor [n_i] (0-based classes) and ``boxes`` [n_i, 4] normalised cxcywh.
        num_classes: number of real classes (the padding label is ``num_classes``).
        num_queries: number of matching (top-k) queries that follow the denoising ones.
        class_embed: ``nn.Embedding(num_classes + 1, C, padding_idx=num_classes)``.
        num_denoising: denoising query budget (> 0).
        label_noise_ratio: twice the label flip probability (0 disables label noise).
        box_noise_scale: box noise scale (0 disables box noise).
        pad_multiple: if given, append padding queries up to Npad = the next multiple of ``pad_multiple`` (>= Ndn).
            A padding query has the padding label's embedding and a fixed box, sees no other denoising query (it sees
            the matching queries, as every denoising query does) and is seen by no other query, so the Ndn real
            queries and the matching queries get the same outputs as without it; the caller drops the padding
            outputs (queries Ndn..Npad-1). The random draws are unchanged.

    Returns:
        dn_query_content: [B, Npad, C] label embeddings (Ndn = 2 * M * G; M = 1, G = 1 when the batch has no box;
            Npad = Ndn without ``pad_multiple``).
        dn_ref_unact: [B, Npad, 4] noised boxes as logits (``inverse_sigmoid`` of cxcywh), float32 (float64 when
            the embedding is float64).
        attn_mask: [Npad + num_queries, Npad + num_queries] bool, True = blocked: the matching queries cannot see
            the denoising ones and each group cannot see the other groups.
        dn_meta: ``dn_positive_idx`` (list of B LongTensors [n_i * G]: the positive query index, group-major,
            matching ``labels`` tiled G times), ``dn_num_group`` (G), ``dn_num_split`` ([Ndn, num_queries]).
    """
    if num_denoising <= 0:
        raise ValueError("num_denoising must be > 0 (callers skip denoising when it is 0)")
    if pad_multiple is not None and (int(pad_multiple) != pad_multiple or pad_multiple < 1):
        raise ValueError(f"pad_multiple must be a positive int or None, got {pad_multiple!r}")
    if pad_multiple is not None:
        pad_multiple = int(pad_multiple)  # an integral float (20.0) passes the check: sizes must be ints
    if len(targets) == 0:
        raise ValueError("targets must hold one dict per image")
    device = class_embed.weight.device
    out_dtype = torch.promote_types(class_embed.weight.dtype, torch.float32)

    num_gts = []
    for i, t in enumerate(targets):
        labels, boxes = t["labels"], t["boxes"]
        if labels.dim() != 1 or boxes.dim() != 2 or boxes.shape != (labels.shape[0], 4):
            raise ValueError(
                f"targets[{i}]: labels must be [n] and boxes [n, 4], got {tuple(labels.shape)} and {tuple(boxes.shape)}"
            )
        num_gts.append(int(labels.shape[0]))
    bs = len(num_gts)
    max_gt = max(num_gts)
    empty_batch = max_gt == 0
    if empty_batch:
        max_gt, num_group = 1, 1
    else:
        num_group = max(1, num_denoising // max_gt)

    # padded ground truth [B, M], filled with one indexed write per field (slots built on the host from the sizes)
    query_class = torch.full([bs, max_gt], num_classes, dtype=torch.int32, device=device)
    query_box = torch.zeros([bs, max_gt, 4], dtype=_NOISE_DTYPE, device=device)
    pad_gt_mask = torch.zeros([bs, max_gt], dtype=torch.bool, device=device)
    if empty_batch:
        query_box[..., :2] = 0.5
        query_box[..., 2:] = 0.1
    else:
        image_idx, slot_idx = to_device(target_slots(num_gts), device).unbind(0)
        query_class[image_idx, slot_idx] = to_device(torch.cat([t["labels"] for t in targets]), device, torch.int32)
        query_box[image_idx, slot_idx] = to_device(torch.cat([t["boxes"] for t in targets]), device, _NOISE_DTYPE)
        pad_gt_mask[image_idx, slot_idx] = True

    # G groups of (M positives, M negatives): [B, 2MG]
    query_class = query_class.tile([1, 2 * num_group])
    query_box = query_box.tile([1, 2 * num_group, 1])
    pad_gt_mask = pad_gt_mask.tile([1, 2 * num_group])
    negative_gt_mask = torch.zeros([bs, max_gt * 2, 1], dtype=_NOISE_DTYPE, device=device)
    negative_gt_mask[:, max_gt:] = 1
    negative_gt_mask = negative_gt_mask.tile([1, num_group, 1])  # [B, 2MG, 1]
    num_dn = max_gt * 2 * num_group

    # positive query indices, group-major (= official torch.nonzero order), computed without a host sync
    group_offsets = torch.arange(num_group, device=device, dtype=torch.int64)[:, None] * (2 * max_gt)
    dn_positive_idx: List[Tensor] = [
        (group_offsets + torch.arange(n, device=device, dtype=torch.int64)[None, :]).reshape(-1) for n in num_gts
    ]

    # the random draws, in the official order: rand_like, randint_like (labels), randint_like, rand_like (boxes)
    if label_noise_ratio > 0:
        flip = torch.rand_like(query_class, dtype=torch.float) < (label_noise_ratio * 0.5)
        new_label = torch.randint_like(flip, 0, num_classes, dtype=query_class.dtype)
        query_class = torch.where(flip & pad_gt_mask, new_label, query_class)

    if box_noise_scale > 0:
        known_box = box_cxcywh_to_xyxy(query_box)
        diff = torch.tile(query_box[..., 2:] * 0.5, [1, 1, 2]) * box_noise_scale
        rand_sign = torch.randint_like(query_box, 0, 2) * 2.0 - 1.0
        rand_part = torch.rand_like(query_box)
        rand_part = (rand_part + 1.0) * negative_gt_mask + rand_part * (1 - negative_gt_mask)
        known_box = (known_box + rand_sign * rand_part * diff).clamp(min=0.0, max=1.0)
        query_box = box_xyxy_to_cxcywh(known_box)

    # padding to a fixed query count (after the draws: the random stream is the same with and without it)
    num_pad = 0 if pad_multiple is None else -(-num_dn // pad_multiple) * pad_multiple - num_dn
    if num_pad:
        query_class = torch.cat([query_class, query_class.new_full([bs, num_pad], num_classes)], 1)
        pad_box = query_box.new_tensor([0.5, 0.5, 0.1, 0.1]).expand(bs, num_pad, 4)
        query_box = torch.cat([query_box, pad_box], 1)
    dn_ref_unact = inverse_sigmoid(query_box).to(out_dtype)

    dn_query_content = class_embed(query_class)

    # attention mask, True = blocked; every padding query is a group of its own
    num_total = num_dn + num_pad
    size = num_total + num_queries
    attn_mask = torch.zeros([size, size], dtype=torch.bool, device=device)
    attn_mask[num_total:, :num_total] = True
    group_id = torch.arange(num_total, device=device) // (2 * max_gt)
    if num_pad:
        group_id[num_dn:] = num_group + torch.arange(num_pad, device=device)
    attn_mask[:num_total, :num_total] = group_id[:, None] != group_id[None, :]

    dn_meta = {
        "dn_positive_idx": dn_positive_idx,
        "dn_num_group": num_group,
        "dn_num_split": [num_dn, num_queries],
    }
    return dn_query_content, dn_ref_unact, attn_mask, dn_meta
