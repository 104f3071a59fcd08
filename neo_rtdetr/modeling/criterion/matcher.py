"""Hungarian matcher of RT-DETR (official ``rtdetr_pytorch/src/zoo/rtdetr/matcher.py``, focal class cost).

Cost of assigning query ``q`` to ground-truth ``t`` (class ``c_t``, box ``b_t``)::

    p      = sigmoid(logit[q, c_t])
    class  = alpha * (1 - p)**gamma * -log(p + 1e-8) - (1 - alpha) * p**gamma * -log(1 - p + 1e-8)
    C[q,t] = cost_bbox * |box_q - b_t|_1 (cxcywh) + cost_class * class - cost_giou * GIoU(xyxy)

The optimal one-to-one assignment per image is found with ``scipy.optimize.linear_sum_assignment``.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ..layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from ...utils.host_to_device import to_device
from ...utils.target_slots import target_slots

__all__ = ["HungarianMatcher", "PaddedTargets", "PendingMatch"]

# Finite stand-in for NaN/inf costs: larger than any finite cost in the matrix, so such pairs are only
# chosen when nothing else is possible, yet small enough that scipy's float64 duals keep full precision.
_MIN_INVALID_COST = 1e8


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 -> fp32; fp32/fp64 unchanged."""
    return torch.promote_types(dtype, torch.float32)


class HungarianMatcher(nn.Module):
    """One-to-one matching between predictions and targets (no parameters).

    Args (keyword-only):
        cost_class: weight of the focal classification cost.
        cost_bbox: weight of the L1 cost between cxcywh boxes.
        cost_giou: weight of the (negative) GIoU cost.
        alpha, gamma: focal-cost parameters.
    """

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
            f"alpha={self.alpha}, gamma={self.gamma}"
        )

    @staticmethod
    def _check_inputs(outputs: Dict[str, Tensor], targets: Sequence[Dict[str, Tensor]]) -> None:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if logits.dim() != 3 or boxes.dim() != 3 or boxes.shape[-1] != 4 or logits.shape[:2] != boxes.shape[:2]:
            raise ValueError(
                "HungarianMatcher expects pred_logits [B, Q, C] and pred_boxes [B, Q, 4], got "
                f"{tuple(logits.shape)} and {tuple(boxes.shape)}"
            )
        if len(targets) != logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {len(targets)} targets for a batch of {logits.shape[0]}")
        for t in targets:
            if t["labels"].dim() != 1 or t["boxes"].shape != (t["labels"].shape[0], 4):
                raise ValueError(
                    "HungarianMatcher: each target needs labels [n] and boxes [n, 4], got "
                    f"{tuple(t['labels'].shape)} and {tuple(t['boxes'].shape)}"
                )

    def pairwise_cost(self, logits: Tensor, boxes: Tensor, labels: Tensor, tgt_boxes: Tensor) -> Tensor:
        """Matching cost between every prediction and every target (batched over leading dims).

        Args:
            logits: [..., Q, C] pre-sigmoid class logits.
            boxes: [..., Q, 4] predicted cxcywh boxes.
            labels: [..., N] int64 target classes in [0, C) (not checked here).
            tgt_boxes: [..., N, 4] target cxcywh boxes.

        Returns:
            [..., Q, N] in the wider of the inputs' dtype and float32; NaN/inf are not replaced.
        """
        dtype = _compute_dtype(logits.dtype)
        prob = logits.detach().to(dtype).sigmoid()
        out_bbox = boxes.detach().to(dtype)
        tgt_bbox = tgt_boxes.to(dtype)
        index = labels.unsqueeze(-2).expand(*prob.shape[:-1], labels.shape[-1])
        p = prob.gather(-1, index)  # [..., Q, N]
        pos_cost = self.alpha * (1 - p) ** self.gamma * (-(p + 1e-8).log())
        neg_cost = (1 - self.alpha) * p**self.gamma * (-(1 - p + 1e-8).log())
        cost_class = pos_cost - neg_cost
        cost_bbox = (out_bbox.unsqueeze(-2) - tgt_bbox.unsqueeze(-3)).abs().sum(-1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
        return self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou

    def _check_labels(self, labels: Tensor, num_classes: int) -> None:
        if labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
            raise ValueError(
                f"HungarianMatcher: target labels must be in [0, {num_classes}) (contiguous 0-based class ids), "
                f"got min {int(labels.min())} max {int(labels.max())}"
            )

    @torch.no_grad()
    def compute_cost(self, outputs: Dict[str, Tensor], targets: Sequence[Dict[str, Tensor]]) -> Tensor:
        """Cost matrix of every prediction against every target of the batch: [B, Q, sum_i n_i].

        In (at least) fp32, on the outputs' device. Column block i (of width n_i) belongs to image i (matching
        only uses those diagonal blocks). NaN/inf are NOT replaced here.
        """
        self._check_inputs(outputs, targets)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        bs, num_queries, num_classes = logits.shape
        device = logits.device
        tgt_ids = torch.cat([t["labels"] for t in targets]).to(device=device, dtype=torch.long)
        tgt_bbox = torch.cat([t["boxes"] for t in targets]).to(device=device)
        if tgt_ids.numel() == 0:
            return logits.new_zeros((bs, num_queries, 0), dtype=_compute_dtype(logits.dtype))
        self._check_labels(tgt_ids, num_classes)
        return self.pairwise_cost(logits.flatten(0, 1), boxes.flatten(0, 1), tgt_ids, tgt_bbox).view(bs, num_queries, -1)

    @torch.no_grad()
    def start_matching(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: "PaddedTargets", *, check_labels: bool = True
    ) -> "PendingMatch":
        """Queue the cost computation of M sets of predictions and its copy to the host; do not wait.

        Costs are computed per image on the accelerator, for all sets at once; the only host synchronisation of
        matching is :meth:`PendingMatch.result`, which the caller can postpone while it queues other work.

        Args:
            pred_logits: [M, B, Q, C] (e.g. the decoder layers and the encoder top-k stacked).
            pred_boxes: [M, B, Q, 4] normalised cxcywh.
            targets: the batch's targets padded to the largest image (:meth:`PaddedTargets.from_list`).
            check_labels: check that labels are in [0, C) (a host sync on accelerators; off when the caller
                already validated the targets).

        Returns:
            a :class:`PendingMatch`.
        """
        if pred_logits.dim() != 4 or pred_boxes.shape != (*pred_logits.shape[:3], 4):
            raise ValueError(
                "HungarianMatcher: expected pred_logits [M, B, Q, C] and pred_boxes [M, B, Q, 4], got "
                f"{tuple(pred_logits.shape)} and {tuple(pred_boxes.shape)}"
            )
        if pred_logits.shape[1] != len(targets.sizes):
            raise ValueError(f"HungarianMatcher: {len(targets.sizes)} targets for a batch of {pred_logits.shape[1]}")
        if check_labels:
            self._check_labels(targets.labels_flat, pred_logits.shape[-1])
        num_sets = pred_logits.shape[0]
        if targets.max_size == 0:
            return PendingMatch(None, None, targets.sizes, num_sets)
        labels = targets.labels.clamp(0, pred_logits.shape[-1] - 1)  # padded slots hold -1
        # [M, B, Q, N_max] in fp32 or fp64 (the logits' dtype, fp16/bf16 promoted): fp64 costs are solved in fp64
        cost = self.pairwise_cost(pred_logits, pred_boxes, labels.unsqueeze(0), targets.boxes.unsqueeze(0))
        if cost.device.type != "cuda":  # the CPU (nothing to wait for) and other accelerators (a plain copy)
            return PendingMatch(cost.cpu(), None, targets.sizes, num_sets)
        host = torch.empty(cost.shape, dtype=cost.dtype, pin_memory=True)
        host.copy_(cost, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return PendingMatch(host, event, targets.sizes, num_sets)

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, Tensor], targets: Sequence[Dict[str, Tensor]]
    ) -> List[Tuple[Tensor, Tensor]]:
        """Match predictions to targets.

        Args:
            outputs: dict with ``pred_logits`` [B, Q, C] (pre-sigmoid) and ``pred_boxes`` [B, Q, 4] (cxcywh, normalised).
            targets: per image dict with ``labels`` LongTensor [n] and ``boxes`` [n, 4] (cxcywh, normalised).

        Returns:
            Per image ``(src_idx, tgt_idx)``, int64 CPU tensors of length min(Q, n); ``src_idx`` sorted ascending.
        """
        self._check_inputs(outputs, targets)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        padded = PaddedTargets.from_list(targets, logits.device)
        (indices,) = self.start_matching(logits[None], boxes[None], padded).result()
        return [(torch.from_numpy(src), torch.from_numpy(tgt)) for src, tgt in indices]


class PaddedTargets:
    """A batch's targets, concatenated and padded to the largest image, on one device.

    Attributes:
        sizes: host list of the number of boxes per image (B ints).
        labels_flat: [sum n_i] int64 (the concatenation, image-major).
        labels: [B, N_max] int64, -1 in padded slots; boxes: [B, N_max, 4], 0.5 (a valid box) in padded slots.
    """

    def __init__(self, sizes: List[int], labels_flat: Tensor, labels: Tensor, boxes: Tensor):
        self.sizes = sizes
        self.labels_flat = labels_flat
        self.labels = labels
        self.boxes = boxes

    @property
    def max_size(self) -> int:
        return max(self.sizes, default=0)

    @classmethod
    def from_list(cls, targets: Sequence[Dict[str, Tensor]], device: torch.device) -> "PaddedTargets":
        """Args: targets: per image ``labels`` [n_i] and ``boxes`` [n_i, 4]; device: where the result lives."""
        sizes = [int(t["labels"].shape[0]) for t in targets]
        labels_flat = to_device(torch.cat([t["labels"].reshape(-1) for t in targets]), device, torch.int64)
        boxes_flat = to_device(torch.cat([t["boxes"].reshape(-1, 4) for t in targets]), device)
        n_max = max(sizes, default=0)
        labels = torch.full((len(sizes), n_max), -1, dtype=torch.int64, device=device)
        boxes = torch.full((len(sizes), n_max, 4), 0.5, dtype=boxes_flat.dtype, device=device)
        if labels_flat.numel():
            # slot (image, j) of every box, built on the host from the sizes (no device sync)
            image_idx, slot_idx = to_device(target_slots(sizes), device).unbind(0)
            labels[image_idx, slot_idx] = labels_flat
            boxes[image_idx, slot_idx] = boxes_flat
        return cls(sizes, labels_flat, labels, boxes)


class PendingMatch:
    """The host side of a queued matching: :meth:`result` waits for the costs and solves the assignments."""

    def __init__(self, cost: Optional[Tensor], event, sizes: List[int], num_sets: int):
        self._cost = cost
        self._event = event
        self._sizes = sizes
        self._num_sets = num_sets

    def result(self) -> List[List[Tuple[np.ndarray, np.ndarray]]]:
        """Per set, per image ``(src_idx, tgt_idx)`` int64 numpy arrays of length min(Q, n_i), src ascending."""
        empty = np.zeros(0, dtype=np.int64)
        if self._cost is None:
            return [[(empty, empty) for _ in self._sizes] for _ in range(self._num_sets)]
        if self._event is not None:
            self._event.synchronize()
        cost = self._cost.numpy()  # [M, B, Q, N_max]
        out = []
        for m in range(self._num_sets):
            per_image = []
            for b, n in enumerate(self._sizes):
                if n == 0:
                    per_image.append((empty, empty))
                    continue
                rows, cols = linear_sum_assignment(_finite_cost(cost[m, b, :, :n]))
                per_image.append((rows.astype(np.int64), cols.astype(np.int64)))
            out.append(per_image)
        return out


def _finite_cost(c: np.ndarray) -> np.ndarray:
    """float64 copy of a cost block with NaN/inf replaced by a cost worse than any finite one."""
    c = c.astype(np.float64)
    finite = np.isfinite(c)
    if not finite.all():
        big = _MIN_INVALID_COST
        if finite.any():
            big = max(big, 1e3 * float(np.abs(c[finite]).max()))
        c = np.where(finite, c, big)
    return c
