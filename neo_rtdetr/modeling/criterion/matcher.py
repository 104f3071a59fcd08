"""Hungarian matcher of RT-DETR (official ``rtdetr_pytorch/src/zoo/rtdetr/matcher.py``, focal class cost).

Cost of assigning query ``q`` to ground-truth ``t`` (class ``c_t``, box ``b_t``)::

    p      = sigmoid(logit[q, c_t])
    class  = alpha * (1 - p)**gamma * -log(p + 1e-8) - (1 - alpha) * p**gamma * -log(1 - p + 1e-8)
    C[q,t] = cost_bbox * |box_q - b_t|_1 (cxcywh) + cost_class * class - cost_giou * GIoU(xyxy)

The optimal one-to-one assignment per image is found with ``scipy.optimize.linear_sum_assignment``.
"""

from typing import Dict, List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ..layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher"]

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

    @torch.no_grad()
    def compute_cost(self, outputs: Dict[str, Tensor], targets: Sequence[Dict[str, Tensor]]) -> Tensor:
        """Cost matrix for the whole batch: [B, Q, sum_i n_i] in (at least) fp32, on the outputs' device.

        Column block i (of width n_i) belongs to image i. NaN/inf are NOT replaced here.
        """
        self._check_inputs(outputs, targets)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        bs, num_queries, num_classes = logits.shape
        dtype = _compute_dtype(logits.dtype)
        device = logits.device

        out_prob = logits.detach().flatten(0, 1).to(dtype).sigmoid()  # [B*Q, C]
        out_bbox = boxes.detach().flatten(0, 1).to(dtype)  # [B*Q, 4]
        tgt_ids = torch.cat([t["labels"] for t in targets]).to(device=device, dtype=torch.long)
        tgt_bbox = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=dtype)
        if tgt_ids.numel() == 0:
            return out_prob.new_zeros((bs, num_queries, 0))
        if bool(((tgt_ids < 0) | (tgt_ids >= num_classes)).any()):
            raise ValueError(
                f"HungarianMatcher: target labels must be in [0, {num_classes}) (contiguous 0-based class ids), "
                f"got min {int(tgt_ids.min())} max {int(tgt_ids.max())}"
            )

        p = out_prob[:, tgt_ids]  # [B*Q, N]
        pos_cost = self.alpha * (1 - p) ** self.gamma * (-(p + 1e-8).log())
        neg_cost = (1 - self.alpha) * p**self.gamma * (-(1 - p + 1e-8).log())
        cost_class = pos_cost - neg_cost
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        return cost.view(bs, num_queries, -1)

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
        cost = self.compute_cost(outputs, targets).cpu()
        sizes = [int(t["labels"].shape[0]) for t in targets]
        indices = []
        for i, c in enumerate(cost.split(sizes, dim=-1)):
            c = c[i]
            if c.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            c = c.double()
            finite = torch.isfinite(c)
            if not bool(finite.all()):
                # torch.where (not np.nan_to_num on inf/nan arithmetic) keeps this path warning-free.
                big = _MIN_INVALID_COST
                if bool(finite.any()):
                    big = max(big, 1e3 * float(c[finite].abs().max()))
                c = torch.where(finite, c, torch.full_like(c, big))
            rows, cols = linear_sum_assignment(c.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
