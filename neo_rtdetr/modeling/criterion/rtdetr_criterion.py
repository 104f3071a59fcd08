"""RT-DETR set criterion (official v1 ``rtdetr_pytorch/src/zoo/rtdetr/rtdetr_criterion.py``, losses ['vfl', 'boxes']).

Terms (all already multiplied by ``weight_dict``; the total loss is their plain sum):

* main (last decoder layer):        ``loss_vfl``, ``loss_bbox``, ``loss_giou``
* decoder layers 0..L-2:            ``loss_vfl_aux_{i}``, ``loss_bbox_aux_{i}``, ``loss_giou_aux_{i}``
* encoder top-k query selection:    ``loss_vfl_enc_0``, ``loss_bbox_enc_0``, ``loss_giou_enc_0``
  (the official v1 code names this term ``_aux_{L-1}``)
* denoising part of layers 0..L-1:  ``loss_vfl_dn_{i}``, ``loss_bbox_dn_{i}``, ``loss_giou_dn_{i}``

Every set of outputs except the denoising ones is Hungarian-matched on its own; the denoising outputs use the
fixed CDN assignment (positive dn query <-> gt index tiled over the groups) and ``num_boxes * dn_num_group``.

Speed: the sets are stacked and handled together (one matching cost computation and one host transfer for all
matched sets, one VFL and one box-loss computation per group of sets with the same query count), and the
denoising losses, which need no matching, are queued while the host solves the assignments. On an accelerator
the step has one host synchronisation (the cost matrices) when the targets were validated by the caller
(``check_targets=False``; :class:`~neo_rtdetr.modeling.meta_arch.rtdetr.RTDETR` validates them on the host).
"""

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.fx.experimental._config as _shape_config
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.box_ops import box_cxcywh_to_xyxy, elementwise_box_iou, elementwise_generalized_box_iou
from ..layers.compiled_function import compiled_function
from .matcher import PaddedTargets
from ...utils.host_to_device import to_device
from ...utils.target_slots import target_slots

__all__ = ["RTDETRCriterion"]

_DEFAULT_WEIGHTS = {"loss_vfl": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
# Tolerance for "normalised" target boxes (cxcywh must lie in [0, 1]).
_BOX_EPS = 1e-3



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
        self._loss_compile_kwargs: Optional[Dict] = None

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

    def check_targets(self, targets: Sequence[Dict[str, Tensor]], batch_size: int) -> None:
        """Validate training targets (labels in [0, C), normalised boxes with positive size).

        One host synchronisation when the targets are on an accelerator (none on the CPU).

        Raises:
            ValueError: naming what is wrong.
        """
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
        # value check on the host only: on an accelerator it would cost a synchronisation per step (the indices
        # come from the denoising module, whose shapes were checked above)
        if not pos or any(p.device.type != "cpu" for p in pos):
            return
        all_pos = torch.cat([p.reshape(-1) for p in pos])
        if all_pos.numel() > 0 and bool(((all_pos < 0) | (all_pos >= num_dn_queries)).any()):
            raise ValueError(f"RTDETRCriterion: dn_positive_idx must index the {num_dn_queries} dn queries")

    # ------------------------------------------------------------------ helpers
    def _num_boxes(self, targets: Sequence[Dict[str, Tensor]], device: torch.device) -> Tensor:
        """Total GT count of the batch, averaged over ranks (official), clamped >= 1: a 0-dim tensor on ``device``
        (not a Python float: reading it back would synchronise)."""
        num_boxes = to_device(torch.tensor([float(sum(int(t["labels"].shape[0]) for t in targets))]), device)
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            world_size = dist.get_world_size()
            if world_size > 1:
                dist.all_reduce(num_boxes)
        return torch.clamp(num_boxes / world_size, min=1)[0]

    def compile_losses(self, **compile_kwargs) -> None:
        """Compute the loss terms of the stacked sets (:meth:`_set_loss_terms`) through ``torch.compile`` from now on
        (with dynamic shapes: the query count of the denoising sets and the number of matched pairs change with the
        batch). The matching stays eager. Deep-copy safe (see
        :func:`~neo_rtdetr.modeling.layers.compiled_function.compiled_function`).

        Args:
            compile_kwargs: ``torch.compile`` keyword arguments (default ``dynamic=True``).
        """
        self._loss_compile_kwargs = {"dynamic": True, **compile_kwargs}

    def _set_losses(
        self,
        logits: Tensor,
        boxes: Tensor,
        pairs: Tensor,
        targets: PaddedTargets,
        num_boxes: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """VFL, L1 and GIoU of S stacked sets of predictions with given assignments (unweighted).

        Args:
            logits: [S, B, Q, C]; boxes: [S, B, Q, 4] (cxcywh).
            pairs: [4, P] int64 on the predictions' device: set, image, query and target slot of every matched pair.
            targets: the padded targets (slot = index into an image's targets).
            num_boxes: 0-dim normaliser.

        Returns:
            (vfl [S], l1 [S], giou [S]) in the compute dtype (>= float32).
        """
        kwargs = self._loss_compile_kwargs
        fn = compiled_function(type(self)._set_loss_terms, kwargs)
        # compiled: no "duck" sizes (equal sizes at tracing time, e.g. as many targets as classes, would be guards)
        shapes = contextlib.nullcontext() if kwargs is None else _shape_config.patch(use_duck_shape=False)
        with shapes:
            return fn(self, logits, boxes, pairs, targets.labels, targets.boxes, num_boxes)

    def _set_loss_terms(
        self,
        logits: Tensor,
        boxes: Tensor,
        pairs: Tensor,
        target_labels: Tensor,
        target_boxes: Tensor,
        num_boxes: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """:meth:`_set_losses` on the padded target tensors (``PaddedTargets.labels`` [B, N], ``.boxes`` [B, N, 4])."""
        dtype = _compute_dtype(logits.dtype)
        logits, boxes = logits.to(dtype), boxes.to(dtype)
        num_sets, bs, num_queries, num_classes = logits.shape
        set_idx, batch_idx, src_idx, slot_idx = pairs.unbind(0)
        tgt_labels = target_labels[batch_idx, slot_idx]
        tgt_boxes = target_boxes[batch_idx, slot_idx].to(dtype)
        src_boxes = boxes[set_idx, batch_idx, src_idx]  # [P, 4]

        # --- varifocal loss ---
        # One-hot and IoU target built by scatter on a flat view: never feeds the "no object" index to one_hot and
        # never index_puts a tensor of another dtype (fp16/bf16 vs fp32 under AMP).
        iou = elementwise_box_iou(box_cxcywh_to_xyxy(src_boxes.detach()), box_cxcywh_to_xyxy(tgt_boxes))
        flat_idx = ((set_idx * bs + batch_idx) * num_queries + src_idx) * num_classes + tgt_labels
        flat_size = logits.numel()
        onehot = torch.zeros(flat_size, dtype=dtype, device=logits.device).scatter(0, flat_idx, torch.ones_like(iou))
        target_score = torch.zeros(flat_size, dtype=dtype, device=logits.device).scatter(0, flat_idx, iou.detach())
        onehot, target_score = onehot.view_as(logits), target_score.view_as(logits)
        pred_score = logits.detach().sigmoid()
        weight = self.alpha * pred_score.pow(self.gamma) * (1 - onehot) + target_score
        loss_vfl = F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")
        # official: loss.mean(1).sum() * num_queries / num_boxes, i.e. the sum over (B, Q, C) / num_boxes
        loss_vfl = loss_vfl.sum(dim=(1, 2, 3)) / num_boxes

        # --- box losses, summed per set ---
        # (+ 0 * sum of the boxes: keeps every set's box head in the graph when it has no match, for DDP)
        zero = boxes.sum(dim=(1, 2, 3)) * 0.0
        l1 = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum(-1)
        giou = 1 - elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(tgt_boxes))
        loss_bbox = zero.index_add(0, set_idx, l1) / num_boxes
        loss_giou = zero.index_add(0, set_idx, giou) / num_boxes
        return loss_vfl, loss_bbox, loss_giou

    def _weighted(self, vfl: Tensor, l1: Tensor, giou: Tensor, suffixes: Sequence[str]) -> Dict[str, Tensor]:
        """``{loss_<term><suffix>: weighted value}`` from per-set vectors (one multiply per term, views after)."""
        w = self.weight_dict
        out = {}
        for term, values in (("loss_vfl", vfl), ("loss_bbox", l1), ("loss_giou", giou)):
            for suffix, value in zip(suffixes, (values * w[term]).unbind()):
                out[term + suffix] = value
        return out

    @staticmethod
    def _matched_pairs(indices_per_set, device: torch.device) -> Tensor:
        """[4, P] (set, image, query, target slot) from per-set, per-image (src, tgt) index arrays."""
        cols = []
        for s, per_image in enumerate(indices_per_set):
            for b, (src, tgt) in enumerate(per_image):
                src = np.asarray(src, dtype=np.int64)
                cols.append(np.stack([np.full_like(src, s), np.full_like(src, b), src, np.asarray(tgt, dtype=np.int64)]))
        pairs = np.concatenate(cols, axis=1) if cols else np.zeros((4, 0), dtype=np.int64)
        return to_device(torch.from_numpy(pairs), device)

    @staticmethod
    def _dn_pairs(dn_meta, sizes: List[int], num_sets: int, device: torch.device) -> Tensor:
        """[4, P] pairs of the fixed CDN assignment (positive dn query <-> gt tiled over the groups), every set."""
        group = int(dn_meta["dn_num_group"])
        slots = target_slots(sizes, group)
        num_pairs = int(slots.shape[1])
        host = to_device(slots, device)
        src_idx = to_device(torch.cat([p.reshape(-1) for p in dn_meta["dn_positive_idx"]]), device, torch.int64)
        set_idx = torch.arange(num_sets, device=device).repeat_interleave(num_pairs)
        return torch.stack([set_idx, host[0].repeat(num_sets), src_idx.repeat(num_sets), host[1].repeat(num_sets)])

    # ------------------------------------------------------------------ forward
    def forward(
        self, outputs: Dict, targets: Sequence[Dict[str, Tensor]], *, check_targets: bool = True
    ) -> Dict[str, Tensor]:
        """Compute all loss terms.

        Args:
            outputs: ``pred_logits`` [B, Q, C], ``pred_boxes`` [B, Q, 4]; optional ``aux_outputs`` (list of such
                dicts, decoder layers 0..L-2), ``enc_outputs`` (dict, or list of dicts), ``dn_outputs`` (list of
                dicts, denoising queries of layers 0..L-1) with ``dn_meta``.
            targets: per image ``labels`` int64 [n] in [0, C) and ``boxes`` [n, 4] normalised cxcywh.
            check_targets: validate the targets' values (a host sync on accelerators); callers that validated
                them on the host already pass False.

        Returns:
            Flat dict of weighted scalar losses (float32, or float64 for float64 inputs).
        """
        device = outputs["pred_logits"].device
        with _autocast_off(device.type):
            return self._forward(outputs, targets, check_targets)

    def _forward(self, outputs: Dict, targets: Sequence[Dict[str, Tensor]], check_targets: bool) -> Dict[str, Tensor]:
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
        if check_targets:
            self.check_targets(targets, bs)
        elif len(targets) != bs:
            raise ValueError(f"RTDETRCriterion: {len(targets)} targets for a batch of {bs}")
        dn_meta = outputs.get("dn_meta")
        if dn:
            self._check_dn(dn_meta, targets, dn[0]["pred_logits"].shape[1])

        device = outputs["pred_logits"].device
        num_boxes = self._num_boxes(targets, device)
        padded = PaddedTargets.from_list(targets, device)

        # Hungarian-matched sets, grouped by query count (normally one group: the decoder layers and the encoder)
        matched = [("", outputs)]
        matched += [(f"_aux_{i}", o) for i, o in enumerate(aux)] + [(f"_enc_{i}", o) for i, o in enumerate(enc)]
        groups: Dict[int, List[Tuple[str, Dict[str, Tensor]]]] = {}
        for suffix, o in matched:
            groups.setdefault(o["pred_logits"].shape[1], []).append((suffix, o))
        pending = []
        for members in groups.values():
            logits = torch.stack([o["pred_logits"] for _, o in members])
            boxes = torch.stack([o["pred_boxes"] for _, o in members])
            start = getattr(self.matcher, "start_matching", None)
            if start is not None:
                match = start(logits, boxes, padded, check_labels=False)
            else:  # a plain matcher module: one call per set
                match = [self.matcher(o, targets) for _, o in members]
            pending.append(([suffix for suffix, _ in members], logits, boxes, match))

        # the denoising losses need no matching: queue them while the host solves the assignments
        dn_losses: Dict[str, Tensor] = {}
        if dn:
            dn_logits = torch.stack([o["pred_logits"] for o in dn])
            dn_boxes = torch.stack([o["pred_boxes"] for o in dn])
            pairs = self._dn_pairs(dn_meta, padded.sizes, len(dn), device)
            dn_num_boxes = num_boxes * int(dn_meta["dn_num_group"])
            dn_losses = self._weighted(
                *self._set_losses(dn_logits, dn_boxes, pairs, padded, dn_num_boxes), [f"_dn_{i}" for i in range(len(dn))]
            )
        matched_losses: Dict[str, Tensor] = {}
        for suffixes, logits, boxes, match in pending:
            indices = match.result() if hasattr(match, "result") else match
            pairs = self._matched_pairs(indices, device)
            matched_losses.update(self._weighted(*self._set_losses(logits, boxes, pairs, padded, num_boxes), suffixes))
        # key order: main, aux, enc (the order of `matched`, whatever the grouping), then dn
        losses = {
            term + suffix: matched_losses[term + suffix]
            for suffix, _ in matched
            for term in ("loss_vfl", "loss_bbox", "loss_giou")
        }
        losses.update(dn_losses)
        return losses
