"""RT-DETR set criterion (official v1 ``rtdetr_pytorch/src/zoo/rtdetr/rtdetr_criterion.py``, losses ['vfl', 'boxes']).

Terms (all already multiplied by ``weight_dict``; the total loss is their plain sum):

* main (last decoder layer):        ``loss_vfl``, ``loss_bbox``, ``loss_giou``
* decoder layers 0..L-2:            ``loss_vfl_aux_{i}``, ``loss_bbox_aux_{i}``, ``loss_giou_aux_{i}``
* encoder top-k query selection:    ``loss_vfl_enc_0``, ``loss_bbox_enc_0``, ``loss_giou_enc_0``
  (the official v1 code names this term ``_aux_{L-1}``)
* denoising part of layers 0..L-1:  ``loss_vfl_dn_{i}``, ``loss_bbox_dn_{i}``, ``loss_giou_dn_{i}``

Every set of outputs except the denoising ones is Hungarian-matched on its own; the denoising outputs use the
fixed CDN assignment (positive dn query <-> gt index tiled over the groups) and ``num_boxes * dn_num_group``.
"""

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.box_ops import box_cxcywh_to_xyxy, elementwise_box_iou, elementwise_generalized_box_iou

__all__ = ["RTDETRCriterion"]

_DEFAULT_WEIGHTS = {"loss_vfl": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
# Tolerance for "normalised" target boxes (cxcywh must lie in [0, 1]).
_BOX_EPS = 1e-3

Indices = List[Tuple[Tensor, Tensor]]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 -> fp32; fp32/fp64 unchanged."""
    return torch.promote_types(dtype, torch.float32)


def _autocast_off(device_type: str):
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # device type without autocast support
        return contextlib.nullcontext()


class RTDETRCriterion(nn.Module):
    """Varifocal + L1 + GIoU set loss of RT-DETR (v1), including aux, encoder and denoising terms.

    Args (keyword-only):
        num_classes: number of real classes C (sigmoid classification, no background logit).
        matcher: a :class:`HungarianMatcher` (or any module with the same call signature).
        weight_dict: weights of ``loss_vfl``, ``loss_bbox``, ``loss_giou`` (exactly these keys).
        alpha, gamma: varifocal-loss parameters (negatives weighted by ``alpha * sigmoid(p)**gamma``).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Optional[Dict[str, float]] = None,
        alpha: float = 0.75,
        gamma: float = 2.0,
    ):
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"RTDETRCriterion: num_classes must be a positive int, got {num_classes!r}")
        weight_dict = dict(_DEFAULT_WEIGHTS if weight_dict is None else weight_dict)
        if set(weight_dict) != set(_DEFAULT_WEIGHTS):
            raise ValueError(
                f"RTDETRCriterion: weight_dict must have exactly the keys {sorted(_DEFAULT_WEIGHTS)}, "
                f"got {sorted(weight_dict)}"
            )
        self.num_classes = int(num_classes)
        self.matcher = matcher
        self.weight_dict = {k: float(v) for k, v in weight_dict.items()}
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, weight_dict={self.weight_dict}, alpha={self.alpha}, gamma={self.gamma}"

    # ------------------------------------------------------------------ validation
    def _check_output(self, out: Dict[str, Tensor], name: str, batch_size: int) -> None:
        logits, boxes = out.get("pred_logits"), out.get("pred_boxes")
        if logits is None or boxes is None:
            raise ValueError(f"RTDETRCriterion: {name} needs 'pred_logits' and 'pred_boxes'")
        if logits.dim() != 3 or logits.shape[0] != batch_size or logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"RTDETRCriterion: {name}['pred_logits'] must be [B={batch_size}, Q, C={self.num_classes}], "
                f"got {tuple(logits.shape)}"
            )
        if boxes.shape != (*logits.shape[:2], 4):
            raise ValueError(
                f"RTDETRCriterion: {name}['pred_boxes'] must be [B, Q, 4] = {(*logits.shape[:2], 4)}, "
                f"got {tuple(boxes.shape)}"
            )
        if not (logits.is_floating_point() and boxes.is_floating_point()):
            raise ValueError(f"RTDETRCriterion: {name} predictions must be floating point")

    def _check_targets(self, targets: Sequence[Dict[str, Tensor]], batch_size: int) -> None:
        if len(targets) != batch_size:
            raise ValueError(f"RTDETRCriterion: {len(targets)} targets for a batch of {batch_size}")
        for i, t in enumerate(targets):
            if "labels" not in t or "boxes" not in t:
                raise ValueError(f"RTDETRCriterion: target {i} needs 'labels' and 'boxes'")
            labels, boxes = t["labels"], t["boxes"]
            if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
                raise ValueError(f"RTDETRCriterion: target {i} labels must be an integer tensor [n]")
            if boxes.shape != (labels.shape[0], 4):
                raise ValueError(
                    f"RTDETRCriterion: target {i} boxes must be [n={labels.shape[0]}, 4], got {tuple(boxes.shape)}"
                )
        labels = torch.cat([t["labels"].reshape(-1) for t in targets])
        if labels.numel() == 0:
            return
        boxes = torch.cat([t["boxes"].reshape(-1, 4).float() for t in targets])
        # One host sync for all checks.
        bad_label, bad_range, bad_size = torch.stack(
            [
                ((labels < 0) | (labels >= self.num_classes)).any(),
                (~torch.isfinite(boxes)).any() | (boxes < -_BOX_EPS).any() | (boxes > 1 + _BOX_EPS).any(),
                (boxes[:, 2:] <= 0).any(),
            ]
        ).tolist()
        if bad_label:
            raise ValueError(
                f"RTDETRCriterion: target labels must be contiguous 0-based class ids in [0, {self.num_classes}), "
                f"got min {int(labels.min())} max {int(labels.max())}"
            )
        if bad_range:
            raise ValueError(
                "RTDETRCriterion: target boxes must be normalised cxcywh with every coordinate in [0, 1]; got a "
                f"value in [{float(boxes.min()):.4g}, {float(boxes.max()):.4g}] (pixel-space boxes? divide by the "
                "image size)"
            )
        if bad_size:
            raise ValueError("RTDETRCriterion: target boxes must have w > 0 and h > 0 (filter empty boxes)")

    @staticmethod
    def _check_dn(dn_meta, targets, num_dn_queries: int) -> None:
        if dn_meta is None:
            raise ValueError("RTDETRCriterion: 'dn_outputs' given without 'dn_meta'")
        pos, group = dn_meta["dn_positive_idx"], dn_meta["dn_num_group"]
        if int(group) != group or group < 1:
            raise ValueError(f"RTDETRCriterion: dn_num_group must be a positive int, got {group!r}")
        if len(pos) != len(targets):
            raise ValueError(f"RTDETRCriterion: dn_positive_idx has {len(pos)} entries for {len(targets)} images")
        split = dn_meta.get("dn_num_split")
        if split is not None and int(split[0]) != num_dn_queries:
            raise ValueError(f"RTDETRCriterion: dn outputs have {num_dn_queries} queries but dn_num_split={split}")
        for i, (p, t) in enumerate(zip(pos, targets)):
            n = int(t["labels"].shape[0])
            if p.dim() != 1 or p.shape[0] != n * group:
                raise ValueError(
                    f"RTDETRCriterion: image {i} has {n} gt and {group} dn groups but dn_positive_idx has shape "
                    f"{tuple(p.shape)} (expected [{n * group}])"
                )
        all_pos = torch.cat([p.reshape(-1) for p in pos])
        if all_pos.numel() > 0 and bool(((all_pos < 0) | (all_pos >= num_dn_queries)).any()):
            raise ValueError(f"RTDETRCriterion: dn_positive_idx must index the {num_dn_queries} dn queries")

    # ------------------------------------------------------------------ helpers
    def _num_boxes(self, targets: Sequence[Dict[str, Tensor]], device: torch.device) -> float:
        """Total GT count of the batch, averaged over ranks (official), clamped >= 1."""
        num_boxes = torch.as_tensor(
            [float(sum(int(t["labels"].shape[0]) for t in targets))], dtype=torch.float, device=device
        )
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            world_size = dist.get_world_size()
            if world_size > 1:
                dist.all_reduce(num_boxes)
        return torch.clamp(num_boxes / world_size, min=1).item()

    @staticmethod
    def _cdn_indices(dn_meta, targets: Sequence[Dict[str, Tensor]], device: torch.device) -> Indices:
        group = int(dn_meta["dn_num_group"])
        indices = []
        for pos, t in zip(dn_meta["dn_positive_idx"], targets):
            n = int(t["labels"].shape[0])
            gt_idx = torch.arange(n, dtype=torch.int64, device=device).tile(group)
            indices.append((pos.to(device=device, dtype=torch.int64), gt_idx))
        return indices

    @staticmethod
    def _gather(targets, indices: Indices, device):
        """Flatten matched pairs: (batch_idx, src_idx, tgt_labels, tgt_boxes)."""
        batch_idx = torch.cat(
            [torch.full((len(src),), i, dtype=torch.int64, device=device) for i, (src, _) in enumerate(indices)]
        )
        src_idx = torch.cat([src.to(device=device, dtype=torch.int64) for src, _ in indices])
        tgt_labels = torch.cat(
            [t["labels"].to(device)[j.to(device)].to(torch.int64) for t, (_, j) in zip(targets, indices)]
        )
        tgt_boxes = torch.cat([t["boxes"].to(device)[j.to(device)] for t, (_, j) in zip(targets, indices)])
        return batch_idx, src_idx, tgt_labels, tgt_boxes

    def _losses(self, out: Dict[str, Tensor], targets, indices: Indices, num_boxes: float) -> Dict[str, Tensor]:
        logits, boxes = out["pred_logits"], out["pred_boxes"]
        dtype = _compute_dtype(logits.dtype)
        logits, boxes = logits.to(dtype), boxes.to(dtype)
        bs, num_queries, num_classes = logits.shape
        device = logits.device
        batch_idx, src_idx, tgt_labels, tgt_boxes = self._gather(targets, indices, device)
        tgt_boxes = tgt_boxes.to(dtype)
        num_matched = src_idx.numel()

        # --- varifocal loss ---
        # One-hot and IoU target built by scatter on a flat view: never feeds the "no object" index to one_hot and
        # never index_puts a tensor of another dtype (fp16/bf16 vs fp32 under AMP).
        flat_size = bs * num_queries * num_classes
        onehot = torch.zeros(flat_size, dtype=dtype, device=device)
        target_score = torch.zeros(flat_size, dtype=dtype, device=device)
        if num_matched > 0:
            src_boxes = boxes[batch_idx, src_idx]
            iou = elementwise_box_iou(box_cxcywh_to_xyxy(src_boxes.detach()), box_cxcywh_to_xyxy(tgt_boxes))
            flat_idx = (batch_idx * num_queries + src_idx) * num_classes + tgt_labels
            onehot = onehot.scatter(0, flat_idx, torch.ones_like(iou))
            target_score = target_score.scatter(0, flat_idx, iou.detach())
        onehot = onehot.view(bs, num_queries, num_classes)
        target_score = target_score.view(bs, num_queries, num_classes)
        pred_score = logits.detach().sigmoid()
        weight = self.alpha * pred_score.pow(self.gamma) * (1 - onehot) + target_score
        loss_vfl = F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")
        loss_vfl = loss_vfl.mean(1).sum() * num_queries / num_boxes

        # --- box losses ---
        if num_matched > 0:
            loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum() / num_boxes
            giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(tgt_boxes))
            loss_giou = (1 - giou).sum() / num_boxes
        else:
            # Keep the box head in the graph (zero gradient) so DDP sees every parameter used.
            loss_bbox = boxes.sum() * 0.0
            loss_giou = boxes.sum() * 0.0

        w = self.weight_dict
        return {
            "loss_vfl": loss_vfl * w["loss_vfl"],
            "loss_bbox": loss_bbox * w["loss_bbox"],
            "loss_giou": loss_giou * w["loss_giou"],
        }

    def _matched_losses(self, out, targets, num_boxes, suffix: str) -> Dict[str, Tensor]:
        indices = self.matcher(out, targets)
        return {k + suffix: v for k, v in self._losses(out, targets, indices, num_boxes).items()}

    # ------------------------------------------------------------------ forward
    def forward(self, outputs: Dict, targets: Sequence[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Compute all loss terms.

        Args:
            outputs: ``pred_logits`` [B, Q, C], ``pred_boxes`` [B, Q, 4]; optional ``aux_outputs`` (list of such
                dicts, decoder layers 0..L-2), ``enc_outputs`` (dict, or list of dicts), ``dn_outputs`` (list of
                dicts, denoising queries of layers 0..L-1) with ``dn_meta``.
            targets: per image ``labels`` int64 [n] in [0, C) and ``boxes`` [n, 4] normalised cxcywh.

        Returns:
            Flat dict of weighted scalar losses (float32, or float64 for float64 inputs).
        """
        device = outputs["pred_logits"].device
        with _autocast_off(device.type):
            return self._forward(outputs, targets)

    def _forward(self, outputs: Dict, targets: Sequence[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        bs = outputs["pred_logits"].shape[0] if outputs.get("pred_logits") is not None else -1
        self._check_output(outputs, "outputs", bs)
        aux = outputs.get("aux_outputs") or []
        enc = outputs.get("enc_outputs")
        enc = [] if enc is None else ([enc] if isinstance(enc, dict) else list(enc))
        dn = outputs.get("dn_outputs") or []
        for i, o in enumerate(aux):
            self._check_output(o, f"aux_outputs[{i}]", bs)
        for i, o in enumerate(enc):
            self._check_output(o, f"enc_outputs[{i}]", bs)
        for i, o in enumerate(dn):
            self._check_output(o, f"dn_outputs[{i}]", bs)
        self._check_targets(targets, bs)
        dn_meta = outputs.get("dn_meta")
        if dn:
            self._check_dn(dn_meta, targets, dn[0]["pred_logits"].shape[1])

        device = outputs["pred_logits"].device
        num_boxes = self._num_boxes(targets, device)

        losses: Dict[str, Tensor] = {}
        losses.update(self._matched_losses(outputs, targets, num_boxes, ""))
        for i, o in enumerate(aux):
            losses.update(self._matched_losses(o, targets, num_boxes, f"_aux_{i}"))
        for i, o in enumerate(enc):
            losses.update(self._matched_losses(o, targets, num_boxes, f"_enc_{i}"))
        if dn:
            dn_indices = self._cdn_indices(dn_meta, targets, device)
            dn_num_boxes = num_boxes * int(dn_meta["dn_num_group"])
            for i, o in enumerate(dn):
                terms = self._losses(o, targets, dn_indices, dn_num_boxes)
                losses.update({k + f"_dn_{i}": v for k, v in terms.items()})
        return losses
